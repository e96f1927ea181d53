"""The loss of an attributes head (--attributes): the masked MSE of outputs 1..A on the ratings, plus, with
--ranking-loss-weight > 0, the ranking loss of the reward, on the same backbone in the same forward pass.

What the ranking trains: with reward weights (--attribute-weights, or the mean when the ranking is off) output 0
is defined as sum_a w_a * output_a (heads.tie_reward_row re-sets its row after every step), so the ranking loss
is applied to that weighted sum of the attribute outputs and its gradient reaches the attribute rows; without
weights output 0 is a row of its own, trained by the ranking alone, and the attributes by their ratings alone.

The loss of a micro-batch: ranking_weight * K-wise + attribute_weight * masked MSE, each a mean over the step's
groups (group_weight 1/G), so the update does not depend on the micro-batching. The statistics reported per group
(the step's loss) are the same weighted sum; pairs and accuracy are the ranking's."""

from __future__ import annotations

import logging

import torch

from rankrm.loss import PAIRWISE, GroupStats, Objective, StepLoss, objective_loss
from rankrm.modeling.heads import HeadSpec
from rankrm.modeling.ratings import attribute_targets, choose_attributes, parse_weights, reward_weights
from rankrm.regression import regression_loss, regression_stats

log = logging.getLogger(__name__)


def attribute_head(asked: str, weights: str, ranking_weight: float, rated: dict[str, int]):
    """The head of an --attributes run: the attributes chosen from what the training data rates (rated: name ->
    ratings), and the reward's weights (--attribute-weights; without them the mean when the ranking is off, else
    output 0 untied)."""
    names = choose_attributes(asked, rated)
    given = parse_weights(weights)
    head = HeadSpec("attributes", names, reward_weights(names, given) if given or not ranking_weight else ())
    reward = (
        " + ".join(f"{w:g} * {n}" for n, w in zip(head.names, head.weights) if w) or "0"
        if head.weights
        else "output 0, trained by the ranking loss"
    )
    log.info(f"attributes head: {', '.join(names)}; the reward (output 0) = {reward}")
    return head


def attribute_reward(outputs: torch.Tensor, weights) -> torch.Tensor:
    """(N,) the reward the ranking trains: sum_a w_a * output_a with weights (exactly output 0 once its row is
    tied), else output 0."""
    if not weights:
        return outputs[:, 0]
    w = torch.tensor(weights, dtype=outputs.dtype, device=outputs.device)  # (A,)
    return outputs[:, 1:] @ w  # (N, A) @ (A,) -> (N,)


def attribute_loss(
    outputs: torch.Tensor,
    batch,
    groups,
    names,
    weights,
    group_weight: float,
    attribute_weight: float = 1.0,
    ranking_weight: float = 1.0,
    ranking: Objective = PAIRWISE,
) -> StepLoss:
    """The loss to backpropagate and the per-group statistics of one micro-batch of `groups` (TokenizedGroups, in
    the batch's order); outputs (N, 1 + A) from batch_outputs; ranking: the run's ranking objective
    (loss.objective_loss: pairwise or Plackett-Luce, margins, centering) on the reward."""
    n = len(groups)
    targets, mask = attribute_targets(groups, names)  # (N, A) each
    rs = regression_stats(outputs[:, 1:], targets.to(outputs.device), mask.to(outputs.device), batch.group_index, n)
    reward = attribute_reward(outputs, weights)  # (N,)
    b = batch
    step = objective_loss(reward, b.ranks, b.group_index, n, b.pair_counts, b.pair_margins, ranking, group_weight)
    stats = step.stats
    loss = attribute_weight * regression_loss(rs, group_weight=group_weight)
    if ranking_weight:
        loss = loss + ranking_weight * step.loss
    reported = ranking_weight * stats.loss.detach() + attribute_weight * rs.loss.detach()  # (G,)
    return StepLoss(GroupStats(reported, stats.pairs, stats.correct, stats.nll), loss, step.center)
