"""The run log and the training report.

`log_history.jsonl` (in the output dir) is the run log: one JSON record per log event
(training loss and learning rate, evaluation metrics, prediction metrics), appended and
flushed line by line by the main process, so it survives a killed run. Both loops write
it through `RunLog(output_dir).append(record)`; the Trainer does so with `RunLogCallback`.
A record with `"event": "start"` marks where a (resumed) training run began: records
after that step from an earlier attempt are superseded.

`build_report(output_dir)` turns the saved files into `report.html` and the `plot_*.png`
it shows (matplotlib, Agg): training loss and learning rate per step, evaluation loss
and ROUGE per evaluation, the final metrics (all_results.json), the configuration
(seqtune_args.json) and a few test examples (report_examples.jsonl, saved at the start
of the run) next to the generated summaries (generated_predictions.txt, in input order).
It needs only those files, so `seqtune report OUTPUT_DIR` also works for a run still in
progress or killed.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import os
import shlex
import time

from transformers import TrainerCallback

from .checkpoints import publish, temporary_path
from .errors import UserError, exit_on_user_error
from .outputs import (
    ARGS_FILE,
    PREDICTIONS_FILE,
    RUN_MARKER,
    atomic_write_text,
    record_files,
    redact,
    seqtunes_files,
)
from .runtime import is_main_process
from .tasks import TASKS

logger = logging.getLogger(__name__)

LOG_FILE = "log_history.jsonl"
EXAMPLES_FILE = "report_examples.jsonl"
REPORT_FILE = "report.html"
RESULTS_FILE = "all_results.json"
PLOT_PREFIX = "plot_"
TRAINING_LOSS_PLOT = "plot_training_loss.png"  # the model card embeds this one
REPORT_EXAMPLES = 5
EXAMPLE_TEXT_LIMIT = 5000  # characters kept per source/reference text
KEY_SETTINGS = (
    "model_name_or_path",
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "test_file",
    "source_prefix",
    "max_source_length",
    "max_target_length",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "seed",
    "num_beams",
    "fp16",
    "bf16",
)


# --------------------------------------------------------------------------- run log


def classify(record: dict) -> str:
    """The kind of a log record: train (loss/learning rate), eval, predict, train_end or log."""
    if "eval_loss" in record or any(key.startswith("eval_") for key in record):
        return "eval"
    if any(key.startswith("predict_") for key in record):
        return "predict"
    if "train_runtime" in record or "train_loss" in record:
        return "train_end"
    if "loss" in record or "learning_rate" in record:
        return "train"
    return "log"


def _plain(value):
    """A JSON-friendly value (tensors and numpy scalars become numbers)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunLog:
    """The append-only run log of an output dir; writes happen on the main process only."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOG_FILE)

    def append(self, record: dict) -> None:
        if not is_main_process():
            return
        if not os.path.exists(self.path):
            record_files(self.output_dir, [LOG_FILE])  # into the run's record before the file exists
        record = {key: _plain(value) for key, value in record.items()}
        record.setdefault("event", classify(record))
        record.setdefault("time", round(time.time(), 3))
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a+b") as handle:
            if handle.tell() > 0:  # a line cut short by a kill stays on a line of its own
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()

    def start(self, step: int = 0) -> None:
        """Mark the start of training at `step` (0, or the step of the checkpoint resumed from)."""
        self.append({"event": "start", "step": int(step)})


def read_log(output_dir: str) -> list[dict]:
    """The records of the run log, in order, without those a resumed run superseded.

    A line cut short by a kill is skipped with a warning.
    """
    path = os.path.join(output_dir, LOG_FILE)
    records: list[dict] = []
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return records
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning(
                    "%s, line %d: an incomplete record (the run was stopped while writing it); skipped.", path, number
                )
                continue
            if not isinstance(record, dict):
                continue
            if record.get("event") == "start":
                step = record.get("step") or 0
                records = [r for r in records if (r.get("step") or 0) <= step]
            records.append(record)
    return records


class RunLogCallback(TrainerCallback):
    """Writes the Trainer's log events to the run log."""

    def __init__(self, output_dir: str):
        self.log = RunLog(output_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.log.start(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.log.append({**logs, "step": state.global_step, "epoch": state.epoch})

    # Prediction metrics are logged by the recipe: seqtune predicts in windows, and only the
    # totals over all of them belong in the log.


def save_report_examples(
    output_dir: str, dataset, text_column: str, summary_column: str, count: int = REPORT_EXAMPLES
) -> None:
    """Keep the first `count` rows of the test split (the rows the first predictions belong to)."""
    if not is_main_process() or dataset is None:
        return
    rows = dataset.select(range(min(count, len(dataset))))
    lines = [
        json.dumps(
            {
                "index": index,
                "source": row[text_column][:EXAMPLE_TEXT_LIMIT],
                "reference": row[summary_column][:EXAMPLE_TEXT_LIMIT],
            }
        )
        for index, row in enumerate(rows)
    ]
    atomic_write_text(os.path.join(output_dir, EXAMPLES_FILE), "".join(line + "\n" for line in lines))


# --------------------------------------------------------------------------- reading the run


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except OSError:
        pass
    return rows


def _first_lines(path: str, count: int) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = []
            for line in handle:
                if len(lines) == count:
                    break
                lines.append(line.rstrip("\n"))
            return lines
    except OSError:
        return None


def series(records: list[dict], event: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in records of one event; one value per step (the last one)."""
    by_step: dict = {}
    for record in records:
        if (
            record.get("event") == event
            and isinstance(record.get(key), (int, float))
            and not isinstance(record.get(key), bool)
        ):
            by_step[record.get("step") or 0] = float(record[key])
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


# --------------------------------------------------------------------------- plots


def _save_figure(figure, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    temporary = temporary_path(path)  # a killed run's half plot is recognised as scratch
    figure.savefig(temporary, dpi=100, bbox_inches="tight", format="png")
    publish(temporary, path)


def _plot(
    path: str, title: str, ylabel: str, lines: dict, xlabel: str = "step", markers: bool = False, log_y: bool = False
) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    for label, (xs, ys) in lines.items():
        axes.plot(xs, ys, marker="o" if markers or len(xs) < 3 else None, markersize=4, label=label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if log_y and all(y > 0 for _, ys in lines.values() for y in ys):
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    if len(lines) > 1:
        axes.legend()
    _save_figure(figure, path)


def make_plots(output_dir: str, records: list[dict]) -> list[tuple[str, str]]:
    """Write the plots the records allow; return [(file name, caption)], removing stale plot files."""
    made: list[tuple[str, str]] = []

    steps, losses = series(records, "train", "loss")
    if steps:
        _plot(os.path.join(output_dir, TRAINING_LOSS_PLOT), "Training loss", "loss", {"training loss": (steps, losses)})
        made.append((TRAINING_LOSS_PLOT, "Training loss per logged step"))
    steps, rates = series(records, "train", "learning_rate")
    if steps:
        _plot(
            os.path.join(output_dir, "plot_learning_rate.png"),
            "Learning rate",
            "learning rate",
            {"learning rate": (steps, rates)},
        )
        made.append(("plot_learning_rate.png", "Learning rate per logged step"))

    eval_steps, eval_losses = series(records, "eval", "eval_loss")
    if eval_steps:
        _plot(
            os.path.join(output_dir, "plot_eval_loss.png"),
            "Evaluation loss",
            "loss",
            {"eval loss": (eval_steps, eval_losses)},
            markers=True,
        )
        made.append(("plot_eval_loss.png", "Evaluation loss per evaluation"))
    for task in TASKS.values():  # the run's own scores: ROUGE for summaries, BLEU and chrF for translations
        lines = {key: series(records, "eval", f"eval_{key}") for key in task.scorer.names}
        lines = {key: line for key, line in lines.items() if line[0]}
        if lines:
            name, title, axis = task.plot
            _plot(os.path.join(output_dir, name), title, axis, lines, markers=True)
            made.append((name, f"{title} per evaluation"))

    keep = {name for name, _ in made}
    record_files(output_dir, keep)
    for name in seqtunes_files(output_dir):  # an earlier report's plot that has no data now; never the user's
        if name.startswith(PLOT_PREFIX) and name.endswith(".png") and name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
    return made


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; } .note { color: #8a5300; background: #fff6e5; padding: 0.5rem 0.8rem; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ddd; padding: 0.3rem 0.6rem;
        text-align: left; vertical-align: top; } th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.tables { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; }
figure img { max-width: 520px; width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
table.examples td { width: 33%; } table.examples td div { max-height: 12rem; overflow: auto; white-space: pre-wrap; }
code { background: #f4f4f6; padding: 0 0.2rem; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _table(rows: list[tuple[str, object]], header: tuple[str, str] = ("name", "value")) -> str:
    cells = "".join(
        f'<tr><td>{_e(key)}</td><td class="{"num" if isinstance(value, (int, float)) else ""}">'
        f"{_e(_number(value))}</td></tr>"
        for key, value in rows
    )
    return f"<table><tr><th>{_e(header[0])}</th><th>{_e(header[1])}</th></tr>{cells}</table>"


def _status(marker: dict | None, finishing: bool) -> str:
    if finishing:
        return "finished"
    if marker is None:
        return "unknown (no seqtune_run.json)"
    if marker.get("status") == "finished":
        return "finished" + (
            f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(marker['finished_at']))}"
            if marker.get("finished_at")
            else ""
        )
    return "running, or stopped before it finished"


def _metrics_section(results: dict | None, records: list[dict]) -> str:
    if results:
        groups: dict[str, list] = {"train": [], "eval": [], "predict": [], "other": []}
        for key, value in sorted(results.items()):
            groups.get(key.split("_")[0], groups["other"]).append((key, value))
        tables = "".join(_table(rows, (group, "value")) for group, rows in groups.items() if rows)
        return f'<div class="tables">{tables}</div>'
    parts = [
        '<p class="note">No final metrics yet: the run is in progress or was stopped before it finished. '
        "The latest logged values follow.</p>"
    ]
    for event, title in (("train", "Last training log"), ("eval", "Last evaluation")):
        latest = next((r for r in reversed(records) if r.get("event") == event), None)
        if latest:
            rows = [(k, v) for k, v in sorted(latest.items()) if k not in ("event", "time")]
            parts.append(f"<h3>{_e(title)}</h3>" + _table(rows, ("metric", "value")))
    if len(parts) == 1:
        parts.append("<p>Nothing has been logged yet.</p>")
    return "".join(parts)


def _examples_section(output_dir: str) -> str:
    examples = _read_jsonl(os.path.join(output_dir, EXAMPLES_FILE))
    if not examples:
        return "<p>No test examples were saved (the run had no test split: pass --do_predict with --test_file).</p>"
    predictions = _first_lines(os.path.join(output_dir, PREDICTIONS_FILE), len(examples))
    note = ""
    if predictions is None:
        note = (
            '<p class="note">No generated summaries yet (they are written at the end of a run with '
            "--do_predict --predict_with_generate).</p>"
        )
        predictions = []
    rows = []
    for position, example in enumerate(examples):
        generated = predictions[position] if position < len(predictions) else "(not generated)"
        rows.append(
            f"<tr><td><div>{_e(example.get('source', ''))}</div></td>"
            f"<td><div>{_e(example.get('reference', ''))}</div></td>"
            f"<td><div>{_e(generated)}</div></td></tr>"
        )
    return (
        note
        + '<table class="examples"><tr><th>source</th><th>reference</th><th>generated</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _config_section(arguments: dict | None) -> str:
    if not arguments:
        return f"<p>No configuration saved ({ARGS_FILE} is missing).</p>"
    arguments = redact(arguments)
    key_rows = [(key, arguments[key]) for key in KEY_SETTINGS if arguments.get(key) not in (None, "")]
    all_rows = sorted(arguments.items())
    return (
        _table(key_rows, ("setting", "value"))
        + f"<details><summary>All {len(all_rows)} settings ({_e(ARGS_FILE)})</summary>"
        + _table(all_rows, ("setting", "value"))
        + "</details>"
    )


def build_report(output_dir: str, finishing: bool = False) -> str:
    """Write report.html and its plots from the files in `output_dir`; return the report's path.

    `finishing`: the run is writing its last outputs (its marker does not say finished yet).
    """
    output_dir = os.path.abspath(output_dir)
    records = read_log(output_dir)
    marker = _read_json(os.path.join(output_dir, RUN_MARKER))
    arguments = _read_json(os.path.join(output_dir, ARGS_FILE))
    results = _read_json(os.path.join(output_dir, RESULTS_FILE))
    plots = make_plots(output_dir, records)

    title = os.path.basename(output_dir)
    # Shell-quoted, so that pasting it back runs the same command (e.g. --source_prefix 'summarize: ').
    command = shlex.join(str(part) for part in (marker or {}).get("command") or [])
    started = (marker or {}).get("started_at")
    meta = [f"Status: {_e(_status(marker, finishing))}"]
    if started:
        meta.append(f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}")
    meta.append(
        f"{sum(1 for r in records if r.get('event') == 'train')} training and "
        f"{sum(1 for r in records if r.get('event') == 'eval')} evaluation records in {LOG_FILE}"
    )
    if plots:
        figures = "".join(
            f'<figure><img src="{_e(name)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
            for name, caption in plots
        )
        plots_html = f'<div class="plots">{figures}</div>'
    else:
        plots_html = "<p>Nothing to plot yet: no training or evaluation has been logged.</p>"
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>seqtune report: {_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>seqtune report: {_e(title)}</h1>
<p class="meta">{" &middot; ".join(meta)}</p>
{f"<p><code>{_e(command)}</code></p>" if command else ""}
<h2>Final metrics</h2>
{_metrics_section(results, records)}
<h2>Training and evaluation</h2>
{plots_html}
<h2>Test examples</h2>
{_examples_section(output_dir)}
<h2>Configuration</h2>
{_config_section(arguments)}
<p class="meta">Rebuild with <code>seqtune report {_e(shlex.quote(output_dir))}</code>.</p>
</body>
</html>
"""
    path = os.path.join(output_dir, REPORT_FILE)
    atomic_write_text(path, document)
    return path


def build_report_at_end(output_dir: str) -> str | None:
    """Build the report at the end of a run (main process); a failure is logged, not raised,
    so that a finished training never ends in an error because of its report."""
    if not is_main_process():
        return None
    try:
        path = build_report(output_dir, finishing=True)
    except Exception:  # a report bug must not cost the user a finished run
        logger.exception("Could not build the report; rebuild it with `seqtune report %s`.", output_dir)
        return None
    logger.info("Report: %s", path)
    return path


# --------------------------------------------------------------------------- seqtune report


@exit_on_user_error
def main(argv: list[str] | None = None) -> str:
    """`seqtune report OUTPUT_DIR`: rebuild report.html from a run's saved logs."""
    parser = argparse.ArgumentParser(
        prog="seqtune report",
        description="Rebuild report.html and its plots from the saved logs of a run (finished, running or killed).",
    )
    parser.add_argument("output_dir", help="the --output_dir of a seqtune run")
    args = parser.parse_args(argv)
    output_dir = args.output_dir
    if not os.path.isdir(output_dir):
        raise UserError(f"{output_dir}: no such folder. Fix: pass the --output_dir of a seqtune run.")
    if not any(os.path.exists(os.path.join(output_dir, name)) for name in (RUN_MARKER, LOG_FILE, ARGS_FILE)):
        raise UserError(
            f"{output_dir} holds no seqtune run (no {RUN_MARKER}, {LOG_FILE} or {ARGS_FILE}). "
            f"Fix: pass the --output_dir of a seqtune run."
        )
    path = build_report(output_dir)
    print(path)
    return path
