"""The objectives beyond the pairwise loss against values worked out by hand: Plackett-Luce (ties as Breslow's blocks,
the top-N truncation), margins, centering; and the pairwise objective, through objective_loss, unchanged to the bit.

Notation: L = log(e^1 + e^0 + e^-1) = log(1 + 2 cosh 1) = 1.40760596; -log sigmoid(1) = log(1 + e^-1) = NLL1 =
0.31326169; -log sigmoid(d) = log(1 + e^-d)."""

import math

import pytest
import torch

from rankrm.loss import Objective, group_stats, kwise_loss, objective_loss, plackett_luce, rank_levels

L = math.log(math.e + 1 + math.exp(-1))
NLL1, LN2 = math.log1p(math.exp(-1)), math.log(2)
ONE = torch.tensor([0, 0, 0])


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def pl(rewards, ranks, groups, top=0):
    loss, stages = plackett_luce(t(rewards), torch.tensor(ranks), torch.tensor(groups), max(groups) + 1, top)
    return loss.tolist(), stages.tolist()


def test_plackett_luce_strict_ranking_of_three():
    """Ranks (0, 1, 2), rewards (1, 0, -1): a best of {a, b, c}: L - 1; b best of {b, c}: log(1 + e^-1) - 0 = NLL1;
    c alone: nothing. Two picks: (L - 1 + NLL1) / 2 = 0.36043383."""
    loss, stages = pl([1.0, 0.0, -1.0], [0, 1, 2], [0, 0, 0])
    assert stages == [2.0] and loss == pytest.approx([(L - 1 + NLL1) / 2], abs=1e-12)
    assert loss[0] == pytest.approx(0.36043383, abs=1e-8)


def test_plackett_luce_tied_top_block_is_breslow():
    """Ranks (0, 0, 1), rewards (1, 0, -1): the tied block {a, b} is chosen together from R = {a, b, c}: Breslow's
    term (r_a + r_b) - 2 log sum_R e^r = 1 - 2L; c is what is left. NLL 2L - 1 over 2 picks: L - 1/2 = 0.90760596."""
    loss, stages = pl([1.0, 0.0, -1.0], [0, 0, 1], [0, 0, 0])
    assert stages == [2.0] and loss == pytest.approx([L - 0.5], abs=1e-12)


def test_plackett_luce_tied_bottom_block_picks_nothing():
    """Ranks (0, 1, 1), rewards (1, 0, -1): a from {a, b, c}: L - 1; the tied last block {b, c} states no order and
    picks nothing (a pairwise tie gives no pair). One pick: L - 1 = 0.40760596. Its gradient is softmax(r) - [a]:
    (0.66524096 - 1, 0.24472847, 0.09003057)."""
    r = t([1.0, 0.0, -1.0]).requires_grad_()
    loss, stages = plackett_luce(r, torch.tensor([0, 1, 1]), ONE, 1)
    assert stages.tolist() == [1.0] and loss.item() == pytest.approx(L - 1, abs=1e-12)
    loss.sum().backward()
    p = [math.exp(x - L) for x in (1.0, 0.0, -1.0)]
    assert r.grad.tolist() == pytest.approx([p[0] - 1, p[1], p[2]], abs=1e-12)


def test_top_one_is_picking_the_best_of_k():
    """--listwise-top 1 on ranks (0, 1, 2), rewards (1, 0, -1): only the first stage, a best of three: L - 1 (the
    full likelihood adds b over c). With (2, 0, 1) the best is b: log sum e^r - r_b = L - 0."""
    assert pl([1.0, 0.0, -1.0], [0, 1, 2], [0, 0, 0], top=1) == ([pytest.approx(L - 1, abs=1e-12)], [1.0])
    assert pl([1.0, 0.0, -1.0], [2, 0, 1], [0, 0, 0], top=1)[0] == pytest.approx([L], abs=1e-12)
    assert pl([1.0, 0.0, -1.0], [0, 1, 2], [0, 0, 0], top=2)[0] == pytest.approx([(L - 1 + NLL1) / 2], abs=1e-12)


