"""Ranked groups: the one record type, the native JSONL reader, OpenAssistant readers, splitting by prompt."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

Messages = list[dict]
Prompt = Union[str, Messages]

ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """Bad input data; the message names the file, the line, the field and the fix."""

    def __init__(self, path, line, field_name, problem, fix):
        where = f"{path}:{line}" if line is not None else str(path)
        fld = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{fld} {problem}. Fix: {fix}")
        self.path, self.line, self.field, self.problem, self.fix = path, line, field_name, problem, fix


@dataclass(frozen=True)
class RankedGroup:
    """One prompt with K >= 2 completions ranked by a labeler (rank 0 is best; equal ranks are ties)."""

    prompt: Prompt
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    tree: str | None = None  # conversation this prompt belongs to; groups of one tree are never split apart
    source: str = ""  # "file:line" the group came from, for messages

    @property
    def k(self) -> int:
        return len(self.completions)

    def pairs(self) -> list[tuple[int, int]]:
        """The ordered (winner, loser) index pairs this ranking states; tied pairs give none."""
        return [(i, j) for i in range(self.k) for j in range(self.k) if self.ranks[i] < self.ranks[j]]

    @property
    def split_key(self) -> str:
        """What splitting keeps together: the conversation tree, else the prompt's first message."""
        if self.tree is not None:
            return "tree:" + self.tree
        first = self.prompt if isinstance(self.prompt, str) else self.prompt[0]["content"]
        return "prompt:" + first

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "completions": list(self.completions), "ranks": list(self.ranks)}


@dataclass
class ReadReport:
    """What a reader kept and what it left out, by reason; nothing is dropped without a count here."""

    groups: int = 0
    skipped: Counter = field(default_factory=Counter)

    def merge(self, other: "ReadReport") -> None:
        self.groups += other.groups
        self.skipped.update(other.skipped)

    def summary(self) -> str:
        parts = [f"{self.groups} groups"]
        parts += [f"skipped {n} ({reason})" for reason, n in sorted(self.skipped.items())]
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Low-level: lines of JSON from .jsonl / .jsonl.gz


def open_bytes(path: Path):
    """Open a file for reading bytes, through gzip when it starts with gzip's magic number."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line; a bad line is a DataError naming it."""
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)",
                                "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, lineno, None, f"malformed JSON ({e.msg} at column {e.colno})",
                                "write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}",
                                "write one JSON object per line")
            yield lineno, obj


# ----------------------------------------------------------------------------------------------------------------
# Validation of the native fields, shared by every reader


