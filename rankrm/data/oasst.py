"""Reader of OpenAssistant data: nested trees (one tree per line) or the flat export (one message per line).

Each set of >= 2 ranked assistant replies to a user turn becomes a group whose prompt is the conversation up to
them; groups keep their tree's id, so splitting never puts one conversation on both sides. Each reply's `labels`
(quality, helpfulness, creativity, humor, toxicity, ...: annotators' mean values) are its rated attributes."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path

from rankrm.data.attributes import count_rated, oasst_ratings
from rankrm.data.groups import RankedGroup, ReadReport, iter_records
from rankrm.data.validate import make_group, require_fields
from rankrm.errors import DataError

OASST_ROLES = ("prompter", "assistant")


def _role(message: dict) -> str:
    return "user" if message.get("role") == "prompter" else "assistant"


def _check_oasst_message(m, path, line, name: str) -> None:
    """Validate the fields of one OpenAssistant message that the readers use (a NaN rank, as pandas writes a
    missing integer, is set to null)."""
    fix = "give OpenAssistant messages with text, role (prompter/assistant), rank (null or an integer), replies"
    if not isinstance(m, dict):
        raise DataError(
            path, line, name, f"expected a message object, got {type(m).__name__}", fix, reason="oasst: not a message"
        )
    if isinstance(m.get("rank"), float) and math.isnan(m["rank"]):
        m["rank"] = None
    if not isinstance(m.get("text"), str):
        raise DataError(
            path,
            line,
            f"{name}.text" if name else "text",
            "missing or not a string",
            fix,
            reason="oasst: text missing or not a string",
        )
    if m.get("role") not in OASST_ROLES:
        raise DataError(
            path,
            line,
            f"{name}.role" if name else "role",
            f"expected prompter or assistant, got {m.get('role')!r}",
            fix,
            reason="oasst: unknown role",
        )
    r = m.get("rank")
    if r is not None and (
        isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or int(r) != r or r < 0
    ):
        raise DataError(
            path,
            line,
            f"{name}.rank" if name else "rank",
            f"expected null or a non-negative integer, got {r!r}",
            fix,
            reason="oasst: bad rank",
        )
    if not isinstance(m.get("replies", []), list):
        raise DataError(
            path,
            line,
            f"{name}.replies" if name else "replies",
            "expected a list of messages",
            fix,
            reason="oasst: replies not a list",
        )


def _oasst_groups(root: dict, children, tree: str, line_of, path: Path, report: ReadReport):
    """Walk one OpenAssistant tree; yield a group for each set of >= 2 ranked, live assistant siblings."""
    stack = [(root, [])]
    while stack:
        node, history = stack.pop()
        convo = history + [{"role": _role(node), "content": node["text"]}]
        replies = [r for r in children(node) if not r.get("deleted")]
        n_deleted = sum(1 for r in children(node) if r.get("deleted"))
        if n_deleted:
            report.skipped["deleted messages"] += n_deleted
        ranked = [r for r in replies if r.get("rank") is not None]
        if len(ranked) >= 2 and all(r.get("role") == "assistant" for r in ranked):
            if node.get("role") != "prompter":
                report.skipped["ranked replies not following a user turn"] += 1
            else:
                completions = [r["text"] for r in ranked]
                if len(set(completions)) != len(completions):
                    report.skipped["groups with duplicate replies"] += 1
                else:
                    try:
                        g = make_group(convo, completions, [int(r["rank"]) for r in ranked], path, line_of(node), tree)
                        ratings = tuple(oasst_ratings(r.get("labels"), path, line_of(r)) for r in ranked)
                        if any(ratings):
                            g = dataclasses.replace(g, attributes=ratings)
                            count_rated(report, ratings)
                    except DataError as e:
                        report.skipped[f"invalid group ({e.problem})"] += 1
                    else:
                        n_synthetic = sum(1 for r in ranked if r.get("synthetic"))
                        if n_synthetic:
                            report.notes["synthetic replies kept (humans ranked them with the others)"] += n_synthetic
                        yield g
        elif len(ranked) >= 2:
            report.skipped["ranked user (prompter) replies: not assistant responses"] += 1
        for r in replies:
            stack.append((r, convo))


def _check_oasst_tree(root, path, line) -> None:
    """Validate every message of a nested tree (iteratively: trees can be deep)."""
    stack = [(root, "prompt")]
    while stack:
        node, name = stack.pop()
        _check_oasst_message(node, path, line, name)
        stack += [(r, f"{name}.replies[{i}]") for i, r in enumerate(node.get("replies", []))]


def read_oasst(
    path: Path, report: ReadReport | None = None, skip_invalid: bool = False, conflicts: str = "keep"
) -> list[RankedGroup]:
    """Read OpenAssistant data, nested trees (one tree per line) or the flat export (one message per line).

    Each reply's siblings carry one ranking, so `conflicts` has nothing to act on here (every reader takes it).

    Assistant replies only; deleted messages (and what hangs below them) are dropped; synthetic replies are
    kept (humans ranked them like the others). The prompt is the conversation up to the ranked replies."""
    report = report if report is not None else ReadReport()
    rows = list(iter_records(path, report, skip_invalid))
    if rows and "prompt" in rows[0][1] and "message_tree_id" in rows[0][1]:
        groups = _nested_trees(rows, path, report, skip_invalid)
    else:
        groups = _flat_export(rows, path, report, skip_invalid)
    report.groups += len(groups)
    return groups


def _nested_trees(rows, path, report: ReadReport, skip_invalid: bool) -> list[RankedGroup]:
    """The groups of records that each hold one whole tree, its root message under "prompt"."""
    groups: list[RankedGroup] = []
    for line, obj in rows:
        try:
            if not isinstance(obj.get("prompt"), dict):
                raise DataError(
                    path,
                    line,
                    "prompt",
                    "is not an OpenAssistant message",
                    "give the tree's root message with 'text', 'role' and 'replies'",
                    reason="oasst: not a message",
                )
            _check_oasst_tree(obj["prompt"], path, line)
            tree = obj.get("message_tree_id")
            if not isinstance(tree, str):
                raise DataError(
                    path,
                    line,
                    "message_tree_id",
                    "missing or not a string",
                    "give each tree its id as a string",
                    reason="oasst: bad message_tree_id",
                )
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        root = obj["prompt"]
        if root.get("deleted"):
            report.skipped["deleted trees"] += 1
            continue
        groups += _oasst_groups(root, lambda n: n.get("replies", []), tree, lambda n, _line=line: _line, path, report)
    return groups


def _flat_export(rows, path, report: ReadReport, skip_invalid: bool) -> list[RankedGroup]:
    """The groups of records that each hold one message, linked to its parent by parent_id."""
    by_id, kids, line_of = {}, defaultdict(list), {}
    for line, obj in rows:
        try:
            require_fields(
                obj,
                ("message_id", "text", "role", "message_tree_id"),
                path,
                line,
                "give OpenAssistant messages with message_id, parent_id, text, role, rank",
            )
            obj.pop("replies", None)  # the flat export links messages by parent_id only
            _check_oasst_message(obj, path, line, "")
            for key in ("message_id", "message_tree_id", "parent_id"):
                value = obj.get(key)
                if not isinstance(value, str) and not (key == "parent_id" and value is None):
                    raise DataError(
                        path,
                        line,
                        key,
                        "expected a string id",
                        "give message ids as strings",
                        reason="oasst: id not a string",
                    )
            if obj["message_id"] in by_id:
                raise DataError(
                    path,
                    line,
                    "message_id",
                    f"repeats the id of line {line_of[obj['message_id']]}",
                    "give each message a unique id",
                    reason="oasst: repeated message_id",
                )
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        by_id[obj["message_id"]] = obj
        line_of[obj["message_id"]] = line
        if obj.get("parent_id") is not None:
            kids[obj["parent_id"]].append(obj)
    groups: list[RankedGroup] = []
    for obj in by_id.values():
        if obj.get("parent_id") is None:
            if obj.get("deleted"):
                report.skipped["deleted trees"] += 1
                continue
            groups += _oasst_groups(
                obj,
                lambda n: kids.get(n["message_id"], []),
                obj["message_tree_id"],
                lambda n: line_of[n["message_id"]],
                path,
                report,
            )
    return groups
