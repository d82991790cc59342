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

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time

from .errors import UserError
from .runtime import is_main_process

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "seqtune_checkpoint.json"
# Every scratch name seqtune uses in an output dir starts with LEFTOVER_PREFIX, so that what a
# killed run leaves behind is recognised (and removed) as seqtune's, never mistaken for the user's.
LEFTOVER_PREFIX = ".seqtune-"
STAGING_DIR_NAME = LEFTOVER_PREFIX + "staging"
TRASH_PREFIX = LEFTOVER_PREFIX + "trash-"
TEMPORARY_PREFIX = LEFTOVER_PREFIX + "tmp-"
PROBE_PREFIX = LEFTOVER_PREFIX + "write-test-"
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
    """Write the manifest of a staged checkpoint: its files and their sizes (`publish` flushes it all)."""
    manifest = {"step": step, "files": _files_with_sizes(folder), "written_at": time.time()}
    if extra:
        manifest.update(extra)
    with open(os.path.join(folder, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


def publish(staged: str, final: str) -> str:
    """Make a fully written file or folder visible at `final` in one step: flush it to disk, then rename.

    The one atomic publish of seqtune: checkpoints, the final model's files and small result
    files all appear this way, so a kill at any instant leaves the old version or the new one.
    An existing folder at `final` (an incomplete one of a killed run) is renamed away first.
    """
    if os.path.isdir(staged):
        for root, _, names in os.walk(staged):
            for name in names:
                _fsync_path(os.path.join(root, name))
            _fsync_path(root)
        if os.path.isdir(final):
            _remove_tree(final)
        os.rename(staged, final)
    else:
        _fsync_path(staged)
        os.replace(staged, final)
    _fsync_path(os.path.dirname(os.path.abspath(final)))
    return final


def publish_checkpoint(staged: str, output_dir: str, step: int, extra: dict | None = None) -> str:
    """Make a fully written staging folder visible as output_dir/checkpoint-`step` (manifest last)."""
    write_manifest(staged, step, extra)
    final = publish(staged, os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}"))
    try:
        os.rmdir(os.path.dirname(os.path.normpath(staged)))  # the staging root, once empty
    except OSError:
        pass
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
    trash = os.path.join(
        parent, f"{TRASH_PREFIX}{os.path.basename(os.path.normpath(folder))}-{os.getpid()}-{time.time_ns()}"
    )
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate_checkpoints(output_dir: str, save_total_limit: int | None, keep: str | None = None) -> list[str]:
    """Delete the oldest complete checkpoints beyond `save_total_limit` (never `keep`)."""
    if not save_total_limit or save_total_limit < 1:
        return []
    checkpoints = list_checkpoints(output_dir, warn=False)
    keep_path = os.path.normpath(keep) if keep else None
    # With a best checkpoint to keep and a limit of 1, keep the newest too (as the Trainer does).
    limit = (
        max(save_total_limit, 2) if keep_path and keep_path in map(os.path.normpath, checkpoints) else save_total_limit
    )
    removable = [c for c in checkpoints if os.path.normpath(c) != keep_path]
    excess = len(checkpoints) - limit
    removed = []
    for folder in removable[: max(excess, 0)]:
        logger.info("Deleting older checkpoint %s (save_total_limit=%d).", folder, save_total_limit)
        _remove_tree(folder)
        removed.append(folder)
    return removed


def is_leftover(name: str) -> bool:
    """Whether an entry of an output dir is scratch a (killed) seqtune run left behind."""
    return name.startswith(LEFTOVER_PREFIX)


def temporary_path(path: str) -> str:
    """Where to write `path` before renaming it into place (recognised as a leftover if killed)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TEMPORARY_PREFIX}{os.getpid()}-{name}")


def clean_leftovers(output_dir: str) -> None:
    """Remove staging folders, trash and temporary files a killed run left behind."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if is_leftover(name):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass


# --------------------------------------------------------------------------- each recipe's checkpoints


def save_accelerate_checkpoint(accelerator, output_dir: str, step: int, save_total_limit: int | None, hub=None) -> str:
    """The Accelerate recipe's checkpoint: `save_state` into the staging folder, then one rename makes
    checkpoint-`step` visible (and, with --push_to_hub, it goes to the hub: a failed upload is
    logged, training goes on); the oldest beyond --save_total_limit are deleted."""
    staged = staging_path(output_dir, step)
    if is_main_process():
        shutil.rmtree(staged, ignore_errors=True)  # what a run killed while writing this step left
    accelerator.wait_for_everyone()
    with guarded_save(f"checkpoint-{step}", output_dir, staged=staged):
        accelerator.save_state(staged)  # every process writes its RNG state; the main one the rest
    accelerator.wait_for_everyone()
    published = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    if is_main_process():
        publish_checkpoint(staged, output_dir, step)
        if hub is not None:
            hub.push_checkpoint(published, step)
        rotate_checkpoints(output_dir, save_total_limit)
        logger.info("Saved %s.", published)
    accelerator.wait_for_everyone()
    return published


def check_accelerate_checkpoint(folder: str | None, prog: str) -> None:
    """Refuse a folder the Accelerate recipe cannot resume from (a Trainer checkpoint, say) before anything runs."""
    folder = os.path.expanduser(folder) if folder else None
    if folder and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "custom_checkpoint_0.pkl")):
        raise UserError(
            f"{folder} is not a checkpoint of {prog} (no custom_checkpoint_0.pkl; a Trainer checkpoint?). "
            f"Fix: resume from a checkpoint this script wrote, or pass --overwrite_output_dir to start afresh."
        )