def check_prompt(value, path, line, name="prompt") -> Prompt:
    """Validate a prompt: a non-empty string or a non-empty list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, line, name, "is empty", "give the prompt text or a list of messages")
        return value
    if isinstance(value, list) and value:
        msgs = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(path, line, f"{name}[{i}]", "is not a message",
                                'write each message as {"role": "user", "content": "..."}')
            if m["role"] not in ROLES:
                raise DataError(path, line, f"{name}[{i}].role", f"unknown role {m['role']!r}",
                                f"use one of {', '.join(ROLES)}")
            msgs.append({"role": m["role"], "content": m["content"]})
        return msgs
    raise DataError(path, line, name, f"expected a string or a list of messages, got {type(value).__name__}",
                    "give the prompt text or a list of messages")


def check_completions(value, path, line, name="completions") -> tuple[str, ...]:
    """Validate K >= 2 distinct, non-empty completion strings."""
    if not isinstance(value, list):
        raise DataError(path, line, name, f"expected a list of strings, got {type(value).__name__}",
                        "give the completions as a JSON list of strings")
    if len(value) < 2:
        raise DataError(path, line, name, f"has {len(value)} completion(s); a ranking needs at least 2",
                        "give K >= 2 completions for the prompt, or drop the record")
    seen = {}
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise DataError(path, line, f"{name}[{i}]", f"expected a string, got {type(c).__name__}",
                            "give each completion as a string")
        if not c.strip():
            raise DataError(path, line, f"{name}[{i}]", "is empty", "remove the empty completion")
        if c in seen:
            raise DataError(path, line, f"{name}[{i}]", f"duplicates {name}[{seen[c]}]",
                            "keep one copy of each completion (merge their ranks)")
        seen[c] = i
    return tuple(value)


def check_ranks(value, k, path, line, name="ranks") -> tuple[int, ...]:
    """Validate a ranks list: K non-negative integers, not all equal (else no comparison)."""
    if value is None:
        return tuple(range(k))
    if not isinstance(value, list):
        raise DataError(path, line, name, f"expected a list of integers, got {type(value).__name__}",
                        "give one integer rank per completion, 0 = best")
    if len(value) != k:
        raise DataError(path, line, name, f"has {len(value)} ranks for {k} completions",
                        "give exactly one rank per completion")
    for i, r in enumerate(value):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise DataError(path, line, f"{name}[{i}]", f"expected a non-negative integer, got {r!r}",
                            "use integer ranks, 0 = best, equal ranks for ties")
    return tuple(value)


def make_group(prompt, completions, ranks, path, line, tree=None) -> RankedGroup:
    """Validate the native fields and build a group."""
    p = check_prompt(prompt, path, line)
    c = check_completions(completions, path, line)
    r = check_ranks(ranks, len(c), path, line)
    return RankedGroup(p, c, r, tree=tree, source=f"{path}:{line}")


# ----------------------------------------------------------------------------------------------------------------
# Readers


def read_native(path: Path, report: ReadReport | None = None) -> list[RankedGroup]:
    """Read the native format: {"prompt", "completions", "ranks"?, "tree"?} per line."""
    report = report if report is not None else ReadReport()
    groups = []
    for line, obj in iter_json_lines(path):
        for key in ("prompt", "completions"):
            if key not in obj:
                raise DataError(path, line, key, "is missing",
                                'write {"prompt": ..., "completions": [...], "ranks": [...]}')
        tree = obj.get("tree")
        if tree is not None and not isinstance(tree, str):
            raise DataError(path, line, "tree", "expected a string", "give the conversation id as a string")
        g = make_group(obj["prompt"], obj["completions"], obj.get("ranks"), path, line, tree)
        if not g.pairs():
            report.skipped["all completions tied: no comparison"] += 1
            continue
        groups.append(g)
    report.groups += len(groups)
    return groups


def _role(message: dict) -> str:
    return "user" if message.get("role") == "prompter" else "assistant"


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
                        yield make_group(convo, completions, [r["rank"] for r in ranked], path, line_of(node), tree)
                    except DataError as e:
                        report.skipped[f"invalid group ({e.problem})"] += 1
        elif len(ranked) >= 2:
            report.skipped["ranked user (prompter) replies: not assistant responses"] += 1
        for r in replies:
            stack.append((r, convo))


def read_oasst(path: Path, report: ReadReport | None = None) -> list[RankedGroup]:
    """Read OpenAssistant data, nested trees (one tree per line) or the flat export (one message per line).

    Assistant replies only; deleted messages (and what hangs below them) are dropped; synthetic replies are
    kept (humans ranked them like the others). The prompt is the conversation up to the ranked replies."""
    report = report if report is not None else ReadReport()
    groups: list[RankedGroup] = []
    rows = list(iter_json_lines(path))
    if rows and "prompt" in rows[0][1] and "message_tree_id" in rows[0][1]:  # nested: one tree per line
        for line, obj in rows:
            root = obj["prompt"]
            if not isinstance(root, dict) or "text" not in root:
                raise DataError(path, line, "prompt", "is not an OpenAssistant message",
                                "give the tree's root message with 'text', 'role' and 'replies'")
            if root.get("deleted"):
                report.skipped["deleted trees"] += 1
                continue
            groups += _oasst_groups(root, lambda n: n.get("replies", []), obj["message_tree_id"],
                                    lambda n, _line=line: _line, path, report)
    else:  # flat export
        by_id, kids, line_of = {}, defaultdict(list), {}
        for line, obj in rows:
            for key in ("message_id", "text", "role", "message_tree_id"):
                if key not in obj:
                    raise DataError(path, line, key, "is missing",
                                    "give OpenAssistant messages with message_id, parent_id, text, role, rank")
            by_id[obj["message_id"]] = obj
            line_of[obj["message_id"]] = line
            if obj.get("parent_id") is not None:
                kids[obj["parent_id"]].append(obj)
        for obj in by_id.values():
            if obj.get("parent_id") is None:
                if obj.get("deleted"):
                    report.skipped["deleted trees"] += 1
                    continue
                groups += _oasst_groups(obj, lambda n: kids.get(n["message_id"], []), obj["message_tree_id"],
                                        lambda n: line_of[n["message_id"]], path, report)
    report.groups += len(groups)
    return groups


def detect_format(path: Path) -> str:
    """Guess a file's format from the fields of its first record."""
    for _, obj in iter_json_lines(path):
        if "completions" in obj:
            return "native"
        if "message_tree_id" in obj:
            return "oasst"
        raise DataError(path, 1, None, f"unrecognised record with fields {sorted(obj)[:8]}",
                        "use the native format {prompt, completions, ranks} or an OpenAssistant export, "
                        "or name the format with --format")
    raise DataError(path, None, None, "has no records", "give a file with at least one ranked group")


READERS = {"native": read_native, "oasst": read_oasst}


def read_groups(paths, fmt: str = "auto", report: ReadReport | None = None) -> list[RankedGroup]:
    """Read and validate ranked groups from one or more files; exact duplicate groups across files are dropped."""
    report = report if report is not None else ReadReport()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out, seen = [], set()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DataError(p, None, None, "does not exist", "check the path")
        f = detect_format(p) if fmt == "auto" else fmt
        if f not in READERS:
            raise DataError(p, None, None, f"unknown format {f!r}", f"use one of auto, {', '.join(READERS)}")
        sub = ReadReport()
        for g in READERS[f](p, sub):
            key = group_hash(g)
            if key in seen:
                sub.groups -= 1
                sub.skipped["duplicate groups (same prompt and completions in an earlier record or file)"] += 1
                continue
            seen.add(key)
            out.append(g)
        report.merge(sub)
    return out


def group_hash(g: RankedGroup) -> str:
    """A content hash of a group's prompt and completions (order-free)."""
    blob = json.dumps([g.prompt, sorted(g.completions)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def write_native(groups, path: Path) -> None:
    """Write groups as native JSONL, atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(g.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(path)


def split_by_prompt(groups, eval_fraction: float, seed: int):
    """Split groups into (train, eval) by split key, so a conversation never lands on both sides."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    keys = sorted({g.split_key for g in groups})
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(eval_fraction * len(keys)))
    eval_keys = set(keys[:n_eval])
    train = [g for g in groups if g.split_key not in eval_keys]
    held = [g for g in groups if g.split_key in eval_keys]
    if not train:
        raise ValueError(f"eval_fraction {eval_fraction} leaves no training prompts ({len(keys)} in all)")
    return train, held


def overlap(train, held) -> int:
    """How many held-out groups share a split key with a training group (a leak, if > 0)."""
    keys = {g.split_key for g in train}
    return sum(1 for g in held if g.split_key in keys)
