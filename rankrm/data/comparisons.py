"""A prompt's pairwise comparisons merged into one group: the records of one prompt (pairwise.py's, dialogues.py's)
state comparisons, each with how many records state it; repeats are votes or dropped, contradictions and cycles
kept, dropped or refused by --conflicts. merge_stream does it over a file in memory bounded by hashes."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from rankrm.data.groups import Prompt, RankedGroup, ReadReport, prompt_key
from rankrm.data.judgments import check_conflicts, count_conflicts, cycle_problem, find_cycle, group_from_pairs
from rankrm.errors import DataError, Location


@dataclass
class Comparison:
    """One pairwise record: chosen beat rejected for this prompt."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None
    line: Location
    subset: str | None = None
    seq: int = 0  # the record's position in its file: merged groups are ordered by their first record
    fields: dict | None = None  # the record's other short fields, for per-comparison slices (see record_fields)


RECORD_CORE = ("prompt", "chosen", "rejected", "margin", "votes")  # what a comparison is made of, not a slice
FIELD_TEXT_MAX = 100  # longer text is content (an explanation, a critique), not a label to slice by


def record_fields(obj: dict) -> dict | None:
    """A pairwise record's other fields that can label a slice of comparisons (`rankrm eval --slice FIELD`): text
    up to FIELD_TEXT_MAX characters, numbers, booleans; None when it has none."""
    out = {
        k: v
        for k, v in obj.items()
        if k not in RECORD_CORE
        and (isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= FIELD_TEXT_MAX))
        and not (isinstance(v, float) and v != v)
    }
    return out or None


def _pair_fields(comps: list[Comparison]) -> dict[str, tuple] | None:
    """The comparisons' fields as name -> one value per comparison (None where a record lacks the field)."""
    names = sorted({k for c in comps if c.fields for k in c.fields})
    if not names:
        return None
    return {k: tuple((c.fields or {}).get(k) for c in comps) for k in names}


def _at(loc: Location) -> str:
    return f"line {loc}" if isinstance(loc, int) else str(loc)


REPEATED = "repeated comparisons (same prompt, chosen and rejected as an earlier record)"


def merge_comparisons(
    comps: list[Comparison], path, report: ReadReport, skip_invalid: bool, conflicts: str = "keep"
) -> list[RankedGroup]:
    """One group per prompt, stating exactly the comparisons of its records, each with how many records state it.

    conflicts: keep (default) keeps every record as a vote: a repeat adds to its pair's count, a contradiction
    (a > b and b > a) or a cycle across records stays, counted in report.notes. drop: a repeat is kept once
    (counted as skipped) and a prompt whose records contradict or cycle is left out (counted as skipped). error: a
    repeat is kept once, a contradiction or cycle is a DataError naming the lines (with skip_invalid, its records
    are skipped). When the records of a prompt state a full ranking once each, the group is a plain ranked group;
    otherwise it carries its comparisons and counts."""
    check_conflicts(conflicts)
    groups = [g for _, g in _merged(comps, path, report, skip_invalid, conflicts)]
    report.groups += len(groups)
    return groups


