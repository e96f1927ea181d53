"""The training objectives, pure functions of tensors: InstructGPT's K-wise pairwise loss and the pair statistics in
one pass (with TRL's per-comparison margins), the Plackett-Luce listwise loss (ties as Breslow's blocks, the top-N
truncation), TRL's reward centering, and objective_loss, the one function the training step calls."""

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


def group_stats(rewards, ranks, group_index, num_groups: int, counts=None, shift=None) -> GroupStats:
    """Each group's loss and pair statistics from one (N, N) pass over the rewards.

    Each completion appears once in `rewards`, so each is forwarded once however many pairs it is in. Tied
    completions (equal rank) give no pair; a group with no pair has loss 0 and count 0. An explicit (N, N) `counts`
    (batch.stated_pair_counts: how many times i was stated to beat j, or a bool mask of stated comparisons) replaces
    the pairs the ranks imply: under Bradley-Terry every vote is one observation, so a pair stated 2 times one way
    and once the other pulls sigmoid(r_a - r_b) towards 2/3. An (N, N) `shift` (s * margin of each comparison, TRL's
    margin loss) makes each pair's loss -log sigmoid(r_w - r_l - shift): the winner must lead by the margin; the
    pairs ordered right (`correct`) still count r_w > r_l."""
    weight = pair_mask(ranks, group_index) if counts is None else counts  # (N, N)
    weight = weight.to(rewards.dtype)  # (N, N): votes for i over j
    stated = weight > 0  # (N, N)
    diff = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    zero = torch.zeros_like(diff)
    nll = torch.where(stated, -F.logsigmoid(diff if shift is None else diff - shift), zero) * weight  # (N, N)
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


# -- Plackett-Luce: the likelihood of each group's whole ranking -------------------------------------------------


