"""Readers of pairwise preference records: TRL's prompt/chosen/rejected (the dialogues sharing an implicit
prompt, HH-RLHF's, are read in dialogues.py on the same merge).

Every reader turns records into RankedGroups with the validators of groups.py, and takes (path, report,
skip_invalid, conflicts): a bad record raises a DataError naming the file, the line (or record), the field and the
fix, or, with skip_invalid, is counted in report.skipped under its reason. Pairwise records of one prompt become one
group stating exactly their comparisons, each with how many records state it (see merge_comparisons)."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rankrm.data.groups import Prompt, RankedGroup, ReadReport, iter_records, prompt_key
from rankrm.data.judgments import check_conflicts, count_conflicts, cycle_problem, find_cycle, group_from_pairs
from rankrm.data.validate import check_number, check_prompt, check_subset, require_fields
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


def _margin(obj: dict, path, line) -> float | None:
    return None if obj.get("margin") is None else check_number(obj["margin"], path, line, "margin")


def _check_sides(chosen: str, rejected: str, path, line, allow_empty: bool = False) -> None:
    """A comparison needs two different, non-empty replies (empty ones only where the source means them)."""
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip() and not allow_empty:
            raise DataError(
                path,
                line,
                name,
                "is empty",
                "give the reply's text, or drop the record (--skip-invalid drops such records)",
                reason="empty completion",
            )
    if chosen == rejected:
        raise DataError(
            path,
            line,
            "rejected",
            "is the same text as 'chosen'",
            "a comparison needs two different replies: fix or drop the record",
            reason="duplicate completions in a group",
        )


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


# ----------------------------------------------------------------------------------------------------------------
# Pairwise with an explicit prompt (TRL's preference format)


def _reply(value, path, line, name: str) -> str:
    """A pairwise side as text: a string, or a list of one assistant message (TRL's conversational form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if (
            len(value) == 1
            and isinstance(value[0], dict)
            and value[0].get("role") == "assistant"
            and isinstance(value[0].get("content"), str)
        ):
            return value[0]["content"]
        raise DataError(
            path,
            line,
            name,
            f"expected one assistant message, got a list of {len(value)} item(s)",
            f'write {name} as [{{"role": "assistant", "content": "..."}}] or as a string',
            reason=f"{name}: not one assistant message",
        )
    raise DataError(
        path,
        line,
        name,
        f"expected a string or a list of messages, got {type(value).__name__}",
        f"give {name} as text, or as a list with one assistant message",
        reason=f"{name}: not text or messages",
    )


def iter_pairwise(path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"):
    """Read TRL pairwise records {"prompt", "chosen", "rejected", "margin"?, "subset"?}, standard or conversational,
    as a stream of (seq, group) in bounded memory (see merge_stream).

    One record per vote; a record may also carry several votes as "votes": N (how many annotators stated it)."""
    return merge_stream(functools.partial(_pairwise_comparisons, path), path, report, skip_invalid, conflicts)


def _pairwise_comparisons(path: Path, report: ReadReport, skip_invalid: bool):
    """Each valid pairwise record as its list of Comparisons (one per vote)."""
    for seq, (line, obj) in enumerate(iter_records(path, report, skip_invalid)):
        try:
            require_fields(
                obj,
                ("prompt", "chosen", "rejected"),
                path,
                line,
                'write {"prompt": ..., "chosen": ..., "rejected": ...}',
            )
            prompt = check_prompt(obj["prompt"], path, line)
            c, r = obj["chosen"], obj["rejected"]
            if isinstance(c, list) and isinstance(r, list) and (len(c) > 1 or len(r) > 1):
                prompt, chosen, rejected = _whole_conversations(prompt, c, r, path, line)
            else:
                chosen, rejected = _reply(c, path, line, "chosen"), _reply(r, path, line, "rejected")
            _check_sides(chosen, rejected, path, line)
            c, votes = stated_comparison(obj, prompt, chosen, rejected, path, line, seq)
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        yield [c] * votes


def stated_comparison(obj: dict, prompt, chosen: str, rejected: str, path, line: int, seq) -> tuple[Comparison, int]:
    """A record's comparison of chosen over rejected (its margin, subset and fields read and checked) and how many
    times it states it (its votes)."""
    c = Comparison(
        prompt, chosen, rejected, _margin(obj, path, line), line, _subset(obj, path, line), seq, record_fields(obj)
    )
    return c, _votes(obj, path, line)


def _subset(obj: dict, path, line) -> str | None:
    """The record's subset (RewardBench) or category."""
    name = "subset" if "subset" in obj else "category"
    return check_subset(obj.get(name), path, line, name)


def _votes(obj: dict, path, line) -> int:
    """How many annotators stated this record's comparison ("votes", default 1)."""
    n = obj.get("votes", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(
            path,
            line,
            "votes",
            f"expected a positive integer, got {n!r}",
            "give how many annotators stated this comparison (1 or more), or leave the field out",
            reason="votes: not a positive integer",
        )
    return n


def _whole_conversations(prompt: Prompt, chosen: list, rejected: list, path, line) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) when chosen and rejected repeat the prompt before their reply
    (as in ultrafeedback_binarized: a string prompt, and chosen = [user: prompt, assistant: reply])."""
    want = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    replies = []
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        msgs = check_prompt(value, path, line, name)
        if msgs[-1]["role"] != "assistant" or msgs[:-1] != want:
            raise DataError(
                path,
                line,
                name,
                "is a conversation that is not the prompt followed by one assistant reply",
                f'write {name} as [{{"role": "assistant", "content": "..."}}], or as the '
                "prompt's messages plus that reply",
                reason=f"{name}: not the prompt plus one reply",
            )
        replies.append(msgs[-1]["content"])
    return want, replies[0], replies[1]
