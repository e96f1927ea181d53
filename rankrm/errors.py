"""The errors a user can meet and fix: bad data, bad settings, an unusable model or checkpoint, a failed write, a
training run that diverged. Each message names the file, the line, the field or the setting, and the fix.

They share one base, RankrmError, which is what `rankrm` (the CLI) catches: exit 2, one line, no traceback. Any
other exception is a bug of ours and shows its traceback. Each class also subclasses the built-in exception that
it would have been without us (ValueError for bad values, OSError for files and directories), so a library user's
`except ValueError` or `except OSError` keeps working."""

from __future__ import annotations

import re

Location = int | str  # a line number, or "record N" where a file has no lines (Parquet, JSON lists, datasets)


class RankrmError(Exception):
    """Bad input or settings a user can fix; the message names where and the fix. Never a bug of ours."""


class DataError(RankrmError, ValueError):
    """Bad input data; the message names the file, the line, the field and the fix."""

    def __init__(self, path, line, field_name, problem, fix, reason: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        fld = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{fld} {problem}. Fix: {fix}")
        self.path, self.line, self.field, self.problem, self.fix = path, line, field_name, problem, fix
        # a short, stable category for --skip-invalid counts; the problem itself may quote values
        base = re.sub(r"\[\d+\]", "[]", field_name) if field_name else None
        self.reason = reason or (f"{base}: {problem}" if base else problem)

    def __reduce__(self):  # rebuilt from its parts, so that it crosses process boundaries (datasets.map workers)
        return (DataError, (self.path, self.line, self.field, self.problem, self.fix, self.reason))


class SettingsError(RankrmError, ValueError):
    """A bad flag, config file (YAML) setting or option, or a launch that does not fit them; names the setting."""


class ModelError(RankrmError, OSError):
    """A model directory or hub id that cannot be loaded, or a model rankrm cannot read rewards from."""


class CheckpointError(RankrmError, ValueError):
    """A checkpoint that cannot be used: damaged, of another run, or absent; the message says what to do."""


class WriteError(RankrmError, OSError):
    """A write that failed (disk full, permissions, a missing directory); the message names the real path."""


class NonFiniteError(RankrmError, ValueError):
    """The loss, the gradient norm or the weights became NaN or infinite; nothing of that state is saved."""
