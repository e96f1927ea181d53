"""The K-wise loss against values worked out by hand.

Notation: -log sigmoid(d) = log(1 + e^-d); at d = 1 it is 0.31326169, at d = 2 it is 0.12692801, at 0 it is ln 2."""

import math

import pytest
import torch

from rankrm.loss import group_stats, kwise_loss

NLL1, NLL2, LN2 = math.log1p(math.exp(-1)), math.log1p(math.exp(-2)), math.log(2)


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def loss_of(rewards, ranks, groups):
    """kwise_loss over the statistics of one pass, as training computes it."""
    return kwise_loss(group_stats(rewards, ranks, groups, int(groups.max()) + 1))


def test_three_completions_mean_over_the_three_pairs():
    """Ranks (0, 1, 2), rewards (1, 0, -1): pairs (a>b) d=1, (a>c) d=2, (b>c) d=1 -> (2*NLL1 + NLL2) / C(3,2)."""
    loss = loss_of(t([1.0, 0.0, -1.0]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    assert loss.item() == pytest.approx((2 * NLL1 + NLL2) / 3, abs=1e-12)


def test_ties_give_no_pair():
    """Ranks (0, 0, 1), rewards (1, 2, 0): a and b tie, so only (a>c) d=1 and (b>c) d=2 count: (NLL1 + NLL2) / 2."""
    loss = loss_of(t([1.0, 2.0, 0.0]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]))
    assert loss.item() == pytest.approx((NLL1 + NLL2) / 2, abs=1e-12)


def test_order_of_completions_does_not_matter():
    """The same group listed in another order gives the same loss."""
    a = loss_of(t([1.0, 0.0, -1.0]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    b = loss_of(t([-1.0, 1.0, 0.0]), torch.tensor([2, 0, 1]), torch.tensor([0, 0, 0]))
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


def test_batch_is_the_mean_over_groups_not_pairs():
    """Group 0 (K=3, above): (2*NLL1 + NLL2)/3. Group 1 (K=2, equal rewards): ln 2. Batch: their plain mean,
    so the K=3 group's three pairs do not outweigh the K=2 group's one."""
    rewards = t([1.0, 0.0, -1.0, 0.5, 0.5])
    ranks = torch.tensor([0, 1, 2, 0, 1])
    groups = torch.tensor([0, 0, 0, 1, 1])
    g0 = (2 * NLL1 + NLL2) / 3
    assert loss_of(rewards, ranks, groups).item() == pytest.approx((g0 + LN2) / 2, abs=1e-12)
    s = group_stats(rewards, ranks, groups, 2)
    assert s.loss.tolist() == pytest.approx([g0, LN2], abs=1e-12)
    assert s.pairs.tolist() == [3.0, 1.0]
    # a step split into passes: each pass's share with weight 1/G adds up to the mean over the step's G groups
    shares = [
        kwise_loss(group_stats(rewards[:3], ranks[:3], groups[:3], 1), group_weight=1 / 2),
        kwise_loss(group_stats(rewards[3:], ranks[3:], groups[3:] - 1, 1), group_weight=1 / 2),
    ]
    assert sum(x.item() for x in shares) == pytest.approx((g0 + LN2) / 2, abs=1e-12)


def test_gradient_of_one_pair():
    """K=2, d = r_w - r_l = 1: dL/dr_w = -(1 - sigmoid(1)) = -0.26894142, dL/dr_l = +0.26894142."""
    r = t([1.0, 0.0]).requires_grad_()
    loss_of(r, torch.tensor([0, 1]), torch.tensor([0, 0])).backward()
    g = 1 - 1 / (1 + math.exp(-1))
    assert r.grad.tolist() == pytest.approx([-g, g], abs=1e-12)


def test_all_tied_group_is_left_out_of_the_mean():
    """Group 1 is all tied (no comparison): the batch loss is group 0's alone, NLL1."""
    loss = loss_of(t([1.0, 0.0, 3.0, -3.0]), torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(NLL1, abs=1e-12)


def test_pair_stats_count_reward_ties_as_half():
    """Ranks (0,1,2), rewards (1,1,2): a>b tie in reward (1/2), a>c wrong (0), b>c wrong (0): 0.5 of 3 correct;
    nll = ln2 + NLL1 + NLL1 (d = 0, -1, -1: -log sigmoid(-1) = 1 + NLL1)."""
    s = group_stats(t([1.0, 1.0, 2.0]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), 1)
    assert s.correct.item() == 0.5 and s.pairs.item() == 3.0
    assert s.nll.item() == pytest.approx(LN2 + 2 * (1 + NLL1), abs=1e-12)
    assert s.loss.item() == pytest.approx((LN2 + 2 * (1 + NLL1)) / 3, abs=1e-12)


def test_stated_pairs_mask_replaces_the_ranks():
    """A partial order stating only a>b (d = 1) and c>b (d = 2): ranks (0, 1, 0) would say the same here, but a
    mask stating only a>b leaves c out: loss NLL1, one pair."""
    mask = torch.zeros((3, 3), dtype=torch.bool)
    mask[0, 1] = True
    s = group_stats(t([1.0, 0.0, 2.0]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0]), 1, mask)
    assert s.pairs.item() == 1.0 and s.loss.item() == pytest.approx(NLL1, abs=1e-12)


def test_counts_weigh_each_vote():
    """Counts (N, N): a > b stated twice (d = 1), b > c once (d = 1), a > c once (d = 2) in one group of 4 votes:
    loss = (2 NLL1 + NLL1 + NLL2) / 4; pairs counts votes (4); correct: all 4 votes ordered right."""
    counts = t([[0, 2, 1], [0, 0, 1], [0, 0, 0]])
    s = group_stats(t([1.0, 0.0, -1.0]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), 1, counts)
    assert s.pairs.item() == 4.0 and s.correct.item() == 4.0
    assert s.loss.item() == pytest.approx((3 * NLL1 + NLL2) / 4, abs=1e-12)


def test_counts_of_ones_are_todays_ranking_loss():
    """A plain ranking given as counts of 1 (or as a bool mask) gives exactly the C(K,2) mean of the ranks."""
    r, ranks, g = t([0.3, -0.2, 1.1, 0.0]), torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 0, 1])
    ones = (ranks[:, None] < ranks[None, :]) & (g[:, None] == g[None, :])
    plain = group_stats(r, ranks, g, 2)
    for c in (ones, ones.to(torch.float64)):
        s = group_stats(r, ranks, g, 2, c)
        assert torch.equal(s.loss, plain.loss) and torch.equal(s.pairs, plain.pairs)


def test_a_two_one_split_contradiction():
    """a > b stated twice, b > a once. At d = r_a - r_b = 1: (2 softplus(-1) + softplus(1)) / 3 = (2 NLL1 + 1 +
    NLL1) / 3 = NLL1 + 1/3 (softplus(1) = 1 + softplus(-1)); one of three votes ordered wrong. The loss
    (2 log(1 + e^-d) + log(1 + e^d)) / 3 has derivative (-2 sigmoid(-d) + sigmoid(d)) / 3 = 0 at sigmoid(d) = 2/3,
    d = ln 2: gradient descent on d must get there."""
    counts = t([[0, 2], [1, 0]])
    ranks, g = torch.tensor([0, 1]), torch.tensor([0, 0])
    s = group_stats(t([1.0, 0.0]), ranks, g, 1, counts)
    assert s.loss.item() == pytest.approx(NLL1 + 1 / 3, abs=1e-12)
    assert s.pairs.item() == 3.0 and s.correct.item() == 2.0
    d = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([d], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        kwise_loss(group_stats(torch.stack([d, torch.zeros_like(d)]), ranks, g, 1, counts)).backward()
        opt.step()
    assert torch.sigmoid(d).item() == pytest.approx(2 / 3, abs=1e-6) and d.item() == pytest.approx(
        math.log(2), abs=1e-5
    )


def test_a_cycle_of_single_votes_is_minimized_by_equal_rewards():
    """a > b, b > c, c > a once each: by symmetry the optimum is r_a = r_b = r_c, loss ln 2. At rewards (1, 0, -1):
    d = 1, 1, -2: (NLL1 + NLL1 + (2 + NLL2)) / 3."""
    counts = t([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    ranks, g = torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0])
    s = group_stats(t([1.0, 0.0, -1.0]), ranks, g, 1, counts)
    assert s.loss.item() == pytest.approx((2 * NLL1 + 2 + NLL2) / 3, abs=1e-12)
    assert group_stats(t([0.5, 0.5, 0.5]), ranks, g, 1, counts).loss.item() == pytest.approx(LN2, abs=1e-12)
