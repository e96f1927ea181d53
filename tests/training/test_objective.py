"""The head objectives (training/objective.py) on tiny tensors, against numbers worked out by hand."""

import math

import pytest
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.loss import group_stats, kwise_loss
from rankrm.modeling.batch import collate
from rankrm.modeling.heads import HeadSpec
from rankrm.training.objective import (
    Objective,
    batch_loss,
    bootstrap_weights,
    ensemble_loss,
    length_loss,
    orthogonal_loss,
    pearson,
)


def two_pairs():
    """Two groups of K = 2 (completion 0 preferred in each): a real Batch of 4 completions."""
    groups = [TokenizedGroup([[5, 6, 7], [5, 6, 8, 9]], [0, 1]), TokenizedGroup([[4, 7], [4, 8, 8]], [0, 1])]
    return groups, collate(groups, 0, "padded")


def test_pearson_by_hand():
    """x = (1, 0, 1), y = (1, 2, 3): centred (1/3, -2/3, 1/3) and (-1, 0, 1), whose products sum to 0."""
    y = torch.tensor([1.0, 2.0, 3.0])
    assert pearson(torch.tensor([1.0, 0.0, 1.0]), y).item() == pytest.approx(0.0, abs=1e-7)
    assert pearson(torch.tensor([3.0, 2.0, 1.0]), y).item() == pytest.approx(-1.0)
    assert pearson(torch.tensor([2.0, 2.0, 2.0]), y).item() == 0.0  # constant: no correlation, no NaN


def test_length_loss_by_hand():
    """|rho(r_q, L)| - rho(r_l, L): r_q = (1, 2, 3) follows L = (1, 2, 3) (rho 1) and r_l = (3, 2, 1) opposes it
    (rho -1): 1 - (-1) = 2, the worst case. r_q = (1, 0, 1) (rho 0) and r_l = (2, 4, 6) (rho 1): 0 - 1 = -1, the
    best."""
    L = torch.tensor([1.0, 2.0, 3.0])
    assert length_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]), L).item() == pytest.approx(2.0)
    assert length_loss(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2.0, 4.0, 6.0]), L).item() == pytest.approx(-1.0)
    # |rho| penalises a quality reward that is anti-correlated with length too: (3, 2, 1) gives |-1| - 1 = 0
    assert length_loss(torch.tensor([3.0, 2.0, 1.0]), L.clone(), L).item() == pytest.approx(0.0)


def test_orthogonal_loss_by_hand():
    """Rows (1, 2) and (3, -4): 1*3 + 2*(-4) = -5, so |w_q . w_l| = 5."""
    assert orthogonal_loss(torch.tensor([[1.0, 2.0], [3.0, -4.0]])).item() == 5.0


def test_ensemble_loss_by_hand():
    """Member 1 scores both pairs level (margin 0: loss ln 2 each); member 2 has margins 2 and -1 (losses
    softplus(-2), softplus(1)). Bootstrap weights (group, member) [[2, 0], [1, 1]], group weight 1/2, 2 members:
    (1/2)(1/2) * (2 ln 2 + 1 ln 2 + 0 softplus(-2) + 1 softplus(1)) = (3 ln 2 + ln(1 + e)) / 4."""
    _, b = two_pairs()
    member1 = torch.tensor([0.5, 0.5, -1.0, -1.0])
    member2 = torch.tensor([3.0, 1.0, 0.0, 1.0])
    out = torch.stack([(member1 + member2) / 2, member1, member2], dim=1)  # (4, 3): mean, members
    w = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    loss, stats = ensemble_loss(w, out, b, 2, 0.5)
    assert loss.item() == pytest.approx((3 * math.log(2) + math.log(1 + math.e)) / 4, rel=1e-6)
    # the reported statistics are the mean reward's: margins (2.5 - 0.5)/2 = 1 and (-1 - 0)/2 = -0.5 -> 1 of 2 right
    assert stats.correct.sum().item() == 1 and stats.pairs.sum().item() == 2


def test_odin_batch_loss_adds_both_terms_to_the_summed_reward_ranking():
    """r_q = (1, 0, 1, 0) and r_l = (0, 1, 0, 2): the ranking trains r_q + r_l = (1, 1, 1, 2), margins 0 and -1
    (losses ln 2 and softplus(1)), weighted 1/2 each. Completion tokens L = (1, 2, 1, 2) (rows less the prompt)."""
    groups, b = two_pairs()
    out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    lengths = torch.tensor([len(r) - g.prompt_length for g in groups for r in g.ids], dtype=torch.float32)
    assert lengths.tolist() == [1.0, 2.0, 1.0, 2.0]
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # orthogonal rows: no penalty
    obj = Objective(HeadSpec.odin(), None, length_weight=0.5, orthogonal_weight=3.0)
    loss, _ = batch_loss(obj, out, b, 2, 0.5, [0, 1], lengths, w)
    ranking = 0.5 * (math.log(2) + math.log(1 + math.e))
    rho_q = -1.0  # r_q = (1, 0, 1, 0) against L = (1, 2, 1, 2)
    rho_l = pearson(out[:, 1], lengths).item()  # (0, 1, 0, 2): 0.9045...
    assert rho_l == pytest.approx(3 / math.sqrt(11), rel=1e-6)  # centred (-.75, .25, -.75, 1.25) . (-.5, .5, -.5, .5)
    assert loss.item() == pytest.approx(ranking + 0.5 * (abs(rho_q) - rho_l), rel=1e-6)  # share 2 * 0.5 = 1
    tilted = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # w_q . w_l = 1: adds 3 * 1
    loss2, _ = batch_loss(obj, out, b, 2, 0.5, [0, 1], lengths, tilted)
    assert loss2.item() - loss.item() == pytest.approx(3.0, rel=1e-6)


def test_scalar_batch_loss_is_the_kwise_loss_of_output_zero_to_the_bit():
    _, b = two_pairs()
    out = torch.tensor([[0.3], [-0.2], [1.5], [0.25]], requires_grad=True)
    loss, _ = batch_loss(Objective(), out, b, 2, 0.5, [0, 1])
    want = kwise_loss(group_stats(out[:, 0], b.ranks, b.group_index, 2, b.pair_counts), group_weight=0.5)
    assert torch.equal(loss, want)


def test_bootstrap_weights_repeat_per_seed_and_average_one():
    a, b, c = bootstrap_weights(2000, 3, 7), bootstrap_weights(2000, 3, 7), bootstrap_weights(2000, 3, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2000, 3) and abs(a.mean().item() - 1.0) < 0.05  # Poisson(1): mean 1
    assert (a == 0).float().mean().item() == pytest.approx(math.exp(-1), abs=0.03)  # P(0) = 1/e: left out
    assert not torch.equal(a[:, 0], a[:, 1])  # each member its own resample
