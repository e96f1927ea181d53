"""`rankrm data convert`: read groups in any supported format and write them as native or TRL pairwise JSONL."""

from __future__ import annotations

from pathlib import Path

from rankrm.data.containers import write_jsonl
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import read_groups
from rankrm.data.splits import write_native
from rankrm.errors import SettingsError

CONVERT_TARGETS = ("native", "pairwise")


def pairwise_records(groups: list[RankedGroup]):
    """TRL pairwise records, one per stated comparison: strings for a text prompt, messages for a conversation;
    "votes": N where the comparison was stated N > 1 times, "subset" where the group has one (both read back)."""
    for g in groups:
        for i, ((w, l), n) in enumerate(zip(g.comparisons(), g.votes())):
            if isinstance(g.prompt, str):
                rec = {"prompt": g.prompt, "chosen": g.completions[w], "rejected": g.completions[l]}
            else:
                rec = {
                    "prompt": g.prompt,
                    "chosen": [{"role": "assistant", "content": g.completions[w]}],
                    "rejected": [{"role": "assistant", "content": g.completions[l]}],
                }
            if g.margins is not None:
                rec["margin"] = g.margins[i]
            if n > 1:
                rec["votes"] = n
            if g.subset is not None:
                rec["subset"] = g.subset
            yield rec


def convert_data(
    paths, out, to: str, fmt: str = "auto", skip_invalid: bool = False, conflicts: str = "keep"
) -> tuple[ReadReport, int]:
    """Read files and write their groups as native JSONL or TRL pairwise JSONL, atomically; (report, records)."""
    if to not in CONVERT_TARGETS:
        raise SettingsError(f"--to: unknown target format {to!r}. Fix: use one of {', '.join(CONVERT_TARGETS)}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    report = ReadReport()
    groups = read_groups(
        paths, fmt, report, skip_invalid, conflicts
    )  # every error is raised before anything is written
    empty = sum(1 for g in groups for c in g.completions if not c.strip())
    if empty:  # only HH-style dialogues give them; the native and pairwise readers refuse empty completions
        report.notes["empty replies written: reading this file back needs --skip-invalid, which drops them"] += empty
    if to == "native":
        write_native(groups, out)
        return report, len(groups)
    rated = sum(1 for g in groups for a in g.attributes or () if a)
    if rated:  # no silent dropping: the pairwise format has no field for per-completion ratings
        report.notes["completions' rated attributes not written (pairwise records have no field for them)"] += rated
    rows = list(pairwise_records(groups))
    write_jsonl(rows, out)
    return report, len(rows)