def test_top_one_with_a_tied_best_block():
    """Top 1 of ranks (0, 0, 1, 2): the first stage is the tied block {a, b} (Breslow), the rest is cut: with
    rewards (1, 0, -1, 5): 2 log(e + 1 + e^-1 + e^5) - 1, over 2 picks."""
    s = math.log(math.e + 1 + math.exp(-1) + math.exp(5))
    assert pl([1.0, 0.0, -1.0, 5.0], [0, 0, 1, 2], [0, 0, 0, 0], top=1)[0] == pytest.approx([s - 0.5], abs=1e-12)


def test_plackett_luce_at_k2_is_the_pairwise_loss():
    """K = 2: log(e^r_w + e^r_l) - r_w = log(1 + e^-(r_w - r_l)) = -log sigmoid(r_w - r_l)."""
    r, ranks, g = t([1.0, 0.0]), torch.tensor([0, 1]), torch.tensor([0, 0])
    assert plackett_luce(r, ranks, g, 1)[0].item() == pytest.approx(NLL1, abs=1e-12)
    assert group_stats(r, ranks, g, 1).loss.item() == pytest.approx(NLL1, abs=1e-12)


def test_plackett_luce_batch_of_groups_of_different_k_is_their_mean():
    """Group 0: ranks (0, 1, 2) (above: (L - 1 + NLL1) / 2); group 1: K = 2, d = 1 (NLL1), listed with the loser
    first; group 2: all tied (no pick, left out of the mean). Vectorised: one pass for all; the group order of the
    completions does not matter."""
    r = t([1.0, 0.0, -1.0, 0.0, 1.0, 3.0, 3.0])
    ranks = torch.tensor([0, 1, 2, 1, 0, 0, 0])
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    s = objective_loss(r, ranks, g, 3, objective=Objective("plackett-luce"))
    assert s.stats.loss.tolist() == pytest.approx([(L - 1 + NLL1) / 2, NLL1, 0.0], abs=1e-12)
    assert s.loss.item() == pytest.approx(((L - 1 + NLL1) / 2 + NLL1) / 2, abs=1e-12)
    assert s.stats.pairs.tolist() == [3.0, 1.0, 0.0]  # the pair statistics stay the pairwise ones (accuracy)


def test_rank_levels_count_distinct_better_ranks():
    """Ranks (3, 0, 3, 7) in one group, (5, 5) in another: levels (1, 0, 1, 2) and (0, 0)."""
    levels = rank_levels(torch.tensor([3, 0, 3, 7, 5, 5]), torch.tensor([0, 0, 0, 0, 1, 1]))
    assert levels.tolist() == [1, 0, 1, 2, 0, 0]


def test_margin_shifts_each_comparison():
    """One pair, d = r_w - r_l = 1, margin m = 1: s = 1 gives -log sigmoid(0) = ln 2; s = 2 gives -log sigmoid(-1) =
    1 + NLL1; s = 0 (the default) ignores the margin: NLL1. The winner is still ordered right (correct 1)."""
    r, ranks, g = t([1.0, 0.0]), torch.tensor([0, 1]), torch.tensor([0, 0])
    m = t([[0.0, 1.0], [0.0, 0.0]])
    for s, want in ((1.0, LN2), (2.0, 1 + NLL1), (0.0, NLL1)):
        out = objective_loss(r, ranks, g, 1, margins=m, objective=Objective(margin_scale=s))
        assert out.loss.item() == pytest.approx(want, abs=1e-12) and out.stats.correct.item() == 1.0


