"""Readers of pairwise preference records: TRL's prompt/chosen/rejected (the dialogues sharing an implicit
prompt, HH-RLHF's, are read in dialogues.py on the same merge).

Every reader turns records into RankedGroups with the validators of groups.py, and takes (path, report,
skip_invalid, conflicts): a bad record raises a DataError naming the file, the line (or record), the field and the
fix, or, with skip_invalid, is counted in report.skipped under its reason. Pairwise records of one prompt become one
group stating exactly their comparisons, each with how many records state it (see comparisons.merge_comparisons)."""

from __future__ import annotations

import functools
from pathlib import Path

from rankrm.data.comparisons import Comparison, merge_stream, record_fields
from rankrm.data.groups import Prompt, ReadReport, iter_records
from rankrm.data.validate import check_number, check_prompt, check_subset, require_fields
from rankrm.errors import DataError


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
