"""The K-wise ranking loss of InstructGPT and the pair statistics, in one pass: pure functions of tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pair_mask(ranks: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: entry (i, j) is a comparison in which completion i beat completion j (same group, lower rank)."""
    same = group_index[:, None] == group_index[None, :]  # (N, N)
    return same & (ranks[:, None] < ranks[None, :])


@dataclass
class GroupStats:
    """Per group (G,): the loss (mean over its pairs of -log sigmoid(r_w - r_l)), its number of pairs, the pairs
    ordered right (a reward tie counts 1/2) and the summed -log sigmoid(r_w - r_l)."""

    loss: torch.Tensor
    pairs: torch.Tensor
    correct: torch.Tensor
    nll: torch.Tensor


def group_stats(rewards, ranks, group_index, num_groups: int, mask=None) -> GroupStats:
    """Each group's loss and pair statistics from one (N, N) pass over the rewards.

    Each completion appears once in `rewards`, so each is forwarded once however many pairs it is in. Tied
    completions (equal rank) give no pair; a group with no pair has loss 0 and count 0. An explicit (N, N) `mask` of
    stated comparisons (a partial order, batch.stated_pair_mask) replaces the pairs the ranks imply."""
    mask = pair_mask(ranks, group_index) if mask is None else mask  # (N, N)
    diff = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    zero = torch.zeros_like(diff)
    nll = torch.where(mask, -F.logsigmoid(diff), zero)  # (N, N)
    right = torch.where(mask, (diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype), zero)  # (N, N)

    def per_group(m: torch.Tensor) -> torch.Tensor:  # (N, N) summed over each winner's losers, then per group
        return rewards.new_zeros(num_groups).index_add(0, group_index, m.sum(dim=1))  # (G,)

    pairs, nll_sum = per_group(mask.to(rewards.dtype)), per_group(nll)
    return GroupStats(nll_sum / pairs.clamp(min=1), pairs, per_group(right).detach(), nll_sum.detach())


def kwise_loss(stats: GroupStats, group_weight: float | None = None) -> torch.Tensor:
    """The batch loss: the mean over groups (that state a comparison) of each group's mean pair loss.

    With group_weight w: the sum of w * each group's loss, this batch's share of a step whose loss is the mean over
    more groups than one pass holds (w = 1/G for a step of G groups)."""
    if group_weight is not None:
        return stats.loss.sum() * group_weight
    return stats.loss[stats.pairs > 0].mean()