def _merged(comps: list[Comparison], path, report: ReadReport, skip_invalid: bool, conflicts: str):
    """(seq of the prompt's first record, group) per prompt of comps (merge_comparisons without the count)."""
    if len({id(c.prompt) for c in comps}) == 1:  # one record's comparisons (its votes): one prompt, no key needed
        buckets = [comps]
    else:
        by_prompt: dict[str, list[Comparison]] = {}
        for c in comps:
            by_prompt.setdefault(prompt_key(c.prompt), []).append(c)
        buckets = list(by_prompt.values())
    for cs in buckets:
        texts: dict[str, int] = {}
        stated: dict[tuple[int, int], Comparison] = {}
        votes: dict[tuple[int, int], int] = {}
        for c in cs:
            w, l = (texts.setdefault(t, len(texts)) for t in (c.chosen, c.rejected))
            if (w, l) in stated and c.fields != stated[(w, l)].fields:
                report.notes["repeated comparisons whose other fields differ (the first record's kept)"] += 1
            if (w, l) in stated and conflicts != "keep":
                report.skipped[REPEATED] += 1
                continue
            stated.setdefault((w, l), c)
            votes[(w, l)] = votes.get((w, l), 0) + 1
        pairs = list(stated)
        try:
            has_margin = [c.margin is not None for c in stated.values()]
            if any(has_margin) and not all(has_margin):
                a = next(c for c in stated.values() if c.margin is not None)
                b = next(c for c in stated.values() if c.margin is None)
                raise DataError(
                    path,
                    b.line,
                    "margin",
                    f"is missing, and {_at(a.line)} gives one for the same prompt",
                    "give a margin on every record of a prompt, or on none",
                    reason="margin: missing",
                )
            cycle = find_cycle(pairs)
            if cycle is not None and conflicts == "error":
                links = [stated[(a, b)] for a, b in zip(cycle, cycle[1:])]
                what, chain = cycle_problem(cycle, lambda i: repr(_short(list(texts)[i])))
                raise DataError(
                    path,
                    links[-1].line,
                    "chosen",
                    f"{what} labels for one prompt ({', '.join(_at(x.line) for x in links)}): {chain}",
                    "fix or drop the records that disagree, or keep them as votes (--conflicts keep)",
                    reason=f"{what} comparisons",
                )
            margins = [c.margin for c in stated.values()] if any(has_margin) else None
            counts = [votes[p] for p in pairs]
            subset = next((c.subset for c in cs if c.subset is not None), None)
            g = group_from_pairs(
                cs[0].prompt,
                list(texts),
                pairs,
                margins,
                path,
                cs[0].line,
                counts=counts,
                subset=subset,
                conflicts=conflicts,
                fields=_pair_fields(list(stated.values())),
            )
        except DataError as e:
            if not skip_invalid:
                raise
            report.skipped[f"invalid: {e.reason} (records)"] += len({c.line for c in cs})
            continue
        if cycle is not None and conflicts == "drop":
            report.skipped["records of prompts whose judgments contradict or cycle (--conflicts drop)"] += len(
                {c.line for c in cs}
            )
            continue
        if conflicts == "keep" and g.stated_pairs is not None:
            count_conflicts(report, g.stated_pairs, g.counts)
        records = len({c.line for c in cs})  # a record with "votes": N is N comparisons but one record
        if records > 1:
            report.notes["pairwise records merged with others of the same prompt"] += records
        if g.stated_pairs is not None:
            report.notes["groups stating a partial order (only the labeled comparisons)"] += 1
        if g.margins is not None:
            report.notes["groups with margins (used by the loss with --margin-scale)"] += 1
        yield cs[0].seq, g


def merge_stream(comparisons, path, report: ReadReport | None, skip_invalid: bool, conflicts: str = "keep"):
    """merge_comparisons over a file read twice, in memory bounded by hashes: yields (seq, group).

    comparisons(report, skip_invalid) iterates the file's records as lists of Comparisons (one per vote). The first
    pass counts each prompt's comparisons under a 64-bit hash of the prompt; the second merges a prompt's records
    as soon as its last one is read, so only the records of prompts still open are held. A group comes out when
    it is complete, which can be after groups of later prompts: seq (its first record's position) restores the
    file's order."""
    check_conflicts(conflicts)
    report = report if report is not None else ReadReport()
    expected: Counter = Counter()
    for cs in comparisons(ReadReport(), True):  # invalid records are left out of both passes alike
        expected[_prompt_hash(cs[0].prompt)] += len(cs)
    pending: dict[bytes, list[Comparison]] = {}
    for cs in comparisons(report, skip_invalid):
        h = _prompt_hash(cs[0].prompt)
        if h not in pending and expected[h] == len(cs):
            ready = cs
        else:
            bucket = pending.setdefault(h, [])
            bucket.extend(cs)
            if len(bucket) < expected[h]:
                continue
            ready = pending.pop(h)
        for seq, g in _merged(ready, path, report, skip_invalid, conflicts):
            report.groups += 1
            yield seq, g
    for cs in pending.values():  # not reached unless the file changed between the passes
        raise DataError(
            path, cs[0].line, None, "changed while it was being read", "read a file that no other program writes to"
        )


def _prompt_hash(prompt: Prompt) -> bytes:
    return hashlib.blake2b(prompt_key(prompt).encode(), digest_size=8).digest()


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[:n] + "..."
