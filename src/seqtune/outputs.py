"""Everything a run writes besides checkpoints: the output dir's safety rules, results
JSON, predictions, the saved arguments and the final model (the model card: seqtune.card).

Only the main process writes; every function here checks `is_main_process()` itself so
that callers need not.
"""

from __future__ import annotations

import dataclasses
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
    checkpoint_step,
    clean_leftovers,
    guarded_save,
    incomplete_reason,
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
      checkpoint; a seqtune run killed before its first checkpoint starts again; anything
      else is refused, so nothing of the user's is overwritten.
    - With `--overwrite_output_dir`: seqtune's own files and checkpoints are removed first.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file. Fix: pass a folder path.")

    if resume_from_checkpoint:
        path = os.path.expanduser(resume_from_checkpoint)
        if not os.path.isdir(path):
            raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such folder.")
        reason = incomplete_reason(path)
        if reason is not None and os.path.exists(os.path.join(path, MANIFEST_NAME)):
            raise UserError(
                f"--resume_from_checkpoint {resume_from_checkpoint} is incomplete ({reason}). "
                f"Fix: resume from an earlier checkpoint."
            )
        if reason is not None:
            logger.warning("%s has no seqtune manifest; resuming from it as it is.", path)
        if not do_train:
            logger.warning("--resume_from_checkpoint has no effect without --do_train.")
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
            remove_own_files(output_dir)
        barrier()
        _check_writable(output_dir)
        return None

    checkpoint = newest_checkpoint(output_dir) if do_train else None
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


def remove_own_files(output_dir: str) -> None:
    """Delete what seqtune wrote in `output_dir` (checkpoints, results, model files); keep the rest."""
    clean_leftovers(output_dir)
    model_files = _final_model_files(output_dir)
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if checkpoint_step(name) is not None and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif _is_own_file(name, model_files):
            os.remove(path) if os.path.isfile(path) else shutil.rmtree(path, ignore_errors=True)
    logger.info("--overwrite_output_dir: removed seqtune's earlier files from %s.", output_dir)


def _is_own_file(name: str, model_files: set[str]) -> bool:
    """A top-level file seqtune writes (not a checkpoint): results, card, report, plots, final model."""
    return name in OWN_FILES or name in model_files or (name.endswith(".png") and name.startswith("plot_"))


def shareable_files(output_dir: str) -> list[str]:
    """The files of a finished run that belong in a published model repository (`--push_to_hub`).

    seqtune's own top-level files (final model, card, results, predictions, report, plots);
    never checkpoints, the run marker, half-written files, or anything else kept in the folder.
    """
    model_files = _final_model_files(output_dir)
    return sorted(
        name
        for name in os.listdir(output_dir)
        if name != RUN_MARKER and os.path.isfile(os.path.join(output_dir, name)) and _is_own_file(name, model_files)
    )


def _final_model_files(output_dir: str) -> set[str]:
    """Names of the final model's files recorded by the last run (so overwrite removes only those)."""
    marker = _read_run_marker(output_dir) or {}
    return set(marker.get("model_files", []))


def mark_run_started(output_dir: str, argv: list[str], arguments: list) -> None:
    """Mark the output dir as a seqtune run and save its arguments (secrets redacted)."""
    if not is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    marker = _read_run_marker(output_dir) or {}
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
    with guarded_save(os.path.basename(path), os.path.dirname(os.path.abspath(path)), staged=temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        publish(temporary, path)


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
