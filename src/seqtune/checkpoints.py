"""Checkpoints are written in one place and found in one place.

Writer: a checkpoint is first written into a staging folder inside the output dir,
every file is flushed to disk, a manifest (`seqtune_checkpoint.json`, names, sizes and
sha256 checksums) is written last, and one `rename` makes the checkpoint visible. A kill
at any instant leaves either the previous state or the complete new checkpoint. Published
files get the mode any new file gets (0o666 & ~umask), so colleagues can read them.

Names: the Trainer recipe's checkpoints are `checkpoint-N` (as transformers' Trainer names them), the
Accelerate recipe's `step_N` and `epoch_E` (as the Hugging Face no_trainer script names them; E is the
0-based epoch). Every reader takes all three names and orders them by the global step the manifest
records, so the newest complete one wins whatever its name.

Reader: only folders with a manifest whose files all exist with the recorded sizes
count (`list_checkpoints`, cheap: listing and rotation); others are skipped with a log line
saying why. A checkpoint about to be used is verified against its checksums as well
(`newest_checkpoint`, `incomplete_reason`): a damaged one (a flipped bit, a file changed
after it was written) is skipped the same way, so a rerun resumes from the one before.
Manifests of older seqtune versions have no checksums: their sizes are checked only.
Deleting (rotation) renames a checkpoint away first, so a half-deleted folder never
looks complete. Checkpoints transformers' Trainer or the Hugging Face no_trainer script wrote (no
manifest) count when the files their writer writes last are there (`foreign_writer`): a run switched
to seqtune mid-way resumes from them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

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
STEP_PREFIX = "step_"  # the Hugging Face no_trainer script's step_N (N: the global step)
EPOCH_PREFIX = "epoch_"  # and epoch_E (E: the 0-based epoch)
_CHECKPOINT_RE = re.compile(rf"^({re.escape(CHECKPOINT_PREFIX)}|{STEP_PREFIX}|{EPOCH_PREFIX})(\d+)$")


def is_checkpoint_name(path: str) -> bool:
    """Whether a folder's name is one a checkpoint has: checkpoint-N, step_N or epoch_E."""
    return _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path))) is not None


def checkpoint_name(step: int) -> str:
    """The default name of the checkpoint of `step` (the Trainer's)."""
    return f"{CHECKPOINT_PREFIX}{step}"


def _step_in_name(path: str) -> int | None:
    """N of checkpoint-N or step_N (an epoch_E name holds no step)."""
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(2)) if match and match.group(1) != EPOCH_PREFIX else None


def _manifest_step(manifest: dict | None) -> int | None:
    step = manifest.get("step") if isinstance(manifest, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def checkpoint_step(path: str) -> int | None:
    """The global step of a checkpoint folder: the one its manifest records, else the N of a checkpoint-N or
    step_N name; None for a folder whose name is not a checkpoint's (or an epoch_E without a manifest)."""
    if not is_checkpoint_name(path):
        return None
    manifest, _ = _read_manifest(path)
    step = _manifest_step(manifest)
    return step if step is not None else _step_in_name(path)


def staging_root(output_dir: str) -> str:
    return os.path.join(output_dir, STAGING_DIR_NAME)


def staging_path(output_dir: str, step: int, name: str | None = None) -> str:
    """Where checkpoint `name` (default checkpoint-`step`) is written before it is published."""
    return os.path.join(staging_root(output_dir), name or checkpoint_name(step))


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


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:  # hashlib.file_digest is Python 3.11+
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _checksums(folder: str, names) -> dict[str, str]:
    """sha256 of each file; several files at once (hashlib lets go of the GIL: the model and the
    optimizer state, the big ones, are hashed side by side)."""
    names = sorted(names)
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(names), os.cpu_count() or 1))) as pool:
        digests = pool.map(lambda name: _sha256(os.path.join(folder, name)), names)
        return dict(zip(names, digests))


