"""Stopping a run cleanly: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 finish the current step and write a checkpoint.

Schedulers send SIGTERM (or SIGUSR1, as SLURM's --signal does) before they preempt a job. The first signal sets a
flag that the training loop reads after each optimizer step; the loop then writes a checkpoint, prints how to
resume and raises TrainingInterrupted, which the command turns into exit code 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM, 138 for SIGUSR1). A second SIGINT stops at once, without a checkpoint."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class TrainingInterrupted(Exception):
    """A run stopped by a signal after writing a checkpoint; exit_code is 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written to "
            f"{checkpoint}. Resume with the same command and --resume latest"
        )


class StopSignals:
    """Within the block, the stopping signals set `requested` (the signal number) instead of ending the process."""

    def __init__(self):
        self.requested = 0
        self._saved: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = self.requested or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        self._saved.clear()
