"""evaluation/plots.py: the comparisons the figures draw, and the report's files and summary."""

import numpy as np

from rankrm.evaluation.evaluate import EvalResult, Labels
from rankrm.evaluation.formatting import format_report
from rankrm.evaluation.plots import plotting_missing, preferred_and_rejected, write_report


def _result() -> EvalResult:
    """Group 1 ranked a > b > c with rewards 2, 1, 0; group 2 states 0 > 1 twice and 1 > 0 once, rewards 0.5, 0."""
    labels = (
        Labels((0, 1, 2), ((0, 1), (0, 2), (1, 2)), (1, 1, 1), True, "chat"),
        Labels((0, 1), ((0, 1), (1, 0)), (2, 1), False, "chat"),
    )
    rewards = (np.array([2.0, 1.0, 0.0]), np.array([0.5, 0.0]))
    return EvalResult(np.array([3.0, 2.0]), np.array([3.0, 3.0]), np.array([1.0, 1.5]), rewards, labels)


def test_each_stated_comparison_gives_its_winners_and_losers_reward_and_votes():
    w, l, n = preferred_and_rejected(_result())  # noqa: E741
    assert w.tolist() == [2.0, 2.0, 1.0, 0.5, 0.0]
    assert l.tolist() == [1.0, 0.0, 0.0, 0.0, 0.5]
    assert n.tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]


def test_the_report_writes_the_figures_the_data_allows_and_a_summary_linking_them(tmp_path):
    """No training curve and no lengths: reliability, rewards and subsets (the groups name "chat"), then the
    summary with the metrics' text and a link to each figure."""
    assert plotting_missing() is None  # matplotlib is in the dev extra
    res = _result()
    written = write_report(tmp_path / "r", ["model"], [res], data="d.jsonl")
    assert [p.name for p in written] == ["reliability.png", "rewards.png", "subsets.png", "summary.md"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written[:3])
    assert (tmp_path / "r" / "summary.md").read_text() == (
        f"# Reward model evaluation\n\nData: d.jsonl\n\n## model\n\n```\n{format_report(res.metrics)}\n```\n\n"
        "![reliability](reliability.png)\n![rewards](rewards.png)\n![subsets](subsets.png)\n"
    )
