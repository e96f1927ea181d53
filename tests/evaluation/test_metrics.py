"""The metrics the field reads, against values worked out by hand: Kendall tau-b, top-1 and its reward gap,
accuracy against every vote and each pair's majority, calibration (reliability table, ECE, temperature), per-subset
accuracy with RewardBench's sections; and `rankrm eval` with two models, paired over prompts."""

import json
import math

import numpy as np
import pytest
from conftest import write_jsonl

from rankrm.cli import main
from rankrm.evaluation.evaluate import EvalResult, Labels, compare
from rankrm.evaluation.metrics import (
    calibration,
    fit_temperature,
    kendall_tau_b,
    ranking_metrics,
    subset_metrics,
    vote_metrics,
)
from rankrm.modeling.model import RewardModel


def ranked(ranks, subset=None):
    """Labels of a whole human ranking (every pair its ranks order, once)."""
    pairs = tuple((i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j])
    return Labels(tuple(ranks), pairs, (1,) * len(pairs), True, subset)


def test_kendall_tau_b_by_hand():
    """Human (best first) 0 > 1 > 2 as scores (0, -1, -2), rewards (3, 1, 2): pairs (0,1) and (0,2) concordant,
    (1,2) discordant: tau = (2 - 1) / 3. Human ranks (0, 0, 1) (a tie), rewards (1, 2, 0): (0,1) tied in the
    humans, (0,2) and (1,2) concordant: tau_b = 2 / sqrt((3 - 1)(3 - 0)) = 2 / sqrt(6). Constant rewards: None."""
    assert kendall_tau_b([0, -1, -2], [3, 1, 2]) == pytest.approx(1 / 3, abs=1e-12)
    assert kendall_tau_b([0, 0, -1], [1, 2, 0]) == pytest.approx(2 / math.sqrt(6), abs=1e-12)
    assert kendall_tau_b([0, -1, -2], [1, 1, 1]) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 3, 6), rng.normal(size=6).round(1)
        assert kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic, abs=1e-12)


def test_ranking_metrics_by_hand():
    """Group 1: human 0 > 1 > 2, rewards (3, 1, 2): tau 1/3, the pick (0) is the humans' best, gap 0. Group 2:
    human 0 > 1 > 2, rewards (1, 3, 0): tau = (1 - 2)/3... pairs (0,1) discordant, (0,2) concordant, (1,2)
    concordant: +1/3; pick 1, gap 3 - 1 = 2. Group 3: ties at the top (0, 0, 1), rewards (1, 2, 0): pick 1 is one of
    the best: right, gap 0, tau 2/sqrt(6). A K = 2 group and a partial order are left out."""
    rewards = [
        np.array([3.0, 1, 2]),
        np.array([1.0, 3, 0]),
        np.array([1.0, 2, 0]),
        np.array([0.0, 1]),
        np.array([0.0, 1, 2]),
    ]
    labels = [
        ranked((0, 1, 2)),
        ranked((0, 1, 2)),
        ranked((0, 0, 1)),
        ranked((0, 1)),
        Labels((0, 1, 2), ((0, 1),), (1,), False),
    ]
    m = ranking_metrics(rewards, labels)
    assert m["ranked_groups"] == 3
    assert m["kendall_tau_b"] == pytest.approx((1 / 3 + 1 / 3 + 2 / math.sqrt(6)) / 3, abs=1e-12)
    assert m["top1_accuracy"] == pytest.approx(2 / 3) and m["top1_reward_gap"] == pytest.approx(2 / 3)
    assert ranking_metrics(rewards[3:4], labels[3:4]) == {}


def test_vote_metrics_by_hand():
    """a > b twice, b > a once, b > c once, c > b once (an even split); rewards (1, 0, 2). Votes: a > b right x2,
    b > a wrong, b > c wrong (d = -2), c > b right: 3 of 5. Majorities: a > b (2 to 1) right; b, c split: left out.
    Plain data (one vote per pair, one way) gives no vote metrics."""
    lab = Labels((0, 1, 0), ((0, 1), (1, 0), (1, 2), (2, 1)), (2, 1, 1, 1), False)
    m = vote_metrics([np.array([1.0, 0.0, 2.0])], [lab])
    assert m == {"accuracy_votes": 0.6, "accuracy_majority": 1.0, "majority_pairs": 1, "split_pairs": 1}
    assert vote_metrics([np.array([1.0, 0.0])], [ranked((0, 1))]) == {}


def test_calibration_by_hand():
    """Margins ln 3 (sigmoid 3/4) on four votes, one of them wrong (d = -ln 3): all in the 0.75-0.80 bin, accuracy
    3/4 = confidence: ECE 0. Margin ln 9 (sigmoid 0.9) once right and once wrong: accuracy 1/2, confidence 0.9:
    ECE 0.4, over-confident, so T > 1: the log loss (log(1 + e^(-d/T)) + log(1 + e^(d/T))) / 2 is least at
    d/T = 0, i.e. T at the top of its range, where the ECE is near 0."""
    l3, l9 = math.log(3), math.log(9)
    c = calibration(np.array([l3, l3, -l3, l3]), np.ones(4))
    assert c["ece"] == pytest.approx(0.0, abs=1e-12) and len(c["reliability"]) == 1
    b = c["reliability"][0]
    assert b["bin"] == pytest.approx([0.75, 0.8]) and b["votes"] == 4 and b["accuracy"] == 0.75
    assert b["confidence"] == pytest.approx(0.75, abs=1e-12)
    c = calibration(np.array([l9, -l9]), np.ones(2))
    assert c["ece"] == pytest.approx(0.4, abs=1e-12) and c["temperature"] > 100
    assert c["log_loss_at_temperature"] == pytest.approx(math.log(2), abs=1e-4)
    assert c["ece_at_temperature"] < 1e-3  # d / T near 0: confidence near 1/2, as right as it says


