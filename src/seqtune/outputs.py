"""Everything a run writes besides checkpoints: the output dir's safety rules, results
JSON, predictions, the saved arguments and the final model (the model card: seqtune.card).

Only the main process writes; every function here checks `is_main_process()` itself so
that callers need not.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import time

from . import __version__
from .checkpoints import (
    CHECKPOINT_PREFIX,
    MANIFEST_NAME,
    STAGING_DIR_NAME,
    TRASH_PREFIX,
    clean_leftovers,
    foreign_checkpoint_note,
    guarded_save,
    incomplete_reason,
    is_checkpoint_name,
    is_leftover,
    list_checkpoints,
    newest_checkpoint,
    publish,
    temporary_path,
)
from .errors import UserError
from .runtime import barrier, is_main_process

logger = logging.getLogger(__name__)

RUN_MARKER = "seqtune_run.json"
ARGS_FILE = "seqtune_args.json"
PREDICTIONS_FILE = "generated_predictions.txt"
SECRET_FIELDS = ("token", "hub_token", "push_to_hub_token")
REDACTED = "<redacted>"

# Files seqtune writes at the top of an output dir; --overwrite_output_dir replaces only these
# (and checkpoint folders), never anything else the user keeps there.
OWN_FILES = {
    RUN_MARKER,
    ARGS_FILE,
    PREDICTIONS_FILE,
    "train_results.json",
    "eval_results.json",
    "predict_results.json",
    "all_results.json",
    "trainer_state.json",
    "training_args.bin",
    "README.md",
    "report.html",
    "log_history.jsonl",
    "report_examples.jsonl",
    "runs",  # TensorBoard event files (--report_to tensorboard)
}
# Every top-level name a run may write besides the final model's files. A run claims them in its
# record (the run marker's "files") when it starts; only recorded names are ever deleted.
RUN_FILES = OWN_FILES | {
    "plot_training_loss.png",
    "plot_learning_rate.png",
    "plot_eval_loss.png",
    "plot_eval_rouge.png",
    "plot_eval_bleu.png",
}
# Names save_pretrained writes for a model and its tokenizer: a user's file of such a name would be
# written over by the final model, so --overwrite_output_dir refuses to start over one.
MODEL_FILE_NAMES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
}
_held_locks: dict[str, int] = {}  # output dir -> open file descriptor holding its lock


# --------------------------------------------------------------------------- output dir


def _entries(output_dir: str) -> list[str]:
    """The output dir's entries, without the scratch a killed seqtune run may have left."""
    return sorted(name for name in os.listdir(output_dir) if not is_leftover(name))


