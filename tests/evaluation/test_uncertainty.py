"""An ensemble's spread against its errors (evaluation/uncertainty.py), on groups worked out by hand."""

import numpy as np
import pytest

from rankrm.evaluation.evaluate import EvalResult, Labels
from rankrm.evaluation.formatting import format_report
from rankrm.evaluation.uncertainty import spread_metrics

# four K = 2 groups, completion 0 preferred; members (K, M = 2) and the margins r_m(0) - r_m(1) they give:
MEMBERS = [
    np.array([[1.0, 3.0], [0.0, 0.0]]),  # margins (1, 3): mean 2 (right), std 1
    np.array([[0.0, 0.0], [0.5, -0.5]]),  # (-0.5, 0.5): mean 0 (a tie, 1/2), std 0.5
    np.array([[0.0, 0.0], [1.0, 1.0]]),  # (-1, -1): mean -1 (wrong), std 0
    np.array([[2.0, 2.2], [0.0, 0.0]]),  # (2, 2.2): mean 2.1 (right), std 0.1
]
REWARDS = [m.mean(axis=1) for m in MEMBERS]
LABELS = [Labels((0, 1), ((0, 1),), (1,), True)] * 4


def test_accuracy_by_spread_quantile_by_hand():
    """Spreads sorted: 0 (wrong), 0.1 (right), 0.5 (tie), 1 (right). Two bins: [0, 0.1] accuracy (0 + 1) / 2 = 0.5,
    [0.5, 1] (0.5 + 1) / 2 = 0.75. Right: spreads 0.1 and 1 (mean 0.55); wrong or tied: 0 and 0.5 (mean 0.25)."""
    u = spread_metrics(REWARDS, MEMBERS, LABELS, bins=2)
    assert [b["pairs"] for b in u["spread_bins"]] == [2, 2]
    assert [b["accuracy"] for b in u["spread_bins"]] == [0.5, 0.75]
    assert u["spread_bins"][0]["spread"] == [0.0, pytest.approx(0.1)] and u["spread_bins"][1]["spread"] == [0.5, 1.0]
    assert u["mean_spread_right"] == pytest.approx(0.55) and u["mean_spread_wrong"] == pytest.approx(0.25)
    assert u["members"] == 2


def test_an_ensembles_result_reports_its_spread_and_round_trips():
    res = EvalResult(
        np.array([1.0, 0.5, 0.0, 1.0]), np.ones(4), np.ones(4), tuple(REWARDS), tuple(LABELS), tuple(MEMBERS)
    )
    assert res.metrics["ensemble"]["spread_bins"][0]["pairs"] == 1  # 4 bins of one comparison each
    assert "ensemble spread (2 members" in format_report(res.metrics)
    back = EvalResult.from_json(res.to_json())
    assert back.metrics["ensemble"] == res.metrics["ensemble"]
    assert "ensemble" not in EvalResult(res.correct, res.pairs, res.nll, res.rewards, res.labels).metrics
