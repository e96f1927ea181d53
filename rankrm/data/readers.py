"""Reading ranked groups from files: the native reader, the table of formats (FORMATS: name, help, detection,
reader), telling a file's format from its fields, and read_groups, the one entry point that reads any supported
format from any container.

Every reader takes (path, report, skip_invalid, conflicts) and yields the groups it kept; what it left out is
counted in the report. The readers of the other formats live in pairwise.py, scored.py and oasst.py."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rankrm.data.attributes import check_attributes, count_rated, has_rated_layout, iter_rated
from rankrm.data.comparisons import REPEATED
from rankrm.data.containers import HUB_PREFIX, check_source
from rankrm.data.dialogues import iter_implicit
from rankrm.data.groups import RankedGroup, ReadReport, iter_records
from rankrm.data.judgments import check_conflicts, count_conflicts, find_cycle
from rankrm.data.merge import judgment, merge_groups
from rankrm.data.oasst import read_oasst
from rankrm.data.pairwise import iter_pairwise
from rankrm.data.scored import iter_scored
from rankrm.data.splits import group_digest
from rankrm.data.validate import make_group, require_fields
from rankrm.errors import DataError, SettingsError


def iter_native(
    path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> Iterator[RankedGroup]:
    """Read the native format, one record at a time: {"prompt", "completions", "ranks"? | "pairs"?, "counts"?,
    "margins"?, "subset"?, "attributes"?, "tree"?} per record ("attributes": one ratings object per completion; a
    rated record may have one completion and no ranking).

    "counts", aligned with "pairs", says how many times each comparison was stated (several annotators); pairs may
    then state both directions of a pair or a cycle. conflicts: keep (every vote), drop (repeats counted once, a
    record whose pairs contradict or cycle left out), error (repeats counted once; a contradiction is an error)."""
    check_conflicts(conflicts)
    report = report if report is not None else ReadReport()
    for line, obj in iter_records(path, report, skip_invalid):
        try:
            require_fields(
                obj,
                ("prompt", "completions"),
                path,
                line,
                'write {"prompt": ..., "completions": [...], "ranks": [...]}',
            )
            tree = obj.get("tree")
            if tree is not None and not isinstance(tree, str):
                raise DataError(path, line, "tree", "expected a string", "give the conversation id as a string")
            subset = obj.get("subset", obj.get("category"))
            rated = obj.get("attributes") is not None
            build = functools.partial(
                make_group,
                obj["prompt"],
                obj["completions"],
                obj.get("ranks"),
                path,
                line,
                tree,
                obj.get("pairs"),
                obj.get("margins"),
            )
            g = build(obj.get("counts"), subset, conflicts, min_k=1 if rated else 2)
            if g.counts is not None and conflicts != "keep":  # each comparison once, as without counts
                report.skipped[REPEATED] += sum(g.counts) - len(g.counts)
                g = build(None, subset, conflicts, min_k=1 if rated else 2)
            if rated:
                g = dataclasses.replace(g, attributes=check_attributes(obj["attributes"], g.k, path, line))
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        if g.stated_pairs is not None and find_cycle(g.stated_pairs) is not None and conflicts == "drop":
            report.skipped["records whose pairs contradict or cycle (--conflicts drop)"] += 1
            continue
        if g.stated_pairs is not None and conflicts == "keep":
            count_conflicts(report, g.stated_pairs, g.counts)
        if not g.comparisons() and not any(g.attributes or ()):
            report.skipped["all completions tied: no comparison"] += 1
            continue
        count_rated(report, g.attributes)
        if g.margins is not None:
            report.notes["groups with margins (used by the loss with --margin-scale)"] += 1
        report.groups += 1
        yield g


@dataclass(frozen=True)
class Format:
    """A data format: its --format name, the fields that show it (help texts), whether a record has them, and its
    reader as a stream of (order, group): the order of the group's first record in its file (pairwise records of
    one prompt are merged when the prompt's last record is read, so their groups can come out late)."""

    name: str
    fields: str
    detect: Callable[[dict], bool]
    stream: Callable


def _scored(obj: dict) -> bool:
    c = obj["completions"]
    return (isinstance(c, list) and bool(c) and isinstance(c[0], dict)) or "scores" in obj or "ratings" in obj


# in the order detection tries them: the first whose fields a record has is its format
FORMATS = (
    Format(
        "oasst",
        "an OpenAssistant export (message trees)",
        lambda o: "message_tree_id" in o,
        lambda *a: enumerate(read_oasst(*a)),
    ),
    Format(
        "pairwise",
        "prompt/chosen/rejected (TRL)",
        lambda o: ("chosen" in o or "rejected" in o) and "prompt" in o,
        iter_pairwise,
    ),
    Format(
        "implicit",
        "chosen/rejected whole dialogues (HH-RLHF)",
        lambda o: "chosen" in o or "rejected" in o,
        iter_implicit,
    ),
    Format(
        "scored",
        "prompt/completions/scores or ratings",
        lambda o: "completions" in o and _scored(o),
        lambda *a: enumerate(iter_scored(*a)),
    ),
    Format(
        "rated",
        "prompt/completion or response/scores {name: number} or HelpSteer2's columns (one rated completion)",
        lambda o: "completions" not in o and has_rated_layout(o),
        lambda *a: enumerate(iter_rated(*a)),
    ),
    Format("native", "prompt/completions/ranks", lambda o: "completions" in o, lambda *a: enumerate(iter_native(*a))),
)
FORMAT_NAMES = tuple(f.name for f in FORMATS)
# the help texts of read_groups' options, for every command that takes them (train, eval, data ...)
FORMAT_HELP = "data format: auto (told from a record's fields), or " + "; ".join(
    f"{f.name}: {f.fields}" for f in FORMATS
)


