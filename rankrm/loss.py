"""The K-wise ranking loss of InstructGPT and pair metrics: pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_mask(ranks: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: entry (i, j) is a comparison in which completion i beat completion j (same group, lower rank)."""
    same = group_index[:, None] == group_index[None, :]  # (N, N)
    return same & (ranks[:, None] < ranks[None, :])


def group_losses(rewards, ranks, group_index, num_groups: int, mask=None):
    """Per-group loss (G,): mean over the group's ordered pairs of -log sigmoid(r_w - r_l); and pairs per group (G,).

    Each completion appears once in `rewards`, so each is forwarded once however many pairs it is in.
    Tied completions (equal rank) give no pair. A group with no pair has loss 0 and count 0. An explicit (N, N)
    `mask` of stated comparisons (a partial order, see batching.pair_mask_of) replaces the pairs the ranks imply."""
    mask = pair_mask(ranks, group_index) if mask is None else mask  # (N, N)
    diff = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    nll = torch.where(mask, -F.logsigmoid(diff), torch.zeros_like(diff))
    per_row = nll.sum(dim=1)  # (N,) summed over the losers j of winner i
    sums = rewards.new_zeros(num_groups).index_add(0, group_index, per_row)  # (G,)
    counts = rewards.new_zeros(num_groups).index_add(0, group_index, mask.sum(dim=1).to(rewards.dtype))  # (G,)
    return sums / counts.clamp(min=1), counts


def kwise_loss(rewards, ranks, group_index, mask=None) -> torch.Tensor:
    """The batch loss: the mean over groups (that state a comparison) of each group's mean pair loss."""
    num_groups = int(group_index.max()) + 1
    losses, counts = group_losses(rewards, ranks, group_index, num_groups, mask)
    has_pairs = counts > 0
    return losses[has_pairs].mean()


def group_pair_stats(rewards, ranks, group_index, num_groups: int, mask=None):
    """Per group (G,): correct pairs (a reward tie counts 1/2), number of pairs, summed -log sigmoid(r_w - r_l)."""
    mask = pair_mask(ranks, group_index) if mask is None else mask  # (N, N)
    diff = rewards[:, None] - rewards[None, :]
    correct = (diff > 0).to(rewards.dtype) + 0.5 * (diff == 0).to(rewards.dtype)
    zero = torch.zeros_like(diff)
    per = lambda m: rewards.new_zeros(num_groups).index_add(0, group_index, m.sum(dim=1))  # noqa: E731
    return (per(torch.where(mask, correct, zero)), per(mask.to(rewards.dtype)),
            per(torch.where(mask, -F.logsigmoid(diff), zero)))
