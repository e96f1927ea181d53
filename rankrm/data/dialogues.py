"""Pairwise records with an implicit prompt: whole dialogues sharing a prefix (HH-RLHF's "\n\nHuman: ...
\n\nAssistant: ..." strings, or message lists), split into the shared prompt and the two replies, then merged per
prompt as pairwise.py merges TRL's records."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from rankrm.data.comparisons import merge_stream
from rankrm.data.groups import ReadReport, iter_records
from rankrm.data.pairwise import _check_sides, stated_comparison
from rankrm.data.validate import check_prompt, require_fields
from rankrm.errors import DataError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue_messages(text: str, path, line, name: str) -> list[dict]:
    """An HH-RLHF dialogue "\\n\\nHuman: ...\\n\\nAssistant: ..." as user/assistant messages (contents stripped)."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _TURN.split(text)  # [before, role, content, role, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise DataError(
            path,
            line,
            name,
            "does not start with a '\\n\\nHuman:' turn",
            "give HH-RLHF dialogues, or an explicit prompt field (pairwise format)",
            reason=f"{name}: not an HH dialogue",
        )
    return [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def common_prefix_length(a: str, b: str) -> int:
    """How many leading characters a and b share: equal blocks skipped, the block sizes halved down to one."""
    end, n, step = min(len(a), len(b)), 0, 1024
    while step:
        while n + step <= end and a[n : n + step] == b[n : n + step]:
            n += step
        step //= 2
    return n


def split_dialogues(chosen: str, rejected: str, path, line) -> tuple[list[dict], str, str, bool]:
    """(prompt messages, chosen reply, rejected reply, diverged): cut at the last shared "\\n\\nAssistant:".

    Usually that is the last "\\n\\nAssistant:" of both; when the dialogues part earlier (a reply that goes on
    to write further turns itself), the replies keep everything after the shared prefix, and diverged is True."""
    n = common_prefix_length(chosen, rejected)
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        raise DataError(
            path,
            line,
            "rejected",
            "shares no dialogue with 'chosen' up to an '\\n\\nAssistant:' turn",
            "give both dialogues with the same prompt, or an explicit prompt field (pairwise format)",
            reason="chosen and rejected share no prompt",
        )
    prompt = dialogue_messages(chosen[:cut], path, line, "chosen")
    c, r = chosen[cut + len(ASSISTANT) :].strip(), rejected[cut + len(ASSISTANT) :].strip()
    diverged = chosen.rfind(ASSISTANT) != cut or rejected.rfind(ASSISTANT) != cut
    return prompt, c, r, diverged


def split_message_lists(chosen: list, rejected: list, path, line) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) from two conversations sharing all but their last reply."""
    c_msgs, r_msgs = check_prompt(chosen, path, line, "chosen"), check_prompt(rejected, path, line, "rejected")
    n = 0
    for a, b in zip(c_msgs, r_msgs):
        if a != b:
            break
        n += 1
    if n == 0:
        raise DataError(
            path,
            line,
            "rejected",
            "shares no messages with 'chosen'",
            "give both conversations with the same prompt, or an explicit prompt field (pairwise format)",
            reason="chosen and rejected share no prompt",
        )
    replies = []
    for name, msgs in (("chosen", c_msgs), ("rejected", r_msgs)):
        tail = msgs[n:]
        if len(tail) != 1 or tail[0]["role"] != "assistant":
            if c_msgs == r_msgs:
                raise DataError(
                    path,
                    line,
                    "rejected",
                    "is the same conversation as 'chosen'",
                    "a comparison needs two different replies: fix or drop the record",
                    reason="duplicate completions in a group",
                )
            raise DataError(
                path,
                line,
                name,
                f"goes on for {len(tail)} message(s) after the shared prompt, expected one assistant reply",
                "end both conversations with the one reply they compare",
                reason=f"{name}: not one reply after the prompt",
            )
        replies.append(tail[0]["content"])
    return c_msgs[:n], replies[0], replies[1]


def iter_implicit(path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"):
    """Read {"chosen", "rejected", "margin"?} whole dialogues sharing their prompt (HH-RLHF text or message lists)
    as a stream of (seq, group) in bounded memory (see merge_stream).

    An empty final assistant turn in an HH dialogue is kept as an empty reply (in HH-RLHF's harmless data the
    labeler preferred the assistant saying nothing) and counted in report.notes."""
    return merge_stream(functools.partial(_implicit_comparisons, path), path, report, skip_invalid, conflicts)


def _implicit_comparisons(path: Path, report: ReadReport, skip_invalid: bool):
    """Each valid dialogue-pair record as its list of Comparisons (one per vote)."""
    for seq, (line, obj) in enumerate(iter_records(path, report, skip_invalid)):
        try:
            require_fields(
                obj,
                ("chosen", "rejected"),
                path,
                line,
                'write {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}',
            )
            c, r = obj["chosen"], obj["rejected"]
            if isinstance(c, str) and isinstance(r, str):
                prompt, chosen, rejected, diverged = split_dialogues(c, r, path, line)
                _check_sides(chosen, rejected, path, line, allow_empty=True)
            elif isinstance(c, list) and isinstance(r, list):
                prompt, chosen, rejected = split_message_lists(c, r, path, line)
                _check_sides(chosen, rejected, path, line)
                diverged = False
            else:
                raise DataError(
                    path,
                    line,
                    "rejected",
                    f"is a {type(r).__name__} and 'chosen' a {type(c).__name__}",
                    "give both as dialogue strings or both as message lists",
                    reason="chosen and rejected of different types",
                )
            c, votes = stated_comparison(obj, prompt, chosen, rejected, path, line, seq)
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        if diverged:
            report.notes["dialogues that part before their last assistant turn (split where they part)"] += 1
        empty = sum(1 for x in (chosen, rejected) if not x.strip())
        if empty:
            report.notes["empty assistant replies kept (the dialogue's last turn is empty)"] += empty
        yield [c] * votes
