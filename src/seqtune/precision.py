"""Mixed precision and numerical safety, shared by both training loops
(--fp16 / --bf16 themselves are checked with the other flags, in `seqtune.arguments`).

- `warn_fp16_overflow`: T5-family models overflow in fp16; say so before training starts.
- `check_loss_is_finite`: the non-finite-loss guard both loops call after every backward
  pass. When the loss is NaN or inf on any process, every process stops at that step with
  `NonFiniteLossError` (a `UserError`: one message, exit code 2), before the optimizer
  applies the bad gradients, so nothing after the last good checkpoint is written.
"""

from __future__ import annotations

import logging
import math

from .errors import UserError
from .modeling import PREFIX_MODEL_TYPES

logger = logging.getLogger(__name__)

# The T5 family (the models pre-trained with a task prefix): their activations outgrow fp16's range.
FP16_OVERFLOW_MODEL_TYPES = frozenset(PREFIX_MODEL_TYPES)


def mixed_precision_name(fp16: bool, bf16: bool) -> str:
    """Accelerate's name for the precision: "fp16", "bf16" or "no"."""
    return "fp16" if fp16 else "bf16" if bf16 else "no"


def overflows_in_fp16(model_type: str | None) -> bool:
    return model_type in FP16_OVERFLOW_MODEL_TYPES


def warn_fp16_overflow(model_type: str | None, mixed_precision: str) -> bool:
    """Log a warning (and return True) when fp16 is asked for with a T5-family model."""
    if mixed_precision != "fp16" or not overflows_in_fp16(model_type):
        return False
    logger.warning(
        "--fp16 with a %s model: T5-family models are known to overflow in fp16 (the loss becomes NaN). "
        "Prefer --bf16 (CPUs, Ampere or newer GPUs) or full precision (drop --fp16). Training stops at the "
        "first non-finite loss.",
        model_type,
    )
    return True


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf; training stopped at that step."""


def likely_cause(mixed_precision: str, model_type: str | None, learning_rate: float | None) -> str:
    """What most probably made the loss non-finite, and the fix."""
    if mixed_precision == "fp16" and overflows_in_fp16(model_type):
        return (
            f"fp16 overflow: {model_type} (T5-family) models overflow in fp16. "
            "Fix: train with --bf16 (CPUs, Ampere or newer GPUs) or in fp32 (drop --fp16)"
        )
    if mixed_precision == "fp16":
        return "fp16 overflow. Fix: train with --bf16 or in fp32 (drop --fp16), or lower --learning_rate"
    rate = f" ({learning_rate:g})" if learning_rate is not None else ""
    return (
        f"the learning rate{rate} is too high for this model, or an example makes it diverge. "
        "Fix: lower --learning_rate, add learning-rate warm-up steps, or keep gradient clipping (--max_grad_norm 1.0)"
    )


def non_finite_loss_message(
    step: int,
    value: float | None,
    *,
    mixed_precision: str,
    model_type: str | None,
    learning_rate: float | None,
    last_checkpoint: str | None,
) -> str:
    what = (
        f"the training loss is {value}"
        if value is not None and not math.isfinite(value)
        else ("the training loss is not finite (NaN or inf) on another process")
    )
    kept = (
        f"The last good checkpoint, {last_checkpoint}, is kept: "
        "run the same command again with the fix to resume from it."
        if last_checkpoint
        else "No checkpoint was written before it."
    )
    return (
        f"{what} at step {step}; training stopped there. Likely cause: "
        f"{likely_cause(mixed_precision, model_type, learning_rate)}. {kept}"
    )


def check_loss_is_finite(
    loss,
    step: int,
    *,
    mixed_precision: str,
    model_type: str | None,
    learning_rate: float | None,
    output_dir: str | None,
) -> None:
    """Raise `NonFiniteLossError` on every process when the loss of any process is NaN or inf.

    Call it on every process after each backward pass (before the optimizer step): under
    torch.distributed the verdict is all-reduced, so all processes stop at the same step.
    """
    import torch
    import torch.distributed as dist

    if loss.device.type == "xla":
        return  # reading the loss back every step would cut the XLA graph (transformers skips it there too)
    local = loss.detach().float()
    bad = (~torch.isfinite(local)).any().to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if not bad.item():
        return
    from .checkpoints import newest_checkpoint

    value = local.reshape(-1)[0].item() if local.numel() else None
    last = newest_checkpoint(output_dir) if output_dir else None
    raise NonFiniteLossError(
        non_finite_loss_message(
            step,
            value,
            mixed_precision=mixed_precision,
            model_type=model_type,
            learning_rate=learning_rate,
            last_checkpoint=last,
        )
    )


__all__ = [
    "FP16_OVERFLOW_MODEL_TYPES",
    "NonFiniteLossError",
    "check_loss_is_finite",
    "mixed_precision_name",
    "warn_fp16_overflow",
]
