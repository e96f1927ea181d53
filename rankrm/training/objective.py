"""The training loss of each head kind (modeling/heads.py), on one micro-batch's outputs.

- scalar: the K-wise loss of output 0 (loss.py), exactly as before heads existed.
- ensemble (--ensemble M): member m's loss is the K-wise loss of output m with each group weighted by its own
  bootstrap weight (Poisson(1) per prompt and member, drawn once from the run's seed); the step's loss is the mean
  over members, so the shared backbone sees one loss of the usual scale. Output 0 (the mean row) takes no gradient:
  heads.tie_reward_row re-sets it after every step.
- attributes (--attributes): the masked MSE of outputs 1..A plus the ranking loss of the reward
  (training/attributes.py; loop.micro_loss calls it with the batch's groups, whose ratings it reads).
- odin (--length-head, Chen et al. 2024): the K-wise loss of r_q + r_l, plus
  length_weight * (|rho(r_q, L)| - rho(r_l, L)) over the micro-batch's completions (rho: Pearson's correlation,
  L: the completion's tokens) plus orthogonal_weight * |w_q . w_l| on the two head rows.

The ranking part of each is the run's ranking objective (loss.Objective: pairwise or Plackett-Luce, margins,
centering; loss.objective_loss). Each returns a loss.StepLoss: the loss to backpropagate, the GroupStats the step
reports, the centering term reported apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankrm.loss import PAIRWISE, Objective, StepLoss, center_term, objective_loss, pair_mask
from rankrm.modeling.heads import HeadSpec
from rankrm.training.attributes import attribute_loss


@dataclass(frozen=True)
class HeadLoss:
    """What the loss needs beyond the batch: the ranking objective, the head, the ensemble's bootstrap weights,
    ODIN's two weights."""

    ranking: Objective = PAIRWISE
    head: HeadSpec = HeadSpec()
    bootstrap: torch.Tensor | None = None  # (units, M) float: each training unit's weight in each member's loss
    length_weight: float = 1.0
    orthogonal_weight: float = 1.0
    attribute_weight: float = 1.0  # attributes: the masked MSE's weight (training/attributes.py)
    ranking_weight: float = 1.0  # attributes: the ranking loss's weight (0: the regression alone)


def bootstrap_weights(units: int, members: int, seed: int) -> torch.Tensor:
    """(units, members) Poisson(1) counts: how many times each prompt (training unit) is drawn into each member's
    resample (the online bootstrap of Oza and Russell), the same for every process and every run of this seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(units, members, dtype=torch.float64), generator=gen).float()


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of two (N,) tensors; 0 where either is constant (no correlation to measure)."""
    xc, yc = x - x.mean(), y - y.mean()
    den = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt()
    return (xc * yc).sum() / den if float(den.detach()) > 0 else x.sum() * 0.0


def length_loss(quality: torch.Tensor, length_out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ODIN's length loss |rho(r_q, L)| - rho(r_l, L): the quality reward uncorrelated with length, the length
    head correlated with it (its minimum, -1, when r_q ignores length and r_l follows it exactly)."""
    lengths = lengths.to(quality.dtype)
    return pearson(quality, lengths).abs() - pearson(length_out, lengths)


def orthogonal_loss(weight: torch.Tensor) -> torch.Tensor:
    """ODIN's |w_q . w_l| on the head's two rows (2, H): the two heads read different directions of the hidden
    state."""
    return (weight[0] * weight[1]).sum().abs()


def ranking_loss(obj: HeadLoss, reward: torch.Tensor, batch, n_groups: int, group_weight: float | None) -> StepLoss:
    """The run's ranking objective (loss.objective_loss) on one (N,) reward of the batch."""
    b = batch
    return objective_loss(
        reward, b.ranks, b.group_index, n_groups, b.pair_counts, b.pair_margins, obj.ranking, group_weight
    )


def batch_loss(
    obj: HeadLoss,
    outputs: torch.Tensor,
    batch,
    n_groups: int,
    group_weight: float,
    unit_ids: list[int],
    lengths: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
) -> StepLoss:
    """The loss of one micro-batch of n_groups groups (training units unit_ids), each weighing group_weight.

    outputs: (N, O) from batch_outputs; lengths: (N,) completion tokens (odin); head_weight: (O, H) (odin)."""
    kind = obj.head.kind
    if kind == "ensemble":
        return ensemble_loss(obj, obj.bootstrap[unit_ids].to(outputs.device), outputs, batch, n_groups, group_weight)
    reward = outputs[:, 0] + outputs[:, 1] if kind == "odin" else outputs[:, 0]  # (N,): what the ranking trains
    step = ranking_loss(obj, reward, batch, n_groups, group_weight)
    if kind == "odin":  # a micro-batch's share of the step: its groups' weight
        share = n_groups * group_weight
        extra = obj.length_weight * length_loss(outputs[:, 0], outputs[:, 1], lengths.to(outputs.device))
        step.loss = step.loss + share * (extra + obj.orthogonal_weight * orthogonal_loss(head_weight))
    return step


def ensemble_loss(
    obj: HeadLoss, weights: torch.Tensor, outputs: torch.Tensor, batch, n_groups: int, group_weight: float
) -> StepLoss:
    """The mean over members of each member's bootstrap-weighted ranking loss (its centering term included);
    weights: (G, M) of the batch's groups. The reported statistics are output 0's (the mean reward), unweighted."""
    members = weights.shape[1]
    loss = outputs.new_zeros(())
    for m in range(members):
        r = outputs[:, 1 + m]
        per_group = ranking_loss(obj, r, batch, n_groups, None).stats.loss  # (G,)
        if obj.ranking.center:  # its centering term, with its gradient (StepLoss.center is detached)
            pairs = pair_mask(batch.ranks, batch.group_index) if batch.pair_counts is None else batch.pair_counts
            per_group = per_group + obj.ranking.center * center_term(r, pairs, batch.group_index, n_groups)
        loss = loss + (per_group * weights[:, m]).sum() * (group_weight / members)
    with torch.no_grad():
        mean = ranking_loss(obj, outputs[:, 0], batch, n_groups, None)
    return StepLoss(mean.stats, loss, mean.center)


def micro_batch_loss(objective: HeadLoss, model, outputs, b, groups, weight: float, units: list[int]) -> StepLoss:
    """objective.batch_loss with what ODIN's terms read: each completion's tokens (its row less the shared prompt)
    and the head's rows (the unwrapped model's); an attributes head: attribute_loss, which reads the groups'
    ratings."""
    if objective.head.kind == "attributes":
        spec = objective.head
        return attribute_loss(
            outputs.float(),
            b,
            groups,
            spec.names,
            spec.weights,
            weight,
            objective.attribute_weight,
            objective.ranking_weight,
            objective.ranking,
        )
    lengths = head = None
    if objective.head.kind == "odin":
        lengths = torch.tensor([len(r) - g.prompt_length for g in groups for r in g.ids], dtype=torch.float32)
        head = getattr(model, "module", model).head.weight  # (2, H); DDP's wrapper holds the model as .module
    return batch_loss(objective, outputs, b, len(groups), weight, units, lengths, head)
