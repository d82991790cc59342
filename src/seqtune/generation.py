"""Evaluation and prediction with generation, the fast way: the one path of both recipes
and `seqtune summarize`.

- One encoder pass per batch serves both the teacher-forced loss and `generate` (the
  Hugging Face scripts run the encoder twice: once in `generate`, once for the loss).
- Examples are generated in windows of input order, each window sorted by length, so that
  batches hold inputs of similar length (little padding) while predictions can still be
  written as they come, in input order: memory stays flat in the number of examples
  (`generate_in_input_order`; `predict_to_file` streams them to generated_predictions.txt).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from .metrics import Scorer
from .outputs import PREDICTIONS_FILE, write_predictions

logger = logging.getLogger(__name__)

# Examples per window: sorting needs a window, streaming needs it bounded. Large enough that
# batches inside it are well sorted, small enough that its predictions are a few MB.
PREDICTION_WINDOW = 2048


# Tensors this large or larger are mapped from the OS and given back when freed (glibc's default
# threshold moves up to 32 MB after the first large free, and then the heap keeps them).
LARGE_ALLOCATION_BYTES = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def return_large_buffers_to_os() -> bool:
    """On a CPU with glibc: give the memory of large freed tensors back to the OS at once.

    Generating on a CPU allocates and frees attention tensors of a few to a few dozen MB per
    batch; glibc's heap keeps them and fragments, so the peak RSS of a long prediction crept up
    with the number of batches (about +10% for 10x the examples in the benchmark). With a fixed
    mapping threshold it stays flat. A no-op elsewhere (GPU tensors do not come from malloc).
    Returns whether the setting was made."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    except (OSError, AttributeError):
        return False


def _no_grad(function: Callable) -> Callable:
    """torch.no_grad, with torch imported at the call: the TensorFlow recipe uses this module's
    ordering and totals in an environment without torch."""

    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return without_gradients


@_no_grad
def generate_with_loss(model, batch: dict, generation: dict, with_loss: bool = True):
    """Generated ids and, when the batch has labels, per-example (summed loss, tokens) rows.

    `model` is the unwrapped model (it must have `get_encoder` and `generate`).
    """
    from .losses import example_loss_sums

    attention_mask = batch.get("attention_mask")
    encoder_outputs = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=attention_mask, return_dict=True)
    sums = None
    labels = batch.get("labels")
    if with_loss and labels is not None:
        # Before generate: beam search expands encoder_outputs in place.
        logits = model(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            labels=labels,
            decoder_input_ids=batch.get("decoder_input_ids"),
        ).logits
        sums = example_loss_sums(logits, labels)
    generation = {key: value for key, value in generation.items() if value is not None}
    generated = model.generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, **generation)
    return generated, sums


def length_sorted(dataset):
    """The data set longest example first (for evaluation, where order does not matter)."""
    from .batching import token_lengths

    lengths = token_lengths(dataset)
    return dataset.select(sorted(range(len(lengths)), key=lambda index: -lengths[index]))


def length_sorted_windows(lengths: list[int], window: int | None = None):
    """Yield the indices of each window of consecutive examples, longest first within the window.

    The longest batch comes first, so a batch too large for memory fails at once, not at the end.
    """
    window = window or PREDICTION_WINDOW
    for start in range(0, len(lengths), window):
        indices = range(start, min(start + window, len(lengths)))
        yield sorted(indices, key=lambda index: -lengths[index])


def restore_order(sorted_indices: list[int], rows: list) -> list:
    """Rows produced in `sorted_indices` order, put back in input order (ascending index)."""
    by_index = dict(zip(sorted_indices, rows))
    return [by_index[index] for index in sorted(sorted_indices)]


def generate_in_input_order(
    lengths: Sequence[int], generate_sorted: Callable[[list[int]], Iterable], window: int | None = None
) -> Iterator:
    """Yield what `generate_sorted(indices)` returns for each example, in input order.

    `generate_sorted` gets the indices of one window, longest first, and returns one result per
    index in that order (batching consecutive indices keeps similar lengths together).
    """
    for indices in length_sorted_windows(lengths, window):
        yield from restore_order(indices, list(generate_sorted(indices)))