SKIP_INVALID_HELP = "skip invalid records, counting them by reason, instead of stopping at the first"
CONFLICTS_HELP = (
    "repeated, contradictory (a > b and b > a) and cyclic judgments of one prompt: keep (every vote counts in the "
    "loss and metrics; default), drop (a repeat once, prompts whose judgments contradict or cycle left out) or error"
)


def format_of(obj: dict) -> str | None:
    """The format a record's fields show, or None."""
    return next((f.name for f in FORMATS if f.detect(obj)), None)


def detect_format(path, skip_invalid: bool = False) -> str:
    """Guess a file's format from the fields of its first (valid) record."""
    for line, obj in iter_records(path, ReadReport(), skip_invalid):
        fmt = format_of(obj)
        if fmt is None:
            raise DataError(
                path,
                line,
                None,
                f"unrecognised record with fields {sorted(obj)[:8]}",
                "use one of the formats ("
                + "; ".join(f"{f.name}: {f.fields}" for f in FORMATS)
                + "), or name the format with --format",
            )
        return fmt
    raise DataError(path, None, None, "has no records", "give a file with at least one ranked group")


STREAMS = {f.name: f.stream for f in FORMATS}
DUPLICATE = "duplicate groups (same prompt and completions in an earlier record or file)"


def read_groups(
    paths, fmt: str = "auto", report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> list[RankedGroup]:
    """Read and validate ranked groups from one or more files; a group (prompt and completions) that several files
    judge differently is one group with the votes of all (--conflicts keep; drop and error keep the first file's);
    the same judgment in another file is a duplicate, dropped and counted.

    conflicts: what to do with repeated, contradictory and cyclic judgments of one prompt (keep, drop, error)."""
    return [g for _, _, g in sorted(iter_groups(paths, fmt, report, skip_invalid, conflicts), key=lambda x: x[:2])]


def iter_groups(
    paths, fmt: str = "auto", report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> Iterator[tuple[int, int, RankedGroup]]:
    """read_groups as a stream of (file index, order in the file, group), in memory bounded by hashes (the groups
    seen, the prompts of pairwise files); sorting by (file, order) gives read_groups' order. OpenAssistant exports
    are read whole (a tree's messages can be anywhere in the file)."""
    check_conflicts(conflicts)
    report = report if report is not None else ReadReport()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    sources = []
    for p in paths:
        p = p if str(p).startswith(HUB_PREFIX) else Path(p)
        check_source(p)
        f = detect_format(p, skip_invalid) if fmt == "auto" else fmt
        if f not in STREAMS:
            raise SettingsError(f"--format {f!r} unknown. Fix: use one of auto, {', '.join(FORMAT_NAMES)}")
        sources.append((p, f))
    # a group in several files with different judgments gets the votes of all (--conflicts keep): found by a first
    # pass over the files' digests, held until its last file is read, then yielded where it first came. The same
    # judgment again (an overlapping export) is a duplicate; drop and error keep the first file's
    shared = _in_several_files(sources, skip_invalid, conflicts) if conflicts == "keep" and len(sources) > 1 else {}
    pending: dict[bytes, list] = {}  # digest -> [(file, order) of the first, the groups, files still to come]
    seen = set()
    for i, (p, f) in enumerate(sources):
        sub = ReadReport()
        for order, g in STREAMS[f](p, sub, skip_invalid, conflicts):
            key = group_digest(g)
            if key in shared:
                held = pending.setdefault(key, {"at": (i, order), "files": 0, "last": None, "parts": []})
                if held["last"] == i or any(judgment(x) == judgment(g) for x in held["parts"]):
                    sub.groups -= 1  # twice in one file, or the same judgment again: a duplicate, as below
                    sub.skipped[DUPLICATE] += 1
                else:
                    if held["parts"]:
                        sub.groups -= 1  # counted once, in its first file
                    held["parts"].append(g)
                held["files"] += held["last"] != i
                held["last"] = i
                if held["files"] == shared[key]:
                    parts = held["parts"]
                    yield (*held["at"], parts[0] if len(parts) == 1 else merge_groups(parts, sub.notes))
                    del pending[key]
                continue
            if key in seen:
                sub.groups -= 1
                sub.skipped[DUPLICATE] += 1
                continue
            seen.add(key)
            yield i, order, g
        report.merge(sub)
    assert not pending, "a group counted in several files was not found again"  # the files changed while read


def _in_several_files(sources, skip_invalid: bool, conflicts: str) -> dict[bytes, int]:
    """{digest: number of files holding it} for the groups that more than one of the files holds."""
    files: dict[bytes, int] = {}
    last: dict[bytes, int] = {}
    for i, (p, f) in enumerate(sources):
        for _, g in STREAMS[f](p, ReadReport(), skip_invalid, conflicts):
            key = group_digest(g)
            if last.get(key) != i:
                last[key] = i
                files[key] = files.get(key, 0) + 1
    return {k: n for k, n in files.items() if n > 1}
