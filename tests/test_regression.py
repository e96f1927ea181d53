"""The masked MSE of rated attributes against values worked out by hand.

The example used throughout: three completions, two attributes, completions 0 and 1 in group 0, completion 2 in
group 1; the ratings missing for completion 0's second attribute (NaN) and completion 2's first.

    outputs  [[1, 2], [3, 4], [0, 0]]
    targets  [[2, -], [1, 4], [-, 1]]
    squared  [[1, -], [4, 0], [-, 1]]

Group 0: (1 + 4 + 0) / 3 observed = 5/3. Group 1: 1 / 1 = 1. The batch: the mean over groups, (5/3 + 1) / 2 = 4/3.
Over all observed ratings at once (masked_mse): (1 + 4 + 0 + 1) / 4 = 3/2."""

import math

import pytest
import torch

from rankrm.regression import masked_mse, regression_loss, regression_stats

NAN = math.nan


def example(requires_grad=False):
    outputs = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=requires_grad)
    targets = torch.tensor([[2.0, NAN], [1.0, 4.0], [NAN, 1.0]], dtype=torch.float64)
    mask = ~torch.isnan(targets)
    return outputs, targets, mask, torch.tensor([0, 0, 1])


def test_per_group_mse_over_observed_ratings_only():
    outputs, targets, mask, groups = example()
    s = regression_stats(outputs, targets, mask, groups, 2)
    assert s.loss.tolist() == pytest.approx([5 / 3, 1.0], abs=1e-12)
    assert s.observed.tolist() == [3.0, 1.0]
    assert s.squared_error.tolist() == pytest.approx([5.0, 1.0], abs=1e-12)  # attribute 0: 1 + 4; attribute 1: 0 + 1
    assert s.count.tolist() == [2.0, 2.0]
    assert regression_loss(s).item() == pytest.approx(4 / 3, abs=1e-12)
    assert masked_mse(outputs, targets, mask).item() == pytest.approx(3 / 2, abs=1e-12)


def test_gradient_is_finite_and_zero_where_the_rating_is_missing():
    """d loss / d output = (1/G) * (1/observed of its group) * 2 (output - target): group 0's entries weigh
    1/2 * 1/3 * 2 = 1/3 per unit of error, group 1's 1/2 * 1 * 2 = 1. So (0,0): -1/3, (1,0): 2/3, (1,1): 0,
    (2,1): -1; the missing (0,1) and (2,0): exactly 0, though their targets are NaN."""
    outputs, targets, mask, groups = example(requires_grad=True)
    regression_loss(regression_stats(outputs, targets, mask, groups, 2)).backward()
    want = [[-1 / 3, 0.0], [2 / 3, 0.0], [0.0, -1.0]]
    assert outputs.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in want]


def test_a_step_split_into_passes_adds_up_to_the_mean_over_its_groups():
    """Each pass's share with group_weight 1/G: 5/3 * 1/2 + 1 * 1/2 = 4/3, as in one pass."""
    outputs, targets, mask, groups = example()
    first = regression_stats(outputs[:2], targets[:2], mask[:2], groups[:2], 1)
    second = regression_stats(outputs[2:], targets[2:], mask[2:], groups[2:] - 1, 1)
    total = regression_loss(first, group_weight=0.5) + regression_loss(second, group_weight=0.5)
    assert total.item() == pytest.approx(4 / 3, abs=1e-12)


def test_a_group_without_ratings_adds_nothing():
    """Completion 2 unrated: group 1 has loss 0 and count 0; the unweighted mean is group 0's alone, 5/3."""
    outputs, targets, mask, groups = example()
    mask[2] = False
    s = regression_stats(outputs, targets, mask, groups, 2)
    assert s.loss.tolist() == pytest.approx([5 / 3, 0.0], abs=1e-12)
    assert s.observed.tolist() == [3.0, 0.0]
    assert regression_loss(s).item() == pytest.approx(5 / 3, abs=1e-12)
