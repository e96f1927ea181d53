"""The error every reader raises for bad input data, and where in a file it points."""

from __future__ import annotations

import re

Location = int | str  # a line number, or "record N" where a file has no lines (Parquet, JSON lists, datasets)


class DataError(ValueError):
    """Bad input data; the message names the file, the line, the field and the fix."""

    def __init__(self, path, line, field_name, problem, fix, reason: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        fld = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{fld} {problem}. Fix: {fix}")
        self.path, self.line, self.field, self.problem, self.fix = path, line, field_name, problem, fix
        # a short, stable category for --skip-invalid counts; the problem itself may quote values
        base = re.sub(r"\[\d+\]", "[]", field_name) if field_name else None
        self.reason = reason or (f"{base}: {problem}" if base else problem)