def _listing(output_dir: str, limit: int = 5) -> str:
    names = _entries(output_dir)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _read_run_marker(output_dir: str) -> dict | None:
    try:
        with open(os.path.join(output_dir, RUN_MARKER), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def prepare_output_dir(
    output_dir: str,
    overwrite: bool,
    resume_from_checkpoint: str | None,
    do_train: bool,
) -> str | None:
    """Apply the output-dir rules; return the checkpoint to resume from, if any.

    - `--resume_from_checkpoint PATH`: that checkpoint (it must be complete).
    - Non-empty dir without `--overwrite_output_dir`: resume from its newest complete
      checkpoint (also one of transformers' Trainer or of the Hugging Face no_trainer script, for a run
      switched to seqtune mid-way); a seqtune run killed before its first checkpoint starts again; anything
      else is refused, so nothing of the user's is overwritten.
    - With `--overwrite_output_dir`: seqtune's own files and checkpoints are removed first.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file. Fix: pass a folder path.")
    if os.path.isdir(output_dir):
        lock_output_dir(output_dir)  # before anything in it is read, cleaned or removed

    if resume_from_checkpoint:
        path = _given_checkpoint(resume_from_checkpoint, do_train)
        if not overwrite and _holds_foreign_files(output_dir, path):
            raise UserError(
                f"--output_dir {output_dir} already holds files that are not a seqtune run ({_listing(output_dir)}); "
                f"resuming would write over them. Fix: choose another --output_dir, or pass --overwrite_output_dir."
            )
        _check_writable(output_dir)
        _clean_leftovers_on_main(output_dir)
        return path

    if not os.path.isdir(output_dir) or not _entries(output_dir):
        _check_writable(output_dir)
        _clean_leftovers_on_main(output_dir)
        return None

    if overwrite:
        if is_main_process():
            _refuse_to_write_over_foreign_files(output_dir)
            remove_own_files(output_dir)
            _ignore_foreign_checkpoints(output_dir)
        barrier()
        _check_writable(output_dir)
        return None

    # Checkpoints transformers' Trainer or the no_trainer script wrote count too (no seqtune_run.json then):
    # the same command run with seqtune instead resumes from them.
    ignored = (_read_run_marker(output_dir) or {}).get("ignored_checkpoints", [])
    checkpoint = newest_checkpoint(output_dir, announce=True, ignore=ignored) if do_train else None
    if checkpoint is not None:
        logger.info("Resuming from %s, the newest complete checkpoint in %s.", checkpoint, output_dir)
        _clean_leftovers_on_main(output_dir)
        return checkpoint
    marker = _read_run_marker(output_dir)
    if do_train and marker is not None and marker.get("status") == "running":
        logger.info("%s holds a seqtune run stopped before its first checkpoint; starting it again.", output_dir)
        _clean_leftovers_on_main(output_dir)
        return None
    what = "a finished seqtune run" if marker is not None else "files"
    raise UserError(
        f"--output_dir {output_dir} already holds {what} and no checkpoint to resume from ({_listing(output_dir)}). "
        f"Fix: pass --overwrite_output_dir to replace seqtune's files there, or choose another --output_dir."
    )


def _given_checkpoint(resume_from_checkpoint: str, do_train: bool) -> str:
    """The folder --resume_from_checkpoint names, checked: a folder, complete and undamaged (or written by
    transformers' Trainer or the no_trainer script, used as it is)."""
    path = os.path.expanduser(resume_from_checkpoint)
    if os.path.isfile(path):
        parent = os.path.dirname(os.path.abspath(path))
        raise UserError(
            f"--resume_from_checkpoint {resume_from_checkpoint} is a file; a checkpoint is a folder. "
            f"Fix: pass the checkpoint's folder{f' ({parent})' if is_checkpoint_name(parent) else ''}, "
            f"e.g. OUTPUT_DIR/checkpoint-500 (OUTPUT_DIR/step_500 or OUTPUT_DIR/epoch_1 for the no_trainer script)."
        )
    if not os.path.isdir(path):
        raise UserError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: no such folder. Fix: check the path "
            f"(a run's checkpoints are OUTPUT_DIR/checkpoint-N, or step_N and epoch_N for the no_trainer script), "
            f"or leave the flag out to resume from the newest."
        )
    reason = incomplete_reason(path)
    if reason is not None and os.path.exists(os.path.join(path, MANIFEST_NAME)):
        raise UserError(
            f"--resume_from_checkpoint {resume_from_checkpoint} is incomplete ({reason}). "
            f"Fix: resume from an earlier checkpoint."
        )
    note = foreign_checkpoint_note(path) if reason is not None else None
    if note is not None:  # transformers' Trainer or the no_trainer script wrote it (a switch mid-run)
        logger.info(note)
    elif reason is not None:
        logger.warning("%s has no seqtune manifest; resuming from it as it is.", path)
    if not do_train:
        logger.warning("--resume_from_checkpoint has no effect without --do_train.")
    return path


def _holds_foreign_files(output_dir: str, checkpoint: str) -> bool:
    """A non-empty folder that is neither a seqtune run nor the one holding `checkpoint`."""
    if not os.path.isdir(output_dir) or not _entries(output_dir):
        return False
    if os.path.dirname(os.path.abspath(os.path.normpath(checkpoint))) == output_dir:
        return False
    return _read_run_marker(output_dir) is None and not list_checkpoints(output_dir, warn=False)


def _clean_leftovers_on_main(output_dir: str) -> None:
    """Remove a killed run's staging folders, trash and temporary files before this run writes."""
    if is_main_process() and os.path.isdir(output_dir):
        clean_leftovers(output_dir)
    barrier()


def _check_writable(output_dir: str) -> None:
    """Refuse early if the output dir (or the folder it will be created in) is not writable.

    Creates nothing: the folder itself appears only once the data and model have loaded.
    """
    if not is_main_process():
        return
    existing = output_dir
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise UserError(f"cannot create --output_dir {output_dir}: {existing} is a file. Fix: choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write to --output_dir {output_dir}: {existing} is not writable. Fix: choose a writable folder."
        )


def seqtunes_files(output_dir: str) -> set[str]:
    """The top-level names seqtune wrote in `output_dir`, from its record (besides checkpoints and leftovers).

    Runs of seqtune before the record existed are recognised by their file names, as they were then.
    """
    marker = _read_run_marker(output_dir)
    if marker is None:
        return set()
    model_files = set(marker.get("model_files", []))
    if "files" not in marker:  # an older seqtune's run
        return {
            name
            for name in os.listdir(output_dir)
            if name in OWN_FILES or name in model_files or (name.startswith("plot_") and name.endswith(".png"))
        }
    return set(marker["files"]) | model_files | {RUN_MARKER}


def _is_seqtune_checkpoint(output_dir: str, name: str) -> bool:
    """A checkpoint folder seqtune wrote: it has seqtune's manifest, or lies in a seqtune run's folder
    (a killed run's incomplete one)."""
    path = os.path.join(output_dir, name)
    if not is_checkpoint_name(name) or not os.path.isdir(path):
        return False
    return os.path.exists(os.path.join(path, MANIFEST_NAME)) or _read_run_marker(output_dir) is not None


def _refuse_to_write_over_foreign_files(output_dir: str) -> None:
    """--overwrite_output_dir starts afresh over seqtune's files only: a user's file of a name the run
    writes (README.md, config.json, ...) would be lost, so the run stops before anything is written."""
    own = seqtunes_files(output_dir)
    at_risk = [
        name
        for name in _entries(output_dir)
        if name not in own
        and not is_checkpoint_name(name)
        and (name in RUN_FILES or name in MODEL_FILE_NAMES or (name.startswith("plot_") and name.endswith(".png")))
    ]
    if at_risk:
        raise UserError(
            f"--output_dir {output_dir} holds files seqtune did not write but would write over: "
            f"{', '.join(at_risk)}. Fix: move them out of the folder, or choose another --output_dir."
        )


def _ignore_foreign_checkpoints(output_dir: str) -> None:
    """Starting afresh over checkpoints the Hugging Face scripts wrote (not seqtune's to delete): the run
    record says to leave them out, so that a rerun of this run never resumes from them."""
    foreign = [os.path.basename(c) for c in list_checkpoints(output_dir, warn=False) if foreign_checkpoint_note(c)]
    if foreign:
        logger.info(
            "--overwrite_output_dir: keeping %s (not written by seqtune), never resumed from.", ", ".join(foreign)
        )
        atomic_write_json(
            os.path.join(output_dir, RUN_MARKER),
            {"status": "running", "files": [RUN_MARKER], "ignored_checkpoints": foreign},
        )


def remove_own_files(output_dir: str) -> list[str]:
    """Delete what seqtune wrote in `output_dir` (by its record: checkpoints, results, model files); keep the
    rest. Returns the names removed."""
    clean_leftovers(output_dir)
    own = seqtunes_files(output_dir)
    names = sorted(os.listdir(output_dir))
    # Decided before anything is deleted: the run marker (which sorts before step_N) tells an incomplete
    # checkpoint of the run from the user's folder.
    checkpoints = {name for name in names if _is_seqtune_checkpoint(output_dir, name)}
    removed = []
    for name in names:
        path = os.path.join(output_dir, name)
        if name in own or name in checkpoints:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    shown = ", ".join(removed[:12]) + (f", ... ({len(removed)} in all)" if len(removed) > 12 else "")
    logger.info("--overwrite_output_dir: removed seqtune's earlier files from %s: %s.", output_dir, shown or "none")
    return removed


def shareable_files(output_dir: str) -> list[str]:
    """The files of a finished run that belong in a published model repository (`--push_to_hub`).

    seqtune's own top-level files (final model, card, results, predictions, report, plots);
    never checkpoints, the run marker, half-written files, or anything else kept in the folder.
    """
    own = seqtunes_files(output_dir)
    return sorted(
        name
        for name in os.listdir(output_dir)
        if name != RUN_MARKER and name in own and os.path.isfile(os.path.join(output_dir, name))
    )


def record_files(output_dir: str, names) -> None:
    """Add `names` (top-level entries this run wrote) to the run's record, so that seqtune can tell its
    files from the user's later (--overwrite_output_dir removes recorded files only)."""
    if not is_main_process():
        return
    marker = _read_run_marker(output_dir)
    if marker is None:
        return
    recorded = set(marker.get("files", []))
    if not set(names) - recorded:
        return
    marker["files"] = sorted(recorded | set(names))
    atomic_write_json(os.path.join(output_dir, RUN_MARKER), marker)


def lock_output_dir(output_dir: str) -> None:
    """One run per output folder: an exclusive lock on the folder itself, held until the run ends (the
    kernel drops it when a run is killed, so nothing stays stuck; no lock file is left). Main process only."""
    import fcntl

    output_dir = os.path.abspath(output_dir)
    if not is_main_process() or output_dir in _held_locks:
        return
    descriptor = os.open(output_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # A file system without locks (some network mounts): run, but say that nothing guards the folder.
            logger.warning("Cannot lock --output_dir %s (%s): make sure no other run uses it.", output_dir, error)
            return
        raise UserError(
            f"another seqtune run is using --output_dir {output_dir} right now. "
            f"Fix: wait for it to end, or choose another --output_dir."
        ) from None
    _held_locks[output_dir] = descriptor


def unlock_output_dir(output_dir: str) -> None:
    """Let the next run in (at the end of a run; a process that ends releases it anyway)."""
    descriptor = _held_locks.pop(os.path.abspath(output_dir), None)
    if descriptor is not None:
        os.close(descriptor)


def mark_run_started(output_dir: str, argv: list[str], arguments: list) -> None:
    """Mark the output dir as a seqtune run and save its arguments (secrets redacted)."""
    if not is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    lock_output_dir(output_dir)  # a folder created just now by this run
    own = seqtunes_files(output_dir)
    marker = _read_run_marker(output_dir) or {}
    # The record starts here; every writer adds what it writes (record_files). TensorBoard's folder is
    # written by the libraries, so this run claims it now when it is not there yet.
    tensorboard = set() if os.path.exists(os.path.join(output_dir, "runs")) else {"runs"}
    marker["files"] = sorted(set(marker.get("files", [])) | own | tensorboard | {RUN_MARKER, ARGS_FILE})
    marker.update(
        {
            "status": "running",
            "seqtune_version": __version__,
            "started_at": time.time(),
            "command": redacted_command(argv),
        }
    )
    atomic_write_json(os.path.join(output_dir, RUN_MARKER), marker)
    atomic_write_json(os.path.join(output_dir, ARGS_FILE), arguments_as_dict(arguments))


def mark_run_finished(output_dir: str, model_files: list[str] | None = None) -> None:
    if not is_main_process():
        return
    marker = _read_run_marker(output_dir) or {}
    marker["status"] = "finished"
    marker["finished_at"] = time.time()
    if model_files is not None:
        marker["model_files"] = sorted(model_files)
    atomic_write_json(os.path.join(output_dir, RUN_MARKER), marker)


# --------------------------------------------------------------------------- secrets


def redact(mapping: dict) -> dict:
    return {key: (REDACTED if key in SECRET_FIELDS and value else value) for key, value in mapping.items()}


def redacted_command(argv: list[str]) -> list[str]:
    """The command line with the value of every token flag replaced."""
    flags = {f"--{name}" for name in SECRET_FIELDS}
    result, hide_next = [], False
    for arg in argv:
        if hide_next:
            result.append(REDACTED)
            hide_next = False
        elif arg in flags:
            result.append(arg)
            hide_next = True
        elif "=" in arg and arg.split("=", 1)[0] in flags:
            result.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            result.append(arg)
    return result


def arguments_as_dict(arguments: list) -> dict:
    """All dataclass arguments as one JSON-friendly dict, secrets redacted."""
    merged = {}
    for arg in arguments:
        if hasattr(arg, "to_dict"):
            values = arg.to_dict()
        else:
            values = dataclasses.asdict(arg)
        merged.update(values)
    return redact(json.loads(json.dumps(merged, default=str)))


# --------------------------------------------------------------------------- files


def atomic_write_text(path: str, text: str) -> None:
    temporary = temporary_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    with guarded_save(os.path.basename(path), folder, staged=temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        publish(temporary, path)
    if os.path.basename(path) != RUN_MARKER:
        record_files(folder, [os.path.basename(path)])  # in a run's output dir: a file seqtune wrote


def atomic_write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=4, sort_keys=True, default=str) + "\n")


def write_results(output_dir: str, split: str, metrics: dict) -> None:
    """Write `{split}_results.json` and merge the metrics into `all_results.json`."""
    if not is_main_process():
        return
    atomic_write_json(os.path.join(output_dir, f"{split}_results.json"), metrics)
    all_path = os.path.join(output_dir, "all_results.json")
    merged = {}
    if os.path.exists(all_path):
        with open(all_path, encoding="utf-8") as handle:
            merged = json.load(handle)
    merged.update(metrics)
    atomic_write_json(all_path, merged)


def log_metrics(split: str, metrics: dict) -> None:
    if not is_main_process():
        return
    logger.info("***** %s metrics *****", split)
    for key in sorted(metrics):
        value = metrics[key]
        logger.info("  %-28s = %s", key, f"{value:.4f}" if isinstance(value, float) else value)


def write_predictions(output_dir: str, predictions) -> int:
    """Stream predictions (an iterable of strings, in input order) to generated_predictions.txt."""
    if not is_main_process():
        for _ in predictions:
            pass
        return 0
    path = os.path.join(output_dir, PREDICTIONS_FILE)
    temporary = temporary_path(path)
    count = 0
    with guarded_save(PREDICTIONS_FILE, output_dir, staged=temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            for prediction in predictions:
                # One line per example: a generated line break must not split an example in two.
                handle.write(" ".join(prediction.split()) + "\n")
                count += 1
        publish(temporary, path)
    record_files(output_dir, [PREDICTIONS_FILE])
    return count


def save_final_model(model_saver, output_dir: str) -> list[str]:
    """Save the final model via `model_saver(folder)` into staging, then move each file in atomically.

    Returns the names of the files written (recorded so --overwrite_output_dir removes only those).
    """
    staging = os.path.join(output_dir, STAGING_DIR_NAME, "final-model")
    if is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging, exist_ok=True)
    barrier()
    with guarded_save("the final model", output_dir, staged=staging):
        model_saver(staging)
    barrier()
    names = []
    if is_main_process():
        for name in sorted(os.listdir(staging)):
            source = os.path.join(staging, name)
            if os.path.isfile(source):
                publish(source, os.path.join(output_dir, name))
                names.append(name)
        shutil.rmtree(staging, ignore_errors=True)
        if not os.listdir(os.path.dirname(staging)):
            os.rmdir(os.path.dirname(staging))
        record_files(output_dir, names)
    barrier()
    return names


__all__ = [
    "CHECKPOINT_PREFIX",
    "TRASH_PREFIX",
    "prepare_output_dir",
    "mark_run_started",
    "mark_run_finished",
    "write_results",
    "write_predictions",
    "save_final_model",
    "shareable_files",
]
