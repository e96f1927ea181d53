"""Writing a benchmark's results: a Markdown table (committed, quoted in the README), the raw figures as JSON, and
optionally a plot; each file appears whole or not at all (rankrm.files)."""

from __future__ import annotations

import json
from pathlib import Path

from rankrm.files import atomic_file, write_text


def save(out: Path, stem: str, head: str, rows: list[str], payload, script: str, figure=None) -> str:
    """Write out/stem.md (head, the table rows, how to reproduce), out/stem.json (payload) and, given a matplotlib
    figure, out/stem.png; print and return the Markdown. script: the module's name in benchmarks/ ("throughput")."""
    table = head + "\n" + "\n".join(rows) + f"\n\nReproduce: `python -m benchmarks.{script}`\n"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.md", table)
    write_text(out / f"{stem}.json", json.dumps(payload, indent=1) + "\n")
    if figure is not None:
        with atomic_file(out / f"{stem}.png", "wb") as f:
            figure.savefig(f, format="png", dpi=120)
    print(table)
    return table
