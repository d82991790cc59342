"""The sequence-to-sequence loss as sums over target tokens, for both loops.

Averaging per-batch mean losses makes a number that depends on how examples were split into
batches and processes (and, in distributed evaluation, on the examples repeated to fill the
last batch). Sums over target tokens do not: add them up, divide by the token count.
Labels of -100 are padding; the logits and labels of a seq2seq model are aligned (no shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_summed_loss(logits: torch.Tensor, labels: torch.Tensor, per_example: bool = False) -> torch.Tensor:
    """Cross-entropy summed over the target tokens, in fp32: one number, or one per example."""
    losses = F.cross_entropy(
        logits.float().transpose(1, 2), labels.to(logits.device), ignore_index=-100, reduction="none"
    )
    return losses.sum(dim=-1) if per_example else losses.sum()


def example_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch, 2]: each example's summed token loss and its number of target tokens.

    Gather these per example (`accelerator.gather_for_metrics` drops repeated examples) and
    pass them to `mean_token_loss`.
    """
    counts = labels.ne(-100).sum(dim=-1).to(device=logits.device, dtype=torch.float32)
    return torch.stack([token_summed_loss(logits, labels, per_example=True), counts], dim=-1)


def mean_token_loss(example_sums: list[torch.Tensor]) -> float:
    """The loss over every target token of every example (from `example_loss_sums` rows)."""
    if not example_sums:
        return float("nan")
    totals = torch.cat([sums.float().cpu() for sums in example_sums]).sum(dim=0)
    return (totals[0] / totals[1].clamp(min=1)).item()
