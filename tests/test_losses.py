"""seqtune.losses: token-summed cross-entropy, per-example sums and the split-independent mean."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqtune.losses import example_loss_sums, mean_token_loss, token_summed_loss

VOCAB = 7


def make_rows(lengths, seed=0):
    """One (logits [len, VOCAB], labels [len]) pair per example, of the given target lengths."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, VOCAB, generator=generator), torch.randint(0, VOCAB, (n,), generator=generator))
        for n in lengths
    ]


def pad_batch(rows, extra=0):
    """Pad a batch to its longest example (+ extra): labels with -100, logits with large junk values."""
    width = max(len(labels) for _, labels in rows) + extra
    logits = torch.full((len(rows), width, VOCAB), 50.0)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row_logits, row_labels) in enumerate(rows):
        logits[i, : len(row_labels)] = row_logits
        labels[i, : len(row_labels)] = row_labels
    return logits, labels


def reference_mean(rows):
    logits = torch.cat([row_logits for row_logits, _ in rows])
    labels = torch.cat([row_labels for _, row_labels in rows])
    return F.cross_entropy(logits, labels).item()


def test_token_summed_loss_matches_cross_entropy_sum_ignoring_padding():
    logits, labels = pad_batch(make_rows([3, 5, 1]))
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum")
    assert torch.allclose(token_summed_loss(logits, labels), expected)
    # The padded positions carry large logits: counting them would change the sum.
    unmasked = F.cross_entropy(logits.reshape(-1, VOCAB), labels.clamp(min=0).reshape(-1), reduction="sum")
    assert not torch.allclose(token_summed_loss(logits, labels), unmasked)


def test_token_summed_loss_per_example():
    rows = make_rows([3, 5, 1])
    logits, labels = pad_batch(rows)
    per_example = token_summed_loss(logits, labels, per_example=True)
    assert per_example.shape == (3,)
    for i, (row_logits, row_labels) in enumerate(rows):
        expected = F.cross_entropy(row_logits, row_labels, reduction="sum")
        assert torch.allclose(per_example[i], expected), i
    assert torch.allclose(per_example.sum(), token_summed_loss(logits, labels))


def test_token_summed_loss_is_computed_in_fp32():
    logits, labels = pad_batch(make_rows([4, 2]))
    loss = token_summed_loss(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(
        logits.to(torch.bfloat16).float().reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert torch.allclose(loss, expected)


def test_example_loss_sums_shape_and_counts():
    rows = make_rows([3, 5, 1])
    logits, labels = pad_batch(rows, extra=2)
    labels[2, :] = -100  # an example with no target token at all
    sums = example_loss_sums(logits, labels)
    assert sums.shape == (3, 2) and sums.dtype == torch.float32
    assert sums[:, 1].tolist() == [3.0, 5.0, 0.0]
    assert torch.allclose(sums[:, 0], token_summed_loss(logits, labels, per_example=True))
    assert sums[2, 0].item() == 0.0


@pytest.mark.parametrize("splits", [([0, 1], [2, 3, 4]), ([0], [1, 2, 3], [4]), ([0, 1, 2, 3, 4],)])
def test_mean_token_loss_is_independent_of_batching(splits):
    rows = make_rows([2, 9, 1, 4, 6], seed=1)
    gathered = [example_loss_sums(*pad_batch([rows[i] for i in batch], extra=len(batch))) for batch in splits]
    assert mean_token_loss(gathered) == pytest.approx(reference_mean(rows), rel=1e-6)


def test_mean_token_loss_differs_from_averaging_batch_means():
    """The reason the module exists: the mean of per-batch means depends on the split."""
    rows = make_rows([2, 9, 1, 4, 6], seed=1)
    one_way = [example_loss_sums(*pad_batch(rows[:2])), example_loss_sums(*pad_batch(rows[2:]))]
    other_way = [example_loss_sums(*pad_batch(rows[:1])), example_loss_sums(*pad_batch(rows[1:]))]
    assert mean_token_loss(one_way) == pytest.approx(mean_token_loss(other_way), rel=1e-6)
    batch_means = [reference_mean(rows[:2]), reference_mean(rows[2:])]
    other_means = [reference_mean(rows[:1]), reference_mean(rows[1:])]
    assert sum(batch_means) / 2 != pytest.approx(sum(other_means) / 2, rel=1e-3)


def test_mean_token_loss_of_nothing_is_nan():
    assert math.isnan(mean_token_loss([]))
