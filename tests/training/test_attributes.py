"""The attributes head's loss against values worked out by hand, and (below) training one end to end."""

import math

import pytest
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.batch import collate
from rankrm.training.attributes import attribute_loss

NLL1 = math.log1p(math.exp(-1))  # -log sigmoid(1)


def one_group():
    """One group of K = 2 (the first ranked best), two attributes; the second completion's first rating missing."""
    g = TokenizedGroup([[5, 6, 7], [5, 6, 8]], [0, 1], attributes={"a": [2.0, None], "b": [0.0, 1.0]})
    return g, collate([g], pad_id=0, layout="padded")


def test_joint_loss_by_hand():
    """Outputs (reward, a, b): (9, 1, 0) and (9, 0, 0); weights (1, 0): the reward is output a, (1, 0), d = 1:
    ranking NLL1. Squared errors: (1 - 2)^2 = 1, (0 - 0)^2 = 0, (0 - 1)^2 = 1 over 3 ratings: 2/3.
    Loss = 1 * NLL1 + 0.5 * 2/3; output 0 (9, untied here) is not read."""
    g, b = one_group()
    out = torch.tensor([[9.0, 1.0, 0.0], [9.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss, stats = attribute_loss(out, b, [g], ("a", "b"), (1.0, 0.0), 1.0, attribute_weight=0.5)
    assert loss.item() == pytest.approx(NLL1 + 0.5 * 2 / 3, abs=1e-12)
    assert stats.loss.tolist() == pytest.approx([NLL1 + 0.5 * 2 / 3], abs=1e-12)
    assert stats.pairs.tolist() == [1.0] and stats.correct.tolist() == [1.0]
    loss.backward()
    s = 1 / (1 + math.exp(1))  # d(-log sigmoid(d))/dd = -sigmoid(-d)
    # d/d a_0: ranking -s, MSE 0.5 * 2 * (1 - 2) / 3; d/d a_1: ranking +s (a missing rating: no MSE)
    assert out.grad[:, 1].tolist() == pytest.approx([-s - 1 / 3, s], abs=1e-12)
    assert out.grad[:, 2].tolist() == pytest.approx([0.0, 0.5 * 2 * (0 - 1) / 3], abs=1e-12)  # weight 0: no ranking
    assert out.grad[:, 0].tolist() == [0.0, 0.0]


def test_without_weights_the_ranking_trains_output_0_and_off_it_trains_nothing():
    g, b = one_group()
    out = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = attribute_loss(out, b, [g], ("a", "b"), (), 1.0)
    assert loss.item() == pytest.approx(NLL1 + 2 / 3, abs=1e-12)  # output 0 is (1, 0): d = 1
    loss, stats = attribute_loss(out, b, [g], ("a", "b"), (), 1.0, ranking_weight=0.0)
    assert loss.item() == pytest.approx(2 / 3, abs=1e-12)  # the regression alone
    assert stats.pairs.tolist() == [1.0]  # the reward's accuracy is still reported
