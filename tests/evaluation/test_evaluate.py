"""Metrics and their intervals on small hand-made results; checkpoint pruning."""

import numpy as np
import pytest
import torch

from rankrm.evaluation.evaluate import EvalResult, compare


def result(correct, pairs, nll):
    return EvalResult(np.array(correct, float), np.array(pairs, float), np.array(nll, float))


def test_metrics_pool_pairs_and_the_interval_resamples_whole_prompts():
    """Two prompts of 2 pairs: one all right, one all wrong. Accuracy 2/4. A resample draws 2 prompts: both the
    first (accuracy 1, probability 1/4), both the second (0, 1/4) or one of each (1/2, 1/2): the 95% interval
    runs from 0 to 1. Log loss: (0.2 + 1.0) / 4 = 0.3; the mean per-prompt loss (0.1 + 0.5) / 2 = 0.3."""
    r = result([2, 0], [2, 2], [0.2, 1.0])
    m = r.metrics
    assert m["accuracy"] == 0.5 and m["pairs"] == 4 and m["groups"] == 2
    assert m["log_loss"] == pytest.approx(0.3) and m["group_loss"] == pytest.approx(0.3)
    assert m["accuracy_ci95"] == [0.0, 1.0]
    assert m["log_loss_ci95"] == pytest.approx([0.1, 0.5])
    assert r.metrics is m  # computed once


def test_a_prompt_without_pairs_counts_for_nothing():
    r = result([1, 0, 3], [2, 0, 4], [0.5, 0.0, 1.5])
    assert r.metrics["accuracy"] == pytest.approx(4 / 6) and r.metrics["groups"] == 2


def test_the_paired_interval_of_a_change_that_is_the_same_on_every_prompt_is_a_point():
    """Each of 3 prompts (2 pairs) gains one right pair: +1/2 accuracy on every resample, so the interval is
    [0.5, 0.5]; unpaired intervals would be wide. Log loss falls by 0.2 per prompt, -0.1 per pair."""
    before = result([1, 0, 2], [2, 2, 2], [1.0, 1.2, 0.4])
    after = result([2, 1, 3], [2, 2, 2], [0.8, 1.0, 0.2])
    ch = compare(before, after)
    assert ch["accuracy_gain"] == pytest.approx(0.5) and ch["accuracy_gain_ci95"] == pytest.approx([0.5, 0.5])
    assert ch["log_loss_change"] == pytest.approx(-0.1) and ch["log_loss_change_ci95"] == pytest.approx([-0.1, -0.1])
    same = compare(before, before)
    assert same["accuracy_gain"] == 0 and same["accuracy_gain_ci95"] == [0.0, 0.0]


def test_round_trip_through_json():
    r = result([1, 2], [2, 3], [0.1, 0.7])
    back = EvalResult.from_json(r.to_json())
    assert back.metrics == r.metrics


def test_checkpoints_are_pruned_to_the_newest_kept(tmp_path):
    from rankrm.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint

    w = {"w": torch.arange(4.0)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))])
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, w, opt.state_dict(), {"s": step}, {"history": []}, {"seed": 0}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-4", "step-5"]
    blob = load_checkpoint(tmp_path / "step-5")
    assert blob["step"] == 5 and blob["scheduler"] == {"s": 5} and torch.equal(blob["trainable"]["w"], w["w"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