def write_manifest(folder: str, step: int, extra: dict | None = None) -> None:
    """Write the manifest of a staged checkpoint: its files, their sizes and sha256 checksums
    (`publish` flushes it all)."""
    sizes = _files_with_sizes(folder)
    manifest = {"step": step, "files": sizes, "sha256": _checksums(folder, sizes), "written_at": time.time()}
    if extra:
        manifest.update(extra)
    with open(os.path.join(folder, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_normal_mode(path: str, umask: int) -> None:
    """The mode open() and mkdir() give under the umask: safetensors and tempfile write 0600, which
    would keep a shared model or checkpoint from colleagues."""
    try:
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)  # callers skip links
    except OSError:  # not ours to change (a file system without modes, another owner)
        pass


def publish(staged: str, final: str) -> str:
    """Make a fully written file or folder visible at `final` in one step: flush it to disk, then rename.

    The one atomic publish of seqtune: checkpoints, the final model's files and small result
    files all appear this way, so a kill at any instant leaves the old version or the new one.
    Every file and folder published gets the mode a new one gets under the umask.
    An existing folder at `final` (an incomplete one of a killed run) is renamed away first.
    """
    umask = _umask()
    if os.path.isdir(staged):
        for root, _, names in os.walk(staged):
            for name in names:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    _give_normal_mode(full, umask)
                    _fsync_path(full)
            _give_normal_mode(root, umask)
            _fsync_path(root)
        if os.path.isdir(final):
            _remove_tree(final)
        os.rename(staged, final)
    else:
        if not os.path.islink(staged):
            _give_normal_mode(staged, umask)
        _fsync_path(staged)
        os.replace(staged, final)
    _fsync_path(os.path.dirname(os.path.abspath(final)))
    return final


def publish_checkpoint(
    staged: str, output_dir: str, step: int, extra: dict | None = None, name: str | None = None
) -> str:
    """Make a fully written staging folder visible as output_dir/`name` (default checkpoint-`step`; the
    manifest, written last, records `step`, which orders checkpoints whatever their names)."""
    name = name or checkpoint_name(step)
    if not is_checkpoint_name(name):
        raise ValueError(f"{name!r} is not a checkpoint name (checkpoint-N, step_N or epoch_E)")
    write_manifest(staged, step, extra)
    final = publish(staged, os.path.join(output_dir, name))
    try:
        os.rmdir(os.path.dirname(os.path.normpath(staged)))  # the staging root, once empty
    except OSError:
        pass
    return final


def _read_manifest(folder: str) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, why it cannot be used)."""
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        return None, f"no {MANIFEST_NAME} (it was not written completely, or not by seqtune)"
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        files, checksums = manifest["files"], manifest.get("sha256", {})
        if not all(isinstance(size, int) for size in files.values()):
            raise TypeError("sizes")
        if not isinstance(checksums, dict) or not all(isinstance(digest, str) for digest in checksums.values()):
            raise TypeError("checksums")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"its {MANIFEST_NAME} is unreadable"
    return manifest, None


def incomplete_reason(folder: str, verify: bool = True) -> str | None:
    """Why `folder` is not a complete, intact checkpoint, or None when it is.

    `verify=False` checks only that every file is there with its recorded size (cheap: for
    listing and rotation); by default each file's checksum is compared as well (`damage_reason`).
    """
    manifest, reason = _read_manifest(folder)
    if reason is not None:
        return reason
    for name, size in manifest["files"].items():
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != size:
            return f"{name} has {os.path.getsize(full)} bytes, expected {size}"
    return damage_reason(folder, manifest) if verify else None


def damage_reason(folder: str, manifest: dict | None = None) -> str | None:
    """Which file of a checkpoint no longer matches the sha256 recorded when it was written, or None.

    Reads every file (seconds for a large model): only for a checkpoint about to be used. A
    manifest of an older seqtune without checksums passes (its sizes are checked by `incomplete_reason`).
    """
    if manifest is None:
        manifest, reason = _read_manifest(folder)
        if reason is not None:
            return reason
    checksums = manifest.get("sha256") or {}
    present = [name for name in checksums if os.path.isfile(os.path.join(folder, name))]
    if len(present) < len(checksums):
        missing = sorted(set(checksums) - set(present))[0]
        return f"{missing} is missing"
    try:
        actual = _checksums(folder, present)
    except OSError as error:
        return f"{os.path.relpath(error.filename or folder, folder)} cannot be read ({error.strerror or error})"
    for name in sorted(present):
        if actual[name] != checksums[name]:
            return f"{name} does not match its checksum"
    return None


def is_complete(folder: str) -> bool:
    """Cheap: the manifest is there and every file has its recorded size (checksums: `incomplete_reason`)."""
    return os.path.isdir(folder) and incomplete_reason(folder, verify=False) is None


# --------------------------------------------------------------------------- checkpoints of other tools

# A run switched to seqtune mid-way (the same command, seqtune's scripts instead of Hugging Face's) finds the
# checkpoints transformers' Trainer (checkpoint-N) or Accelerate's save_state in the no_trainer script (step_N,
# epoch_E) wrote, with no seqtune manifest. Such a folder counts as complete when it holds the files its writer
# writes last (the Trainer: trainer_state.json after the model and optimizer.pt; save_state: the process's RNG
# state after the model and optimizer.bin). This does not weaken crash safety: seqtune's own half-written
# checkpoints never carry a checkpoint name (they are written in the staging folder and renamed once the
# manifest is in), so a manifest-less folder with a checkpoint's name was written by another tool.
TRAINER_WRITER = "transformers' Trainer"
ACCELERATE_WRITER = "Accelerate's save_state (the Hugging Face no_trainer script)"


def _model_files_present(folder: str, names) -> bool:
    """Whether a model file of `names` is in `folder`, with every shard an index names."""
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return True
        try:
            with open(path, encoding="utf-8") as handle:
                shards = set(json.load(handle)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all(os.path.isfile(os.path.join(folder, shard)) for shard in shards)
    return False


def foreign_writer(folder: str) -> str | None:
    """Who wrote `folder`, a complete checkpoint without a seqtune manifest (transformers' Trainer, or
    Accelerate's save_state as the Hugging Face no_trainer script calls it); None when it is neither (or
    has a seqtune manifest: then only the manifest says whether it is complete)."""
    if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, MANIFEST_NAME)):
        return None

    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(folder, name))

    if has("trainer_state.json") and has("optimizer.pt") and _model_files_present(folder, MODEL_WEIGHT_FILES):
        return TRAINER_WRITER
    if (
        has("optimizer.bin")
        and has("random_states_0.pkl")
        and _model_files_present(folder, ("model.safetensors", "pytorch_model.bin"))
    ):
        return ACCELERATE_WRITER
    return None


def foreign_checkpoint_note(folder: str) -> str | None:
    """The log line for resuming from a checkpoint another tool wrote (None for seqtune's own)."""
    writer = foreign_writer(folder)
    if writer is None:
        return None
    name = os.path.basename(os.path.normpath(folder))
    return f"{name} has no seqtune manifest: written by {writer}; resuming from it as it is."


def _foreign_sort_step(folder: str) -> int:
    """The step a manifest-less checkpoint is ordered by: N of checkpoint-N and step_N; an epoch_E holds at
    least E + 1 steps (the real number depends on the data: seqtune's own checkpoints record it)."""
    step = _step_in_name(folder)
    if step is not None:
        return step
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(folder)))
    return int(match.group(2)) + 1 if match else 0


