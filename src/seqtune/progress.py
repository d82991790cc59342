"""Progress of long phases: a tqdm bar on a terminal, periodic log lines everywhere else.

One object, `Progress`, for every phase (tokenizing, training, evaluation, prediction,
`seqtune summarize`), shown on the main process only. Where it renders is decided once,
by `progress_mode()`:

- "bar":   stderr is a terminal: a tqdm bar with rate and ETA (and loss/learning rate
           while training);
- "lines": anything else (CI logs, files, pipes): no carriage returns, one log line
           every tenth of the phase (or every SEQTUNE_PROGRESS_INTERVAL seconds,
           default 60) with done/total, rate, elapsed time and ETA;
- "off":   the other ranks of a distributed run.

SEQTUNE_PROGRESS=bar|lines|off overrides the choice (e.g. bars in a terminal multiplexer
that does not look like a terminal). `configure_library_progress()` makes the progress
bars of datasets, transformers and huggingface_hub follow the same choice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .runtime import is_main_process

logger = logging.getLogger(__name__)

MODE_ENV = "SEQTUNE_PROGRESS"
INTERVAL_ENV = "SEQTUNE_PROGRESS_INTERVAL"
LINES_PER_PHASE = 10
MODES = ("bar", "lines", "off")


def progress_mode() -> str:
    """'bar' on a terminal, 'lines' elsewhere, 'off' on every process but the main one."""
    if not is_main_process():
        return "off"
    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen in MODES:
        return chosen
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return "lines"


def configure_library_progress() -> str:
    """Silence the progress bars of datasets/transformers/huggingface_hub unless we render bars."""
    mode = progress_mode()
    if mode != "bar":
        import datasets
        import huggingface_hub.utils
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    return mode


def _interval() -> float:
    """Seconds between two log lines of a slow phase (SEQTUNE_PROGRESS_INTERVAL, default 60)."""
    try:
        return max(float(os.environ.get(INTERVAL_ENV, "60")), 1.0)
    except ValueError:
        return 60.0


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class Progress:
    """The progress of one phase: `update(n)`, `set_postfix(**values)`, `write(text)`, `close()`."""

    def __init__(
        self,
        total: int | None,
        description: str,
        unit: str = "it",
        initial: int = 0,
        mode: str | None = None,
        leave: bool = True,
        timed_from_first_update: bool = False,
    ):
        """`timed_from_first_update`: the phase began before this object (its first update reports
        work done before it existed), so the rate is measured from the first update on."""
        self.total = total
        self.description = description
        self.unit = unit
        self.mode = mode or progress_mode()
        self.done = initial
        self.initial = initial
        self.postfix: dict = {}
        self.started = time.monotonic()
        self.last_line = self.started
        self._rate_origin = None if timed_from_first_update else (self.started, initial)
        self._pending = False
        self.interval = _interval()
        self.lines_written = 0
        self._next_mark = self._mark_after(initial)
        self._bar = None
        self._closed = False
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=description,
                unit=f" {unit}",
                dynamic_ncols=True,
                leave=leave,
                file=sys.stderr,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _mark_after(self, done: int) -> int | None:
        """The next count at which 'lines' mode reports (each tenth of the total)."""
        if not self.total:
            return None
        step = self.total / LINES_PER_PHASE
        return min(self.total, math.floor(done / step + 1) * step) if done < self.total else None

    def update(self, count: int = 1, defer: bool = False) -> None:
        """Count `count` more units. `defer`: a due log line waits for `flush()` (or the next
        update), e.g. until the loss of this step is known."""
        if self._closed or count <= 0:
            return
        self.done += count
        now = time.monotonic()
        if self._rate_origin is None:
            self._rate_origin = (now, self.done)
        if self._bar is not None:
            self._bar.update(count)
        elif self.mode == "lines":
            at_mark = self._next_mark is not None and self.done >= self._next_mark
            if at_mark or now - self.last_line >= self.interval or self._pending:
                self._pending = True
                self._next_mark = self._mark_after(self.done)
                if not defer:
                    self.flush()

    def flush(self) -> None:
        """Write the log line that `update(defer=True)` held back, if any."""
        if self._pending and not self._closed:
            self._log_line(time.monotonic())

    def set_postfix(self, **values) -> None:
        self.postfix.update({k: v for k, v in values.items() if v is not None})
        if self._bar is not None:
            self._bar.set_postfix({k: format_value(v) for k, v in self.postfix.items()}, refresh=False)

    def write(self, text: str) -> None:
        """A message that must not break the bar (a log line in 'lines' mode)."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            logger.info("%s", text)

    def status_line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        rate = None
        if self._rate_origin is not None and now > self._rate_origin[0] and self.done > self._rate_origin[1]:
            rate = (self.done - self._rate_origin[1]) / (now - self._rate_origin[0])
        units = plural(self.unit)
        if self.total:
            parts = [f"{self.description}: {self.done}/{self.total} {units} ({100 * self.done / self.total:.0f}%)"]
        else:
            parts = [f"{self.description}: {self.done} {units}"]
        parts += [f"{key} {format_value(value)}" for key, value in self.postfix.items()]
        if rate is not None:
            parts.append(f"{rate:.2f} {units}/s" if rate >= 1 else f"{1 / rate:.2f} s/{self.unit}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and rate and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return " | ".join(parts)

    def _log_line(self, now: float) -> None:
        logger.info("%s", self.status_line(now))
        self.last_line = now
        self.lines_written += 1
        self._pending = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and (self.lines_written == 0 or self._next_mark is not None or self._pending):
            self._log_line(time.monotonic())  # the last line always says where the phase ended


@contextlib.contextmanager
def phase(description: str, total: int | None = None, unit: str = "row"):
    """A phase whose own library shows a bar on a terminal (datasets' map): in 'lines' mode, log
    where it starts and how long it took."""
    mode = progress_mode()
    started = time.monotonic()
    if mode == "lines":
        logger.info("%s: started%s", description, f" ({total} {unit}s)" if total else "")
    yield
    if mode == "lines":
        elapsed = time.monotonic() - started
        rate = f", {total / elapsed:.1f} {unit}s/s" if total and elapsed > 0 else ""
        logger.info("%s: done in %s%s", description, format_duration(elapsed), rate)


# --------------------------------------------------------------------------- Trainer


class TrainerProgressCallback(TrainerCallback):
    """The Trainer's phases as `Progress`: training steps (with loss and learning rate),
    evaluation and prediction batches. Set `label` to name the next evaluation loop."""

    def __init__(self):
        self.training: Progress | None = None
        self.prediction: Progress | None = None
        self.label = "Evaluating"

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training = Progress(state.max_steps, "Training", unit="step", initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training is not None:
            # When this step logs its loss, its progress line waits for it (see on_log).
            self.training.update(state.global_step - self.training.done, defer=control.should_log)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.prediction is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            # Called after each batch: the first update already includes the first batch's time.
            self.prediction = Progress(
                total, self.label, unit="batch", leave=self.training is None, timed_from_first_update=True
            )
        self.prediction.update(1)

    def _end_prediction(self):
        if self.prediction is not None:
            self.prediction.close()
            self.prediction = None

    def on_evaluate(self, args, state, control, **kwargs):
        self._end_prediction()

    def on_predict(self, args, state, control, **kwargs):
        self._end_prediction()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs and self.training is not None:
            self.training.set_postfix(loss=logs.get("loss"), lr=logs.get("learning_rate"))
            self.training.flush()
            return
        if self.training is not None:
            self.training.flush()
        text = f"step {state.global_step}: " + ", ".join(
            f"{key} {format_value(value)}" for key, value in logs.items() if key != "total_flos"
        )
        bar = self.prediction or self.training  # evaluate() logs its metrics before its bar closes
        if bar is not None:
            bar.write(text)
        elif progress_mode() != "off":
            logger.info("%s", text)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training is not None:
            self.training.close()
            self.training = None


def install(trainer) -> TrainerProgressCallback:
    """Replace the Trainer's own progress output (tqdm bars or printed dicts) with `Progress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    callback = TrainerProgressCallback()
    trainer.add_callback(callback)
    return callback
