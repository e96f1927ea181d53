"""Per-attribute metrics against values worked out by hand (and scipy's, for the correlations with ties)."""

import math

import numpy as np
import pytest
import scipy.stats

from rankrm.evaluation.attributes import attribute_metrics, average_ranks, pearson, rmse, spearman


def test_rmse_by_hand():
    """Errors (1, -1, 2): squared 1, 1, 4, mean 2, RMSE sqrt(2)."""
    assert rmse([1, 2, 5], [0, 3, 3]) == pytest.approx(math.sqrt(2), abs=1e-12)
    assert rmse([], []) is None


def test_pearson_by_hand():
    """x (1, 2, 3), y (1, 3, 2): deviations (-1, 0, 1) and (-1, 1, 0): sum of products 1, sums of squares 2 and 2:
    r = 1 / sqrt(2 * 2) = 1/2."""
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-12)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0, abs=1e-12)
    assert pearson([1, 2, 3], [5, 5, 5]) is None  # a constant side: undefined, not NaN
    assert pearson([1], [2]) is None


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_by_hand_and_as_scipy_with_ties():
    """x (10, 20, 30) ranks (1, 2, 3); y (1, 100, 10) ranks (1, 3, 2): Pearson of the ranks = 1/2 (as above).
    With ties, the average ranks give scipy's value."""
    assert spearman([10, 20, 30], [1, 100, 10]) == pytest.approx(0.5, abs=1e-12)
    x, y = [1, 2, 2, 3, 4, 4, 4], [0.3, 0.1, 0.2, 0.9, 0.5, 0.5, 0.4]
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_attribute_metrics_skip_missing_ratings_and_compare_with_the_train_mean():
    """Attribute a: all three rated, predictions (1, 2, 3) for ratings (1, 3, 2): RMSE sqrt((0 + 1 + 1) / 3),
    Pearson 1/2; the baseline predicts the train mean 2: errors (-1, 1, 0), RMSE sqrt(2/3).
    Attribute b: the second rating missing: predictions (0, 4) for (1, 3): RMSE 1, Pearson 1 (two points);
    baseline mean 1.5: errors (0.5, -1.5), RMSE sqrt((0.25 + 2.25) / 2) = sqrt(1.25)."""
    pred = np.array([[1.0, 0.0], [2.0, 9.0], [3.0, 4.0]])
    target = np.array([[1.0, 1.0], [3.0, np.nan], [2.0, 3.0]])
    m = attribute_metrics(pred, target, ["a", "b"], train_means=[2.0, 1.5])
    assert m["a"]["ratings"] == 3 and m["b"]["ratings"] == 2
    assert m["a"]["rmse"] == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    assert m["a"]["pearson"] == pytest.approx(0.5, abs=1e-12)
    assert m["a"]["baseline_rmse"] == pytest.approx(math.sqrt(2 / 3), abs=1e-12)
    assert m["b"]["rmse"] == pytest.approx(1.0, abs=1e-12)
    assert m["b"]["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert m["b"]["baseline_rmse"] == pytest.approx(math.sqrt(1.25), abs=1e-12)
    assert m["mean"]["rmse"] == pytest.approx((math.sqrt(2 / 3) + 1.0) / 2, abs=1e-12)
    assert m["mean"]["pearson"] == pytest.approx(0.75, abs=1e-12)


def test_an_attribute_without_held_out_ratings_is_reported_empty():
    m = attribute_metrics(np.zeros((2, 1)), np.full((2, 1), np.nan), ["a"])
    assert m["a"] == {"ratings": 0}