def list_checkpoints(output_dir: str, warn: bool = True) -> list[str]:
    """Complete checkpoints in `output_dir` (checkpoint-N, step_N, epoch_E), oldest first by the step their
    manifests record (then by when they were written); incomplete ones are logged and skipped.

    Cheap (sizes only, no checksums): for listing and rotation. To pick a checkpoint to use,
    call `newest_checkpoint`, which verifies it.
    """
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        folder = os.path.join(output_dir, name)
        if not is_checkpoint_name(name) or not os.path.isdir(folder):
            continue
        reason = incomplete_reason(folder, verify=False)
        if reason is not None and foreign_writer(folder) is not None:  # transformers' or Accelerate's own
            found.append((_foreign_sort_step(folder), os.path.getmtime(folder), name, folder))
        elif reason is None:
            manifest, _ = _read_manifest(folder)
            step = _manifest_step(manifest)
            step = step if step is not None else (_step_in_name(folder) or 0)
            written_at = manifest.get("written_at")
            written_at = written_at if isinstance(written_at, (int, float)) else 0.0
            found.append((step, written_at, name, folder))
        elif warn:
            logger.warning("Skipping %s: incomplete checkpoint (%s).", folder, reason)
    return [entry[-1] for entry in sorted(found)]


def newest_checkpoint(
    output_dir: str, verify: bool = True, announce: bool = False, ignore: tuple | list = ()
) -> str | None:
    """The newest complete checkpoint whose files match their checksums (the one to resume from).

    Incomplete and damaged ones are skipped with a log line saying why; the checksums of
    older ones are read only while newer ones fail. `verify=False`: sizes only. A checkpoint of
    transformers' Trainer or of the no_trainer script (`foreign_writer`) is taken as it is;
    `announce=True` (choosing where to resume) logs that. `ignore`: names of folders not to take
    (the foreign checkpoints a run started afresh over with --overwrite_output_dir).
    """
    for folder in reversed(list_checkpoints(output_dir)):
        if os.path.basename(folder) in ignore:
            continue
        note = foreign_checkpoint_note(folder)
        if note is not None:  # no checksums to verify: as it is
            if announce:
                logger.info(note)
            return folder
        reason = damage_reason(folder) if verify else None
        if reason is None:
            return folder
        logger.warning("Skipping %s: damaged checkpoint (%s).", folder, reason)
    return None


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


