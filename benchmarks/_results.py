"""Writing a benchmark's results: a Markdown table (committed, quoted in the README) and the raw figures as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def save(out: Path, stem: str, head: str, rows: list[str], payload, script: str) -> str:
    """Write out/stem.md (head, the table rows, how to reproduce) and out/stem.json (payload); print and return the
    Markdown."""
    table = head + "\n" + "\n".join(rows) + f"\n\nReproduce: `python benchmarks/{script}`\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(table)
    return table
