"""Process-level helpers: who writes (the one place that decides the main process), logging.

Works before and after torch.distributed is initialised (torchrun, accelerate launch,
xla_spawn), so data validation and output-dir checks can run early on every rank while
only rank 0 touches the disk.
"""

from __future__ import annotations

import logging
import os


def process_rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("WORLD_SIZE", "1"))


def accelerator_available() -> bool:
    """True when torch can use a GPU-like device (CUDA, ROCm, MPS, XPU, ...) or an XLA device.

    Without one both recipes run on the CPU (which also makes `torchrun` use gloo there)."""
    import torch

    from .xla import on_xla

    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return True
    return on_xla()


def is_main_process() -> bool:
    return process_rank() == 0


def _process_group():
    """torch.distributed when a process group is up; None otherwise (and in the TensorFlow recipe: no torch)."""
    try:
        import torch.distributed as dist
    except ModuleNotFoundError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    dist = _process_group()
    if dist is not None:
        dist.barrier()


def close_process_group() -> None:
    """Wait for every rank, then shut torch.distributed down (a no-op in a single process).

    Left to interpreter exit, the process group's worker threads are torn down in no set
    order, and a rank can abort with "terminate called without an active exception"
    after all its work is done, turning a finished torchrun job into a failed one.
    """
    dist = _process_group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def setup_logging(log_level: str = "passive") -> None:
    """One log format for every script; non-main ranks only report warnings and errors.

    `log_level` is the Trainer's flag: "passive" (the default) means INFO for seqtune's own
    messages and WARNING for transformers and datasets.
    """
    import datasets
    import transformers

    level = logging.INFO
    if log_level and log_level != "passive":
        level = logging.getLevelName(log_level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    if not is_main_process():
        level = logging.WARNING
    # Keep handlers someone else installed (an embedding program, pytest's capture).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logging.getLogger().setLevel(level)
    library_level = level if log_level not in (None, "", "passive") else max(level, logging.WARNING)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity(library_level)
    logging.getLogger("accelerate").setLevel(library_level)  # its per-file "saved ..." lines at each checkpoint
    logging.getLogger("seqtune").setLevel(level)
