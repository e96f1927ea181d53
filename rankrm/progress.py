"""Progress for a terminal and for a log: one helper that is a tqdm bar when stderr is a terminal, and otherwise
(a log file, a pipe, a captured stream) no bar but a line through `logging` every LOG_EVERY seconds, so that
`rankrm train ... > log 2>&1` writes no carriage return and still shows how far a long job got.

Hugging Face's own bars (datasets' `map`, transformers' weight loading) follow the same rule (`library_bars`)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator

LOG_EVERY = 30.0  # seconds between progress lines in a log

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    """Whether progress is drawn: stderr is a terminal, or a Jupyter kernel (tqdm draws a widget there)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progress:
    """A bar on a terminal, periodic log lines elsewhere: call `update(n, **figures)` after each unit of work.

    figures: preformatted values (loss="0.5123") shown after the bar, or at the end of each log line. A log line
    comes every LOG_EVERY seconds, and at the end when final_line is set or a line was written already."""

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        *,
        enabled: bool = True,
        initial: int = 0,
        leave: bool = True,
        final_line: bool = False,
        logger: logging.Logger | None = None,
    ):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.n = self.first = initial
        self.final_line, self.lines, self.log = final_line, 0, logger or log
        self.logged = None  # n at the last line
        self.figures: dict[str, str] = {}
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)

    def update(self, n: int = 1, **figures: str) -> None:
        """n more units done; figures replace the shown ones."""
        self.n += n
        self.figures.update(figures)
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(self.figures, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            if now - self.last >= LOG_EVERY:
                self._line(now)

    def write(self, message: str) -> None:
        """A line of its own (logged), without breaking the bar."""
        if self.bar is None:
            self.log.info(message)
            return
        with self.bar.external_write_mode():
            self.log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and (self.final_line or self.lines) and self.n not in (self.first, self.logged):
            self._line(time.monotonic())
        self.enabled = False

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.t0
        rate = (self.n - self.first) / max(elapsed, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        extra = "".join(f", {k} {v}" for k, v in self.figures.items())
        self.log.info(f"{self.desc}: {done} {self.unit} ({rate:.3g} {self.unit}/s){extra}  [{elapsed:.0f}s]")
        self.lines, self.logged = self.lines + 1, self.n

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_progress(items: Iterable, desc: str, unit: str = "it", *, enabled: bool = True, **kw) -> Iterator:
    """The items, one at a time, with a Progress over them (total: len(items) where it has one)."""
    total = kw.pop("total", len(items) if hasattr(items, "__len__") else None)
    with Progress(desc, total, unit, enabled=enabled, **kw) as p:
        for x in items:
            yield x
            p.update()


@contextlib.contextmanager
def library_bars(*libraries: str):
    """Hugging Face's bars ("datasets": map; "transformers": weight loading) as they are on a terminal, off
    elsewhere, restored after: tqdm has no mode without carriage returns."""
    if on_terminal():
        yield
        return
    import importlib

    mods = [importlib.import_module(f"{name}.utils.logging") for name in libraries]
    was = [m.is_progress_bar_enabled() for m in mods]
    for m in mods:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in zip(mods, was):
            if on:
                m.enable_progress_bar()
