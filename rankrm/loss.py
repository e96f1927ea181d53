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
    """Per group (G,): the loss (the count-weighted mean over its stated comparisons of -log sigmoid(r_w - r_l)),
    its number of comparisons (votes: a pair stated n times counts n), the votes ordered right (a reward tie counts
    1/2) and the summed -log sigmoid(r_w - r_l) over votes."""

    loss: torch.Tensor
    pairs: torch.Tensor
    correct: torch.Tensor
    nll: torch.Tensor


def group_stats(rewards, ranks, group_index, num_groups: int, counts=None) -> GroupStats:
    """Each group's loss and pair statistics from one (N, N) pass over the rewards.

    Each completion appears once in `rewards`, so each is forwarded once however many pairs it is in. Tied
    completions (equal rank) give no pair; a group with no pair has loss 0 and count 0. An explicit (N, N) `counts`
    (batch.stated_pair_counts: how many times i was stated to beat j, or a bool mask of stated comparisons) replaces
    the pairs the ranks imply: under Bradley-Terry every vote is one observation, so a pair stated 2 times one way
    and once the other pulls sigmoid(r_a - r_b) towards 2/3."""
    weight = pair_mask(ranks, group_index) if counts is None else counts  # (N, N)
    weight = weight.to(rewards.dtype)  # (N, N): votes for i over j
    stated = weight > 0  # (N, N)
    diff = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    zero = torch.zeros_like(diff)
    nll = torch.where(stated, -F.logsigmoid(diff), zero) * weight  # (N, N)
    right = torch.where(stated, (diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype), zero) * weight

    def per_group(m: torch.Tensor) -> torch.Tensor:  # (N, N) summed over each winner's losers, then per group
        return rewards.new_zeros(num_groups).index_add(0, group_index, m.sum(dim=1))  # (G,)

    pairs, nll_sum = per_group(weight), per_group(nll)
    return GroupStats(nll_sum / pairs.clamp(min=1), pairs, per_group(right).detach(), nll_sum.detach())


def kwise_loss(stats: GroupStats, group_weight: float | None = None) -> torch.Tensor:
    """The batch loss: the mean over groups (that state a comparison) of each group's mean pair loss.

    With group_weight w: the sum of w * each group's loss, this batch's share of a step whose loss is the mean over
    more groups than one pass holds (w = 1/G for a step of G groups)."""
    if group_weight is not None:
        return stats.loss.sum() * group_weight
    return stats.loss[stats.pairs > 0].mean()