def rank_levels(ranks: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(N,) each completion's stage in its group's ranking: how many distinct ranks of its group are better (0 for
    the best block; tied completions share a level)."""
    n = ranks.shape[0]
    same = group_index[:, None] == group_index[None, :]  # (N, N)
    same_rank = same & (ranks[:, None] == ranks[None, :])  # (N, N)
    earlier = torch.ones(n, n, dtype=torch.bool, device=ranks.device).tril(-1)  # (N, N): j < i
    first = ~(same_rank & earlier).any(dim=1)  # (N,): the first completion listed with its rank in its group
    better = same & (ranks[None, :] < ranks[:, None]) & first[None, :]  # (N, N): j heads a better block than i
    return better.sum(dim=1)  # (N,)


def plackett_luce(rewards, ranks, group_index, num_groups: int, top: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stages) per group (G,): the Plackett-Luce negative log-likelihood of each group's ranking, divided by
    the number of completions it picks; with top N, of its first N stages only (N = 1: pick the best of K).

    The ranking is read as a sequence of choices: the best of all K, then the best of the rest, and so on, each
    P(i | R) = exp(r_i) / sum_{j in R} exp(r_j). Ties (equal ranks) are a block D chosen together, as in Breslow's
    approximation for tied event times: the block contributes sum_{i in D} r_i - |D| log sum_{j in R} exp(r_j),
    where R is every completion not ranked above D. A ranking with ties is a partial order, whose exact likelihood
    sums over every order of each tied block (exponential in the block sizes); Breslow's term needs no order, costs
    what an untied stage costs, and is exact without ties. The last block is what is left: it picks nothing (for one
    completion its term is 0; a tied bottom block states no order among its members, as a pairwise tie gives no
    pair). So each completion i above its group's last block adds log sum_{j: rank_j >= rank_i} exp(r_j) - r_i, a
    masked logsumexp over one (N, N) matrix for the whole batch, no loop over groups or stages.

    The group's loss is the mean over its picked completions (K - 1 untied; K minus the bottom block's size with
    ties), so that each group weighs 1 in the batch mean as under the pairwise loss, whatever its K; at K = 2 it is
    -log sigmoid(r_w - r_l), the pairwise loss. `stages` counts the picked completions (0: all tied, no loss)."""
    same = group_index[:, None] == group_index[None, :]  # (N, N)
    remaining = same & (ranks[None, :] >= ranks[:, None])  # (N, N): j is still to be chosen when i's block is
    below = (same & (ranks[None, :] > ranks[:, None])).any(dim=1)  # (N,): i is above its group's last block
    if top > 0:
        below = below & (rank_levels(ranks, group_index) < top)
    masked = torch.where(
        remaining, rewards[None, :].expand_as(remaining), torch.full_like(remaining, -torch.inf, dtype=rewards.dtype)
    )
    nll = torch.where(below, masked.logsumexp(dim=1) - rewards, torch.zeros_like(rewards))  # (N,)
    picked = below.to(rewards.dtype)
    stages = rewards.new_zeros(num_groups).index_add(0, group_index, picked)  # (G,)
    total = rewards.new_zeros(num_groups).index_add(0, group_index, nll)  # (G,)
    return total / stages.clamp(min=1), stages


# -- reward centering ------------------------------------------------------------------------------------------


def center_term(rewards, weight: torch.Tensor, group_index, num_groups: int) -> torch.Tensor:
    """(G,) each group's vote-weighted mean of (r_w + r_l)^2 over its stated comparisons (weight: (N, N) votes of i
    over j), TRL's center_rewards term: it pulls each pair's rewards towards summing to 0, so the rewards stay
    near 0 while the loss only sees their differences (Eisenstein et al., "Helping or Herding?")."""
    w = weight.to(rewards.dtype)  # (N, N)
    total = rewards[:, None] + rewards[None, :]  # (N, N): r_i + r_j
    sq = torch.where(w > 0, total.square(), torch.zeros_like(total)) * w
    per = rewards.new_zeros(num_groups)
    pairs = per.index_add(0, group_index, w.sum(dim=1))
    return per.index_add(0, group_index, sq.sum(dim=1)) / pairs.clamp(min=1)


# -- the objective a run trains ---------------------------------------------------------------------------------

OBJECTIVES = ("pairwise", "plackett-luce")


@dataclass(frozen=True)
class Objective:
    """What a run minimises: the ranking loss (pairwise or plackett-luce), Plackett-Luce's top-N truncation (0: the
    whole ranking), the scale s of the comparisons' margins (0: margins unused) and the centering coefficient C."""

    name: str = "pairwise"
    top: int = 0
    margin_scale: float = 0.0
    center: float = 0.0


PAIRWISE = Objective()


@dataclass
class StepLoss:
    """One pass's objective: the per-group statistics (stats.loss is the ranking loss of each group), the loss to
    back-propagate (the ranking loss plus C times the centering term, this pass's share of the step) and each
    group's centering term C * mean (r_w + r_l)^2 (None when C = 0), reported apart from the ranking loss."""

    stats: GroupStats
    loss: torch.Tensor
    center: torch.Tensor | None = None


def objective_loss(
    rewards,
    ranks,
    group_index,
    num_groups: int,
    counts=None,
    margins=None,
    objective: Objective = PAIRWISE,
    group_weight: float | None = None,
) -> StepLoss:
    """The objective of one pass over whole groups (the training step calls this, and only this).

    pairwise without margins or centering is exactly group_stats then kwise_loss, as before objectives existed.
    margins: (N, N) of each stated comparison's margin (batch.pair_margins), used as s * margin when s > 0.
    plackett-luce takes each group's ranks (counts must be None: the run refuses groups whose stated comparisons
    are not their ranks'); the pair statistics (accuracy) are still the pairwise ones."""
    o = objective
    shift = (
        None
        if margins is None or not o.margin_scale or o.name != "pairwise"
        else margins.to(rewards.dtype) * o.margin_scale
    )
    stats = group_stats(rewards, ranks, group_index, num_groups, counts, shift)
    if o.name == "plackett-luce":
        if counts is not None:
            raise ValueError("plackett-luce reads each group's ranks; groups with stated pairs or counts are refused")
        pl, _ = plackett_luce(rewards, ranks, group_index, num_groups, o.top)
        stats = GroupStats(pl, stats.pairs, stats.correct, stats.nll)
    elif o.name != "pairwise":
        raise ValueError(f"objective {o.name!r} unknown: use one of {', '.join(OBJECTIVES)}")
    loss = kwise_loss(stats, group_weight)
    if not o.center:
        return StepLoss(stats, loss)
    weight = pair_mask(ranks, group_index) if counts is None else counts
    center = o.center * center_term(rewards, weight, group_index, num_groups)  # (G,)
    extra = center.sum() * group_weight if group_weight is not None else center[stats.pairs > 0].mean()
    return StepLoss(stats, loss + extra, center.detach())
