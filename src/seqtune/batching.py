"""Batching order: length-grouped training batches (in memory and within a stream's blocks), global batch size."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def torch_sampler_base():
    try:
        from torch.utils.data import Sampler
    except ModuleNotFoundError:  # the TensorFlow recipe's stack (.venv-tf) has no torch and never samples
        return object
    return Sampler


def global_batch_size(per_device: int, processes: int, accumulation: int) -> int:
    """Examples per optimizer step over all processes: also the size of a length group."""
    return per_device * processes * accumulation


def accumulation_for(global_batch: int, per_device: int, processes: int) -> int:
    """Gradient accumulation steps giving `global_batch` examples per optimizer step on `processes` processes;
    a UserError when it does not divide evenly."""
    from .errors import UserError

    per_pass = per_device * processes
    if global_batch % per_pass:
        raise UserError(
            f"--global_batch_size {global_batch} is not a multiple of --per_device_train_batch_size {per_device} x "
            f"{processes} process(es) = {per_pass}. Fix: choose a per-device batch size (or a number of processes) "
            f"that divides it."
        )
    return global_batch // per_pass


def apply_global_batch_size(args, processes: int) -> None:
    """--global_batch_size (both PyTorch recipes): the gradient accumulation that gives it on this many processes
    (logged when it changes --gradient_accumulation_steps), so that a run resumed on another number keeps its
    global batch."""
    if args.global_batch_size is None:
        return
    accumulation = accumulation_for(args.global_batch_size, args.per_device_train_batch_size, processes)
    if accumulation != args.gradient_accumulation_steps:
        logger.info(
            "--global_batch_size %d on %d process(es) of %d examples: gradient accumulation set to %d steps "
            "(--gradient_accumulation_steps was %d).",
            args.global_batch_size,
            processes,
            args.per_device_train_batch_size,
            accumulation,
            args.gradient_accumulation_steps,
        )
    args.gradient_accumulation_steps = accumulation


def log_resume_layout(saved: tuple, here: tuple, where: str) -> None:
    """A checkpoint resumed on another (processes, accumulation steps, global batch) than it was written with
    (elastic resume): said, and a different global batch warned about (the data order and the loss curve then
    differ from the uninterrupted run's). `where`: the position training resumes at, in words."""
    if saved[0] is None or tuple(saved) == tuple(here):
        return
    logger.info(
        "The checkpoint was written on %d process(es) with %d accumulation step(s); this run has %d and %d: "
        "resuming %s.",
        saved[0],
        saved[1],
        here[0],
        here[1],
        where,
    )
    if saved[2] != here[2]:
        logger.warning(
            "The checkpoint's global batch was %d examples per step, this run's is %d: the data order and the "
            "loss curve differ from the uninterrupted run's. Fix: pass --global_batch_size %d.",
            saved[2],
            here[2],
            saved[2],
        )


def token_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Each example's number of tokens, read from the Arrow column (no rows are decoded)."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")[column]).to_pylist()


class LengthGroupedSampler(torch_sampler_base()):
    """Training order that puts examples of similar length in the same batch (less padding).

    The batches are transformers' length grouping (random mega-batches of 50 batches, sorted
    inside), but their order is shuffled: sorted mega-batches alone walk from the longest to the
    shortest documents every 50 steps, a curriculum that ends training on the shortest ones and
    cost the benchmark's model a point of ROUGE against random order. Shuffling whole batches
    keeps every batch's padding the same. The longest batch still comes first (an out-of-memory
    shows at once), and a last, partial batch stays last.

    The generator is seeded with seed + epoch only: both loops get the same order for the same
    seed, a resumed run gets the order of the epoch it resumes in, and `group_size` (the global
    batch: per-device x processes x accumulation) keeps a distributed step's examples the same
    as one process's.
    """

    def __init__(self, lengths: list[int], group_size: int, seed: int):
        self.lengths = lengths
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Accelerate's data loader each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.group_size, generator=generator)
        size = self.group_size
        full = len(indices) // size
        # `or [[]]`: fewer examples than one batch leave no full batch to keep first
        first, *rest = [indices[start * size : (start + 1) * size] for start in range(full)] or [[]]
        rest = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
        return iter([index for batch in [first, *rest] for index in batch] + indices[full * size :])