def test_temperature_of_a_two_one_split():
    """A pair with margin d = 1, stated 2 times one way and once the other: the log loss of sigmoid(d / T) is least
    at sigmoid(1 / T) = 2/3, 1 / T = ln 2, T = 1 / ln 2 = 1.4427; vote weights and repeated margins agree."""
    t = fit_temperature(np.array([1.0, -1.0]), np.array([2.0, 1.0]))
    assert t == pytest.approx(1 / math.log(2), rel=1e-6)
    assert fit_temperature(np.array([1.0, 1.0, -1.0]), np.ones(3)) == pytest.approx(t, rel=1e-6)


def test_subset_metrics_and_rewardbench_sections_by_hand():
    """alpacaeval-easy: 1 of 2 right; hep-go: 2 of 2; math-prm: 0 of 1; custom: 1 of 2 (one K=3 group with 2
    votes... 1 right). Subset mean (0.5 + 1 + 0 + 0.5) / 4 = 0.5. Sections: Chat = alpacaeval-easy = 0.5;
    Reasoning weighs math-prm as much as all hep-* (2 pairs): (1 * 2 + 0 * 2) / 4 = 0.5 (by pairs it would be 2/3);
    score = mean of sections = 0.5. custom belongs to no section."""
    subsets = ["alpacaeval-easy", "alpacaeval-easy", "hep-go", "hep-go", "math-prm", "custom", None]
    correct = np.array([1.0, 0, 1, 1, 0, 1, 1])
    pairs = np.array([1.0, 1, 1, 1, 1, 2, 1])
    m = subset_metrics(correct, pairs, subsets)
    assert m["subsets"]["alpacaeval-easy"] == {"accuracy": 0.5, "pairs": 2, "groups": 2}
    assert m["subsets"]["custom"] == {"accuracy": 0.5, "pairs": 2, "groups": 1}
    assert m["subset_mean"] == 0.5 and m["sections"] == {"Chat": 0.5, "Reasoning": 0.5} and m["score"] == 0.5
    assert subset_metrics(correct, pairs, [None] * 7) == {}


def test_metrics_hold_every_part_and_round_trip_through_json():
    """An EvalResult with rewards and labels: the metrics hold the ranking, vote, calibration and subset parts, no
    NaN (train writes them with allow_nan=False), and survive to_json / from_json."""
    lab = [ranked((0, 1, 2), "chat"), Labels((0, 1), ((0, 1), (1, 0)), (2, 1), False, "chat")]
    r = (np.array([2.0, 1, 0]), np.array([0.5, 0.0]))
    res = EvalResult(np.array([3.0, 2.0]), np.array([3.0, 3.0]), np.array([1.0, 1.5]), r, tuple(lab))
    m = res.metrics
    assert {"top1_accuracy", "accuracy_majority", "calibration", "subsets"} <= set(m)
    json.dumps(m, allow_nan=False)
    assert EvalResult.from_json(json.loads(json.dumps(res.to_json()))).metrics == m
    with pytest.raises(ValueError, match="same groups"):
        compare(res, EvalResult(np.array([1.0]), np.array([1.0]), np.array([1.0])))


def test_eval_compares_two_models_paired_by_prompt(model_dirs, tmp_path, capsys):
    """`rankrm eval --model A --model B`: each model's metrics and B minus A with a bootstrap interval; the same
    model twice differs by exactly 0. RewardBench-shaped records give per-subset accuracy and sections."""
    rows = [
        {"prompt": f"Say {i}", "chosen": f"{i}", "rejected": "no", "subset": ["alpacaeval-easy", "hep-go"][i % 2]}
        for i in range(8)
    ]
    src = write_jsonl(tmp_path / "rb.jsonl", rows)
    a, b = tmp_path / "a", tmp_path / "b"  # saved reward models: a backbone alone would get a fresh random head
    for name, out in (("llama-chat", a), ("qwen2-chat", b)):
        RewardModel.from_pretrained(str(model_dirs[name])).save_pretrained(out)
    assert main(["eval", "--model", str(a), "--model", str(a), "--data", str(src), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = out["differences"][0]
    assert d["accuracy_gain"] == 0 and d["accuracy_gain_ci95"] == [0, 0] and d["log_loss_change"] == 0
    assert set(out["models"][0]["subsets"]) == {"alpacaeval-easy", "hep-go"}
    assert set(out["models"][0]["sections"]) == {"Chat", "Reasoning"}
    pytest.importorskip("matplotlib")
    assert (
        main(["eval", "--model", str(a), "--model", str(b), "--data", str(src), "--report", str(tmp_path / "report")])
        == 0
    )
    text = capsys.readouterr().out
    for name in ("reliability", "rewards", "subsets"):
        png = (tmp_path / "report" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"**{b} minus {a}**" in summary and "![subsets](subsets.png)" in summary and "calibration: ECE" in summary
    assert f"== {b} minus {a} (paired bootstrap over prompts, 95% CI): accuracy" in text
    assert "calibration: ECE" in text and "subsets (mean accuracy" in text and "sections: Chat" in text