def test_margins_per_pair_in_a_group_of_three():
    """Ranks (0, 1, 2), rewards (1, 0, -1), margins a>b 1, a>c 0.5, b>c 0, s = 2: d - 2m = (1 - 2, 2 - 1, 1 - 0) =
    (-1, 1, 1): (1 + NLL1 + NLL1 + NLL1) / 3."""
    m = t([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = objective_loss(
        t([1.0, 0.0, -1.0]), torch.tensor([0, 1, 2]), ONE, 1, margins=m, objective=Objective(margin_scale=2.0)
    )
    assert out.loss.item() == pytest.approx((1 + 3 * NLL1) / 3, abs=1e-12)


def test_centering_is_reported_apart_and_added_to_the_loss():
    """Group 0: ranks (0, 1, 2), rewards (1, 0, -1): (r_w + r_l)^2 = 1, 0, 1 -> mean 2/3. Group 1: (1, 0.5): 2.25.
    C = 0.01: center per group (0.01 * 2/3, 0.0225); the loss is the pairwise loss plus the mean of the two; with
    group weight 1/2 (one pass's share of a step) the same. The gradient of the centering alone on group 1 is
    2 C (r_w + r_l) = 0.03 on each."""
    r = t([1.0, 0.0, -1.0, 1.0, 0.5])
    ranks, g = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 0, 1, 1])
    plain = kwise_loss(group_stats(r, ranks, g, 2))
    out = objective_loss(r, ranks, g, 2, objective=Objective(center=0.01))
    assert out.center.tolist() == pytest.approx([0.01 * 2 / 3, 0.0225], abs=1e-12)
    assert out.loss.item() == pytest.approx(plain.item() + (0.01 * 2 / 3 + 0.0225) / 2, abs=1e-12)
    shared = objective_loss(r, ranks, g, 2, objective=Objective(center=0.01), group_weight=0.5)
    assert shared.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)
    x = t([1.0, 0.5]).requires_grad_()
    c = objective_loss(x, torch.tensor([0, 1]), torch.tensor([0, 0]), 1, objective=Objective(center=0.01))
    (c.loss - kwise_loss(c.stats)).backward()
    assert x.grad.tolist() == pytest.approx([0.03, 0.03], abs=1e-12)


def test_centering_with_votes_weighs_each_vote():
    """a > b stated twice (r 1, 0: (1)^2), b > c once (0, -2: 4): vote-weighted mean (2 * 1 + 4) / 3 = 2, C = 1."""
    counts = t([[0, 2, 0], [0, 0, 1], [0, 0, 0]])
    out = objective_loss(t([1.0, 0.0, -2.0]), torch.tensor([0, 1, 2]), ONE, 1, counts, objective=Objective(center=1.0))
    assert out.center.tolist() == pytest.approx([2.0], abs=1e-12)


def test_plackett_luce_refuses_votes():
    counts = t([[0, 2], [1, 0]])
    with pytest.raises(ValueError, match="plackett-luce reads each group's ranks"):
        objective_loss(
            t([1.0, 0.0]), torch.tensor([0, 1]), torch.tensor([0, 0]), 1, counts, objective=Objective("plackett-luce")
        )


@pytest.mark.parametrize("counts", [None, "votes"])
@pytest.mark.parametrize("weight", [None, 0.25])
def test_pairwise_objective_is_todays_loss_to_the_bit(counts, weight):
    """objective_loss with the default objective (margins given but s = 0) returns exactly group_stats then
    kwise_loss, the loss before objectives existed: the same bits in the loss, the statistics and the gradient."""
    torch.manual_seed(0)
    r0 = torch.randn(7, dtype=torch.float32)
    ranks, g = torch.tensor([0, 1, 2, 2, 0, 1, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 2])
    c = None
    if counts:
        c = torch.zeros(7, 7)
        c[0, 1], c[1, 0], c[2, 3], c[4, 5] = 2, 1, 1, 3  # a 2-1 split, a partial order, a repeated vote
    margins = torch.rand(7, 7)
    a, b = r0.clone().requires_grad_(), r0.clone().requires_grad_()
    old_stats = group_stats(a, ranks, g, 3, c)
    old = kwise_loss(old_stats, weight)
    old.backward()
    new = objective_loss(b, ranks, g, 3, c, margins, Objective(), weight)
    new.loss.backward()
    assert torch.equal(old, new.loss) and torch.equal(a.grad, b.grad) and new.center is None
    for f in ("loss", "pairs", "correct", "nll"):
        assert torch.equal(getattr(old_stats, f), getattr(new.stats, f))
