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


def predict_to_file(dataset, generate_window: Callable, output_dir: str, scorer: Scorer, on_cpu: bool) -> dict:
    """Generate for every example of a tokenized `dataset` and stream generated_predictions.txt in
    input order; return the predict_* metrics.

    `generate_window(subset, totals)` generates for `subset` (a length-sorted window of the
    data set), adds its scores to `totals` (a GenerationTotals), and returns the decoded texts.
    """
    from .batching import token_lengths

    if on_cpu:
        return_large_buffers_to_os()  # flat peak memory however many examples
    totals = GenerationTotals(scorer)
    predictions = generate_in_input_order(
        token_lengths(dataset), lambda indices: generate_window(dataset.select(indices), totals)
    )
    count = write_predictions(output_dir, predictions)  # every process generates; the main one writes
    logger.info("Wrote %d predictions to %s.", count, os.path.join(output_dir, PREDICTIONS_FILE))
    return totals.metrics("predict")


class GenerationTotals:
    """A task's scores (a seqtune.metrics.Scorer), generation length and per-example losses accumulated
    over batches."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.losses, self.batches, self.started = scorer, [], 0, time.time()

    def metrics(self, prefix: str) -> dict:
        metrics = self.scorer.result()
        metrics["loss"] = round(self.mean_loss(), 4)
        runtime = time.time() - self.started
        count = self.scorer.count
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