# --------------------------------------------------------------------------- the model a checkpoint holds

# Where the Trainer (save_pretrained) and Accelerate (save_state: model 0) put the model's weights.
MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _file_weight_shapes(path: str) -> dict[str, tuple[int, ...]]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as handle:  # the header only: no tensor is read
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    import torch

    state = torch.load(path, map_location="meta", weights_only=True, mmap=True)  # shapes, no data
    return {name: tuple(tensor.shape) for name, tensor in state.items() if hasattr(tensor, "shape")}


def checkpoint_weight_shapes(checkpoint: str) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """(the model file, {weight name: shape}) of the model saved in `checkpoint`, read without
    loading a tensor; None when it holds no model file seqtune knows (FSDP's sharded state, say)."""
    for name in MODEL_WEIGHT_FILES:
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            continue
        try:
            if name.endswith(".index.json"):
                with open(path, encoding="utf-8") as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            else:
                shards = [name]
            shapes = {}
            for shard in shards:
                shapes.update(_file_weight_shapes(os.path.join(checkpoint, shard)))
        except Exception as error:  # safetensors, torch and json each raise their own types
            raise UserError(
                f"checkpoint {checkpoint}: {name} cannot be read ({type(error).__name__}: {error}). "
                f"Fix: resume from an earlier checkpoint (--resume_from_checkpoint), or pass "
                f"--overwrite_output_dir (or another --output_dir) to start afresh."
            ) from None
        return name, shapes
    return None


def _storage_key(tensor) -> tuple | None:
    if tensor.numel() == 0 or tensor.device.type == "meta":
        # No data to compare (a weight DeepSpeed ZeRO-3 partitioned away, a meta tensor): a tied weight is then
        # known by being the same Parameter under both names.
        import torch

        return ("object", id(tensor)) if isinstance(tensor, torch.nn.Parameter) else None
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))


def untied_missing_keys(model, missing_keys) -> list[str]:
    """The weights of `missing_keys` that are not tied to a weight that is there.

    Tied weights (T5's and BART's shared embeddings and output layer) are saved once; loading
    the one saved fills the others, which share its storage.
    """
    missing = set(missing_keys)
    present = {}
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        key = _storage_key(tensor)
        if key is not None and name not in missing:
            present.setdefault(key, name)
    return [name for name in missing_keys if name not in state or _storage_key(state[name]) not in present]


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def check_same_model(checkpoint: str, model, model_name: str | None = None, shapes: dict | None = None) -> None:
    """Refuse to resume from a checkpoint of another model than `model` (a T5 run's output dir reused
    with a BART model, say): the resume would end in a size-mismatch traceback, or train a half-loaded model.

    Compares the names and shapes of the checkpoint's saved weights (read from the file headers)
    with the model's; weights tied to a saved one, and those the model never saves, may be absent.
    `shapes`: the model's {PyTorch weight name: shape} where it is no PyTorch model (the TensorFlow recipe).
    """
    found = checkpoint_weight_shapes(checkpoint)
    if found is None:
        return
    _, saved = found
    there = {_plain_name(name): shape for name, shape in saved.items()}
    state = model.state_dict(keep_vars=True) if shapes is None else {}
    here = {
        _plain_name(name): tuple(getattr(tensor, "ds_shape", tensor.shape))  # DeepSpeed ZeRO-3: the full shape
        for name, tensor in state.items()
    }
    here.update(shapes or {})
    difference = None
    for name in sorted(there):
        if name in here and 0 not in there[name] and 0 not in here[name] and there[name] != here[name]:
            difference = (name, _shape_text(there[name]), _shape_text(here[name]))
            break
    if difference is None:
        absent = sorted(name for name in there if name not in here)
        if absent:
            difference = (absent[0], _shape_text(there[absent[0]]), "absent")
    if difference is None and shapes is None:
        ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_save", None) or [])]
        not_saved = [name for name in state if _plain_name(name) not in there]
        not_saved = [
            name
            for name in untied_missing_keys(model, not_saved)
            if not any(pattern.search(name) for pattern in ignored)
        ]
        if not_saved:
            name = _plain_name(sorted(not_saved)[0])
            difference = (name, "absent", _shape_text(here[name]))
    if difference is None:
        return
    name, there_text, here_text = difference
    model_name = model_name or getattr(model, "name_or_path", None) or type(model).__name__
    raise UserError(
        f"checkpoint {checkpoint} holds a different model than --model_name_or_path {model_name} "
        f"(weight '{name}' is {there_text} there, {here_text} here). Fix: resume with the model the run "
        f"started from, or pass --overwrite_output_dir (or another --output_dir) to start afresh."
    )


