"""Progress off a terminal: log lines at an interval and at the end, never a carriage return; on a terminal, a bar."""

import io
import logging
import sys

from rankrm import progress
from rankrm.progress import Progress, with_progress


def test_off_a_terminal_progress_is_log_lines_at_the_interval_and_at_the_end(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="rankrm")
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))  # each call one second later
    monkeypatch.setattr(progress, "LOG_EVERY", 2.5)
    with Progress("training", 7, "steps", final_line=True) as p:  # started at t=0
        for i in range(7):
            p.update(1, loss=f"{0.7 - i / 10:.4f}")  # at t = 1..7: a line once 2.5 s have passed (t = 3, 6)
    assert caplog.messages == [
        "training: 3/7 steps (1 steps/s), loss 0.5000  [3s]",
        "training: 6/7 steps (1 steps/s), loss 0.2000  [6s]",
        "training: 7/7 steps (0.875 steps/s), loss 0.1000  [8s]",  # the final line, at close (t = 8)
    ]
    caplog.clear()
    with Progress("scoring", None, "records") as p:  # no final line asked: only the periodic ones
        p.update(5)  # t = 10 after the start at t = 9: under 2.5 s
        p.update(5)  # t = 11
        p.update(5)  # t = 12: a line; close at t = 13 has nothing new to say
    assert caplog.messages == ["scoring: 15 records (5 records/s)  [3s]"]


def test_a_quick_job_off_a_terminal_says_nothing_unless_asked_and_a_disabled_one_never(caplog):
    caplog.set_level(logging.INFO, logger="rankrm")
    assert list(with_progress(range(3), "evaluating", "batches")) == [0, 1, 2]
    assert caplog.messages == []  # under LOG_EVERY seconds and no final line asked
    with Progress("x", 2, enabled=False, final_line=True) as p:
        p.update(2)
    assert caplog.messages == []


def test_on_a_terminal_it_is_a_tqdm_bar(monkeypatch, caplog):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    caplog.set_level(logging.INFO, logger="rankrm")
    with Progress("training", 4, "steps", final_line=True) as p:
        p.update(4, loss="0.1")
        p.write("step 4: done")
    assert "\r" in err.getvalue() and "4/4" in err.getvalue()
    assert caplog.messages == ["step 4: done"]  # a line written past the bar still goes through logging
