"""training/state.py: the run state a checkpoint keeps, as JSON of the shape it had before it was typed; the
counters a step adds to."""

import time

import pytest
import torch

from rankrm.training.state import Counters, RunState, StepStats


def test_run_state_round_trips_through_the_checkpoints_json():
    assert RunState().to_json() == {"history": [], "skipped_nonfinite": 0}  # no "before" key when there is none
    s = RunState(history=[{"step": 4, "accuracy": 0.75}], skipped_nonfinite=2, before={"accuracy": 0.5})
    d = s.to_json()
    assert d == {"history": [{"step": 4, "accuracy": 0.75}], "skipped_nonfinite": 2, "before": {"accuracy": 0.5}}
    assert RunState.from_json(d) == s
    assert RunState.from_json({}) == RunState()  # an older checkpoint's missing keys read as the defaults


def test_counters_add_each_steps_tokens_and_completions():
    c = Counters()
    c.add(StepStats(loss=torch.tensor(1.0), tokens=30, per_completion_tokens=50, completions=4))
    c.add(StepStats(loss=torch.tensor(2.0), tokens=12, per_completion_tokens=12, completions=2))
    assert (c.tokens, c.per_completion_tokens, c.completions) == (42, 62, 6)
    c.t0, c.eval_seconds = time.time() - 10.0, 3.0  # started 10 s ago, 3 s of it evaluating
    assert c.seconds() == pytest.approx(7.0, abs=0.5)
