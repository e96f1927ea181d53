"""The rated-attribute objective: a masked mean squared error between a model's attribute outputs and the ratings,
per group like the ranking loss, so that a step's update is the mean over its groups however it is micro-batched.

A rating missing for a completion (an annotator did not rate that attribute) is masked: it adds neither error nor
weight. The targets of missing ratings may hold anything (NaN included): they are never read into the loss or its
gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RegressionStats:
    """Per group (G,): the loss (the mean over its observed ratings of the squared error) and how many ratings it
    has; per attribute (A,): the summed squared error and the ratings observed, for logging (detached)."""

    loss: torch.Tensor
    observed: torch.Tensor
    squared_error: torch.Tensor
    count: torch.Tensor


def squared_errors(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, A) squared error of each observed rating, 0 where the rating is missing (no NaN reaches the gradient:
    the missing targets are replaced before the subtraction, not multiplied by 0 after it)."""
    zero = torch.zeros_like(outputs)
    filled = torch.where(mask, targets.to(outputs.dtype), zero)  # (N, A): a missing (maybe NaN) target -> 0
    return torch.where(mask, (outputs - filled) ** 2, zero)  # (N, A)


def regression_stats(outputs, targets, mask, group_index, num_groups: int) -> RegressionStats:
    """Each group's masked MSE over its completions' observed ratings; a group without any has loss 0 and count 0.

    outputs (N, A): the model's attribute predictions; targets (N, A): the ratings; mask (N, A) bool: which ratings
    were given; group_index (N,): each completion's group."""
    se = squared_errors(outputs, targets, mask)  # (N, A)
    m = mask.to(outputs.dtype)  # (N, A)
    per_group = outputs.new_zeros(num_groups)
    sums = per_group.index_add(0, group_index, se.sum(dim=1))  # (G,)
    observed = per_group.index_add(0, group_index, m.sum(dim=1))  # (G,)
    return RegressionStats(sums / observed.clamp(min=1), observed, se.detach().sum(dim=0), m.sum(dim=0))


def regression_loss(stats: RegressionStats, group_weight: float | None = None) -> torch.Tensor:
    """The batch loss: the mean over groups (that have a rating) of each group's MSE; with group_weight w, the sum
    of w * each group's MSE (this pass's share of a step over 1/w groups, as ranking's kwise_loss)."""
    if group_weight is not None:
        return stats.loss.sum() * group_weight
    return stats.loss[stats.observed > 0].mean()


def masked_mse(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean squared error over the observed ratings only (a plain function for users and tests); NaN when no
    rating is observed, as a mean over nothing is."""
    return squared_errors(outputs, targets, mask).sum() / mask.sum()