def save_trainer_checkpoint(trainer, write_checkpoint) -> None:
    """The Trainer recipe's checkpoint: `write_checkpoint()` (the Trainer's own _save_checkpoint) writes
    into the staging root (the trainer's _get_output_dir points there while `trainer._writing_checkpoint`);
    then trainer_state.json with the published paths, one rename, the hub push and rotation."""
    output_dir, step = trainer.args.output_dir, trainer.state.global_step
    staged = staging_path(output_dir, step)
    # A full disk or a read-only folder becomes a clear error; the previous checkpoint stays.
    with guarded_save(f"checkpoint-{step}", output_dir, staged=staged):
        trainer._writing_checkpoint = True
        try:
            write_checkpoint()
        finally:
            trainer._writing_checkpoint = False
        best = trainer.state.best_model_checkpoint
        if best and os.path.normpath(best).startswith(os.path.normpath(staging_root(output_dir))):
            trainer.state.best_model_checkpoint = os.path.join(output_dir, os.path.basename(best))
        trainer.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if trainer.args.should_save:
            trainer.state.save_to_json(os.path.join(staged, "trainer_state.json"))  # with the published paths
            published = publish_checkpoint(staged, output_dir, step)
            if trainer.hub_pusher is not None:
                trainer.hub_pusher.push_checkpoint(published, step)  # per --hub_strategy; never raises
            rotate_checkpoints(output_dir, trainer.args.save_total_limit, keep=trainer.state.best_model_checkpoint)
    trainer.accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- failing saves

# errno values that mean "the disk refuses", not "seqtune has a bug".
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_MESSAGES = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system")


def write_probe(folder: str, size: int = 1 << 20) -> None:
    """Write (and flush) `size` bytes to a scratch file in `folder`, then remove it; raises OSError."""
    probe = os.path.join(folder, f"{PROBE_PREFIX}{os.getpid()}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass


def disk_problem(folder: str, error: BaseException) -> str | None:
    """Why a save into `folder` failed if the disk is to blame (full, quota, read-only, permissions), else None.

    torch and safetensors report a full disk as RuntimeError or their own error types, so
    besides the errno a probe write tells whether the folder still takes data.
    """
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return os.strerror(error.errno)
    for message in _DISK_MESSAGES:
        if message in str(error):
            return message
    try:
        write_probe(folder)
    except OSError as probe_error:
        return probe_error.strerror or str(probe_error)
    return None


@contextlib.contextmanager
def guarded_save(what: str, output_dir: str, staged: str | None = None):
    """Turn a save that fails because of the disk into a UserError; the last complete checkpoint stays.

    `staged` (the half-written staging folder or file) is removed to give the space back.
    Any other failure is a bug and propagates unchanged.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        reason = disk_problem(output_dir, error)
        if reason is None:
            raise
        if staged and os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)
        elif staged and os.path.exists(staged):
            os.remove(staged)
        logger.debug("The failed save raised %r.", error)
        previous = newest_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        state = (
            f"The newest complete checkpoint, {previous}, is intact: run the same command again to resume from it."
            if previous
            else "Run the same command again once there is room: it starts the run again."
        )
        raise UserError(
            f"could not write {what} in {output_dir}: {reason}. {state} "
            f"Fix: free disk space (or make the folder writable) first."
        ) from None
