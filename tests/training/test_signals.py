"""training/signals.py: a stopping signal sets a flag for the loop instead of ending the process; exit codes."""

import os
import signal

import pytest

from rankrm.training.signals import SIGNALS, StopSignals, TrainingInterrupted


def test_a_signal_inside_the_block_is_recorded_and_the_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with StopSignals() as stop:
        assert stop.requested == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM's --signal sends it
        assert stop.requested == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGUSR1  # the first signal is the one kept
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_a_second_ctrl_c_stops_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_exit_code_is_128_plus_the_signal_and_the_message_says_how_to_resume():
    e = TrainingInterrupted(signal.SIGTERM, 12, "out/checkpoints/step-12")
    assert e.exit_code == 143 and TrainingInterrupted(signal.SIGINT, 1, "c").exit_code == 130
    assert TrainingInterrupted(signal.SIGUSR1, 1, "c").exit_code == 138
    assert str(e) == (
        "stopped by SIGTERM after step 12; checkpoint written to out/checkpoints/step-12. Resume with the same "
        "command and --resume latest"
    )