# --------------------------------------------------------------------------- each recipe's checkpoints


def save_accelerate_checkpoint(
    accelerator,
    output_dir: str,
    step: int,
    save_total_limit: int | None,
    hub=None,
    name: str | None = None,
    write_more=None,
) -> str:
    """The Accelerate recipe's checkpoint: `save_state` into the staging folder, then one rename makes
    output_dir/`name` visible (step_N or epoch_E, as the no_trainer script names them; default
    checkpoint-`step`) (and, with --push_to_hub, it goes to the hub: a failed upload is logged,
    training goes on); the oldest by step beyond --save_total_limit are deleted. `write_more(staged)`, run
    on every process after save_state, adds what accelerate does not save (FSDP's sharded state)."""
    name = name or checkpoint_name(step)
    staged = staging_path(output_dir, step, name)
    if is_main_process():
        shutil.rmtree(staged, ignore_errors=True)  # what a run killed while writing this step left
    accelerator.wait_for_everyone()
    with guarded_save(name, output_dir, staged=staged):
        accelerator.save_state(staged)  # every process writes its RNG state; the main one the rest
        if write_more is not None:
            write_more(staged)
    accelerator.wait_for_everyone()
    published = os.path.join(output_dir, name)
    if is_main_process():
        publish_checkpoint(staged, output_dir, step, name=name)
        if hub is not None:
            hub.push_checkpoint(published, step)
        rotate_checkpoints(output_dir, save_total_limit)
        logger.info("Saved %s.", published)
    accelerator.wait_for_everyone()
    return published


def check_accelerate_checkpoint(folder: str | None, prog: str) -> None:
    """Refuse a folder the Accelerate recipe cannot resume from (a Trainer checkpoint, say) before anything runs.

    It takes its own checkpoints (with custom_checkpoint_0.pkl, the loop's position) and those of the Hugging
    Face no_trainer script (save_state without it: the position is in the name, step_N or epoch_E)."""
    folder = os.path.expanduser(folder) if folder else None
    if not folder or not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "custom_checkpoint_0.pkl")):
        return
    if foreign_writer(folder) == ACCELERATE_WRITER:
        match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(folder)))
        if match and match.group(1) != CHECKPOINT_PREFIX:
            return
        raise UserError(
            f"{folder} is a checkpoint of Accelerate's save_state without {prog}'s position in it: its name must "
            f"be step_N or epoch_E (as the Hugging Face no_trainer script names them) to tell where training stands. "
            f"Fix: rename it to the step_N it was saved at, or resume from another checkpoint."
        )
    raise UserError(
        f"{folder} is not a checkpoint of {prog} (no custom_checkpoint_0.pkl, nor the model, optimizer.bin and "
        f"random_states_0.pkl of the no_trainer script; a Trainer checkpoint?). "
        f"Fix: resume from a checkpoint this script wrote, or pass --overwrite_output_dir to start afresh."
    )


LAYOUT_KEY = "layout"  # in a Trainer checkpoint's manifest: the processes and batch it was written with


def trainer_layout(trainer) -> dict:
    """(processes, accumulation steps, global batch) of a Trainer run, as its checkpoints' manifests record them."""
    args = trainer.args
    return {
        "processes": args.world_size,
        "accumulation": args.gradient_accumulation_steps,
        "global_batch": trainer.global_batch,
    }


def saved_layout(checkpoint: str) -> tuple | None:
    """The (processes, accumulation steps, global batch) a Trainer checkpoint was written with; None when its
    manifest does not say (written before seqtune recorded it, or by another tool)."""
    manifest, _ = _read_manifest(checkpoint)
    layout = (manifest or {}).get(LAYOUT_KEY)
    if not isinstance(layout, dict):
        return None
    return layout.get("processes"), layout.get("accumulation"), layout.get("global_batch")


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
            published = publish_checkpoint(staged, output_dir, step, extra={LAYOUT_KEY: trainer_layout(trainer)})
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