def sorted_windows(source) -> Iterator[tuple[list[int], object]]:
    """(indices longest first, the window's examples in that order) for each window of consecutive
    examples of `source`: a tokenized data set, or a validation/test split read as a stream
    (`seqtune.streaming.EvaluationStream`, whose windows are tokenized as they are read and held one
    at a time). The examples come as a `datasets.Dataset`, for the recipes' loaders."""
    if hasattr(source, "windows"):
        from datasets import Dataset

        for window in source.windows():
            lengths = [len(ids) for ids in window["input_ids"]]
            indices = next(length_sorted_windows(lengths, window=len(lengths)))
            yield indices, Dataset.from_dict(dict(window)).select(indices)
        return
    from .batching import token_lengths

    for indices in length_sorted_windows(token_lengths(source)):
        yield indices, source.select(indices)


def generate_in_windows(source, generate_window: Callable, totals: GenerationTotals) -> Iterator[str]:
    """The decoded predictions of every example of `source` (see `sorted_windows`), in input order.

    `generate_window(subset, totals)` generates for `subset` (a length-sorted window), adds its
    scores to `totals` (a GenerationTotals), and returns the decoded texts (None: not generated).
    """
    for indices, subset in sorted_windows(source):
        generated = generate_window(subset, totals)
        if generated is not None:
            yield from restore_order(indices, list(generated))


def predict_to_file(source, generate_window: Callable, output_dir: str, scorer: Scorer, on_cpu: bool) -> dict:
    """Generate for every example of `source` (a tokenized data set or a streamed split) and write
    generated_predictions.txt in input order as they come; return the predict_* metrics."""
    if on_cpu:
        return_large_buffers_to_os()  # flat peak memory however many examples
    totals = GenerationTotals(scorer)
    count = write_predictions(output_dir, generate_in_windows(source, generate_window, totals))  # main process
    logger.info("Wrote %d predictions to %s.", count, os.path.join(output_dir, PREDICTIONS_FILE))
    return totals.metrics("predict")


def evaluate_in_windows(
    source, generate_window: Callable, scorer: Scorer, prefix: str, on_cpu: bool, loss_digits: int | None = 4
) -> dict:
    """The {prefix}_* metrics over every example of `source`, window by window (nothing kept but the totals)."""
    if on_cpu:
        return_large_buffers_to_os()
    totals = GenerationTotals(scorer)
    for _ in generate_in_windows(source, generate_window, totals):
        pass
    return totals.metrics(prefix, loss_digits)


class GenerationTotals:
    """A task's scores (a seqtune.metrics.Scorer), generation length and per-example losses accumulated
    over batches."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.losses, self.batches, self.started = scorer, [], 0, time.time()
        self.unscored = 0  # examples whose loss alone was computed (the Trainer without --predict_with_generate)

    def metrics(self, prefix: str, loss_digits: int | None = 4) -> dict:
        """{prefix}_loss (rounded to `loss_digits`; None: as the Trainer's evaluate reports it, not rounded),
        the scores, gen_len, runtime, speeds and samples."""
        metrics = self.scorer.result() if self.scorer.count or not self.unscored else {}
        loss = self.mean_loss()
        metrics["loss"] = round(loss, loss_digits) if loss_digits is not None else loss
        runtime = time.time() - self.started
        count = self.scorer.count + self.unscored
        metrics.update(
            runtime=round(runtime, 4),
            samples_per_second=round(count / max(runtime, 1e-9), 3),
            steps_per_second=round(self.batches / max(runtime, 1e-9), 3),
            samples=count,
        )
        return {f"{prefix}_{key}": value for key, value in metrics.items()}

    def mean_loss(self) -> float:
        """The loss over every target token of `losses` (rows of per-example summed loss and token count)."""
        if self.losses and not hasattr(self.losses[0], "cpu"):  # numpy rows (the TensorFlow recipe)
            import numpy as np

            totals = np.concatenate([np.asarray(rows, dtype=np.float64) for rows in self.losses]).sum(axis=0)
            return float(totals[0] / max(totals[1], 1.0))
        from .losses import mean_token_loss

        return mean_token_loss(self.losses)
