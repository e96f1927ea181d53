"""training/loop.py, the parts a process can run alone: the running accuracy, and what a non-finite step does."""

import logging
import math

import pytest

from rankrm.errors import NonFiniteError
from rankrm.training.config import TrainConfig
from rankrm.training.loop import nonfinite as on_nonfinite
from rankrm.training.state import RunState
from rankrm.training.validation import accuracy_of


def test_the_running_accuracy_weighs_steps_by_their_pairs():
    """3 of 4 right, then 1 of 4: 4 / 8 = 0.5; 3 of 4, then 0 of 1: 3 / 5 = 0.6, not the mean of the steps, 0.375."""
    assert accuracy_of([(3, 4), (1, 4)]) == 0.5
    assert accuracy_of([(3, 4), (0, 1)]) == 0.6
    assert accuracy_of([(0, 0)]) is None and accuracy_of([]) is None


def test_a_non_finite_step_stops_naming_it_or_is_skipped_and_counted(caplog):
    stop = TrainConfig(train_data=["d.jsonl"], learning_rate=3e-5)
    with pytest.raises(NonFiniteError) as e:
        on_nonfinite(stop, RunState(), 4, math.nan, math.inf)
    assert str(e.value) == (
        "step 5: loss nan, gradient norm inf: training stopped, no model saved (the last checkpoint, if any, is "
        "intact). Fix: lower --learning-rate (now 3e-05), or pass --on-nonfinite skip to drop such steps"
    )
    skip, state = TrainConfig(train_data=["d.jsonl"], on_nonfinite="skip"), RunState()
    with caplog.at_level(logging.WARNING):
        on_nonfinite(skip, state, 0, math.inf, 1.0)
        on_nonfinite(skip, state, 6, 0.5, math.nan)
    assert state.skipped_nonfinite == 2
    assert [r.getMessage() for r in caplog.records if r.name == "rankrm.training.loop"] == [
        "warning: step 1: loss inf, gradient norm 1.0: update skipped (--on-nonfinite skip; 1 so far)",
        "warning: step 7: loss 0.5, gradient norm nan: update skipped (--on-nonfinite skip; 2 so far)",
    ]
