"""Checkpoints are written in one place and found in one place.

Writer: a checkpoint is first written into a staging folder inside the output dir,
every file is flushed to disk, a manifest (`seqtune_checkpoint.json`, names and sizes)
is written last, and one `rename` makes `checkpoint-N` visible. A kill at any instant
leaves either the previous state or the complete new checkpoint.

Reader: only folders with a manifest whose files all exist with the recorded sizes
count; others are skipped with a log line saying why. Deleting (rotation) renames a
checkpoint away first, so a half-deleted folder never looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "seqtune_checkpoint.json"
STAGING_DIR_NAME = ".seqtune-staging"
TRASH_PREFIX = ".seqtune-trash-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(path: str) -> int | None:
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def staging_root(output_dir: str) -> str:
    return os.path.join(output_dir, STAGING_DIR_NAME)


def staging_path(output_dir: str, step: int) -> str:
    """Where checkpoint-`step` is written before it is published."""
    return os.path.join(staging_root(output_dir), f"{CHECKPOINT_PREFIX}{step}")


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _files_with_sizes(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, folder)] = os.path.getsize(full)
    return sizes


def write_manifest(folder: str, step: int, extra: dict | None = None) -> None:
    """Flush every file of `folder`, then write its manifest last (also flushed)."""
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync_path(os.path.join(root, name))
        _fsync_path(root)
    manifest = {"step": step, "files": _files_with_sizes(folder), "written_at": time.time()}
    if extra:
        manifest.update(extra)
    temporary = os.path.join(folder, MANIFEST_NAME + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(folder, MANIFEST_NAME))
    _fsync_path(folder)


def publish_checkpoint(staged: str, output_dir: str, step: int, extra: dict | None = None) -> str:
    """Make a fully written staging folder visible as output_dir/checkpoint-`step`."""
    write_manifest(staged, step, extra)
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    if os.path.exists(final):  # e.g. an incomplete folder of the same step from a killed run
        _remove_tree(final)
    os.rename(staged, final)
    _fsync_path(output_dir)
    return final


def incomplete_reason(folder: str) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        return f"no {MANIFEST_NAME} (it was not written completely, or not by seqtune)"
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST_NAME} is unreadable"
    for name, size in files.items():
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != size:
            return f"{name} has {os.path.getsize(full)} bytes, expected {size}"
    return None


def is_complete(folder: str) -> bool:
    return os.path.isdir(folder) and incomplete_reason(folder) is None


def list_checkpoints(output_dir: str, warn: bool = True) -> list[str]:
    """Complete checkpoints in `output_dir`, oldest first; incomplete ones are logged and skipped."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        step = checkpoint_step(name)
        folder = os.path.join(output_dir, name)
        if step is None or not os.path.isdir(folder):
            continue
        reason = incomplete_reason(folder)
        if reason is None:
            found.append((step, folder))
        elif warn:
            logger.warning("Skipping %s: incomplete checkpoint (%s).", folder, reason)
    return [folder for _, folder in sorted(found)]


def newest_checkpoint(output_dir: str) -> str | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _remove_tree(folder: str) -> None:
    """Rename away first (atomic), then delete: a kill mid-delete leaves no half checkpoint."""
    parent = os.path.dirname(os.path.normpath(folder))
    trash = os.path.join(parent, f"{TRASH_PREFIX}{os.path.basename(os.path.normpath(folder))}-{os.getpid()}-{time.time_ns()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, keep: str | None = None) -> list[str]:
    """Delete the oldest complete checkpoints beyond `save_total_limit` (never `keep`)."""
    if not save_total_limit or save_total_limit < 1:
        return []
    checkpoints = list_checkpoints(output_dir, warn=False)
    keep_path = os.path.normpath(keep) if keep else None
    # With a best checkpoint to keep and a limit of 1, keep the newest too (as the Trainer does).
    limit = max(save_total_limit, 2) if keep_path and keep_path in map(os.path.normpath, checkpoints) else save_total_limit
    removable = [c for c in checkpoints if os.path.normpath(c) != keep_path]
    excess = len(checkpoints) - limit
    removed = []
    for folder in removable[: max(excess, 0)]:
        logger.info("Deleting older checkpoint %s (save_total_limit=%d).", folder, save_total_limit)
        _remove_tree(folder)
        removed.append(folder)
    return removed


def clean_leftovers(output_dir: str) -> None:
    """Remove staging folders and trash a killed run left behind."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name == STAGING_DIR_NAME or name.startswith(TRASH_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
