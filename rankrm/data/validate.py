"""Checks of the native fields (prompt, completions, ranks, pairs, counts, subset) with a DataError naming the file,
the line, the field and the fix; make_group builds a RankedGroup from a record's fields. Every reader builds its
groups with them."""

from __future__ import annotations

import math

from rankrm.data.groups import ROLES, Prompt, RankedGroup
from rankrm.data.judgments import (
    find_cycle,
    group_from_pairs,
)
from rankrm.errors import DataError


def require_fields(obj: dict, keys, path, line, fix: str) -> None:
    """Fail naming the first of keys that a record lacks."""
    for key in keys:
        if key not in obj:
            raise DataError(path, line, key, "is missing", fix)


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
                raise DataError(
                    path,
                    line,
                    f"{name}[{i}]",
                    "is not a message",
                    'write each message as {"role": "user", "content": "..."}',
                )
            if m["role"] not in ROLES:
                raise DataError(
                    path,
                    line,
                    f"{name}[{i}].role",
                    f"unknown role {m['role']!r}",
                    f"use one of {', '.join(ROLES)}",
                    reason=f"{name}: unknown role",
                )
            msgs.append({"role": m["role"], "content": m["content"]})
        return msgs
    raise DataError(
        path,
        line,
        name,
        f"expected a string or a list of messages, got {type(value).__name__}",
        "give the prompt text or a list of messages",
        reason=f"{name}: not text or messages",
    )


def check_completions(
    value, path, line, name="completions", allow_empty: bool = False, min_k: int = 2
) -> tuple[str, ...]:
    """Validate K >= min_k distinct, non-empty completion strings (empty ones allowed where the source means them);
    min_k is 2 for a ranking, 1 for rated completions."""
    if not isinstance(value, list):
        raise DataError(
            path,
            line,
            name,
            f"expected a list of strings, got {type(value).__name__}",
            "give the completions as a JSON list of strings",
            reason=f"{name}: not a list",
        )
    if len(value) < min_k:
        raise DataError(
            path,
            line,
            name,
            f"has {len(value)} completion(s); a ranking needs at least 2" if min_k == 2 else "is empty",
            "give K >= 2 completions for the prompt, or drop the record",
            reason="K < 2",
        )
    seen = {}
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"expected a string, got {type(c).__name__}",
                "give each completion as a string",
                reason=f"{name}: not a string",
            )
        if not c.strip() and not allow_empty:
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                "is empty",
                "remove the empty completion (or pass --skip-invalid to drop such records)",
                reason="empty completion",
            )
        if c in seen:
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"duplicates {name}[{seen[c]}]",
                "keep one copy of each completion (merge their ranks)",
                reason="duplicate completions in a group",
            )
        seen[c] = i
    return tuple(value)


def check_ranks(value, k, path, line, name="ranks") -> tuple[int, ...]:
    """Validate a ranks list: K non-negative integers (rank 0 is best; equal ranks are ties)."""
    if value is None:
        return tuple(range(k))
    if not isinstance(value, list):
        raise DataError(
            path,
            line,
            name,
            f"expected a list of integers, got {type(value).__name__}",
            "give one integer rank per completion, 0 = best",
            reason=f"{name}: not a list",
        )
    if len(value) != k:
        raise DataError(
            path,
            line,
            name,
            f"has {len(value)} ranks for {k} completions",
            "give exactly one rank per completion",
            reason="ranks of the wrong length",
        )
    for i, r in enumerate(value):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"expected a non-negative integer, got {r!r}",
                "use integer ranks, 0 = best, equal ranks for ties",
                reason=f"{name}: not a non-negative integer",
            )
    return tuple(value)


def check_number(value, path, line, name) -> float:
    """Validate a finite number (not a bool, not NaN, not infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(
            path,
            line,
            name,
            f"expected a number, got {type(value).__name__}",
            "write a number",
            reason=f"{name.split('[')[0]}: not a number",
        )
    if not math.isfinite(value):
        raise DataError(
            path,
            line,
            name,
            f"is {value}",
            "give a finite number (fix or drop the record)",
            reason=f"{name.split('[')[0]}: NaN or infinite",
        )
    return float(value)


def check_pairs(value, k, path, line, name="pairs") -> tuple[tuple[int, int], ...]:
    """Validate stated comparisons: a list of distinct [winner, loser] index pairs into the completions."""
    fix = "give comparisons as [[winner, loser], ...], indices into completions"
    if not isinstance(value, list) or not value:
        raise DataError(
            path,
            line,
            name,
            "expected a non-empty list of [winner, loser] pairs",
            fix,
            reason=f"{name}: not a list of pairs",
        )
    out = []
    for i, p in enumerate(value):
        if (
            not isinstance(p, list)
            or len(p) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < k for x in p)
            or p[0] == p[1]
        ):
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"expected two different indices below {k}, got {p!r}",
                fix,
                reason=f"{name}: not a pair of indices",
            )
        if tuple(p) in out:
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"repeats the comparison {p}",
                "state it once, and how many times it was stated in counts",
                reason=f"{name}: repeated comparison",
            )
        out.append(tuple(p))
    return tuple(out)


def check_counts(value, n_pairs, path, line, name="counts") -> tuple[int, ...]:
    """Validate vote counts: one positive integer per stated pair."""
    if not isinstance(value, list) or len(value) != n_pairs:
        raise DataError(
            path,
            line,
            name,
            f"expected a list of {n_pairs} positive integers, one per pair",
            "give how many times each pair of pairs was stated, in the same order",
            reason="counts of the wrong length",
        )
    for i, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise DataError(
                path,
                line,
                f"{name}[{i}]",
                f"expected a positive integer, got {c!r}",
                "count each stated comparison (1 or more votes)",
                reason="counts: not a positive integer",
            )
    return tuple(value)


def check_subset(value, path, line, name="subset") -> str | None:
    """Validate a subset / category name: a string, or absent."""
    if value is None or isinstance(value, str):
        return value
    raise DataError(
        path,
        line,
        name,
        f"expected a string, got {type(value).__name__}",
        "name the subset as text, or leave the field out",
        reason=f"{name}: not a string",
    )


def make_group(
    prompt,
    completions,
    ranks,
    path,
    line,
    tree=None,
    pairs=None,
    margins=None,
    counts=None,
    subset=None,
    conflicts: str = "error",
    min_k: int = 2,
) -> RankedGroup:
    """Validate the native fields and build a group (min_k 1: rated completions, which need no ranking)."""
    p = check_prompt(prompt, path, line)
    c = check_completions(completions, path, line, min_k=min_k)
    r = check_ranks(ranks, len(c), path, line)
    if counts is not None and pairs is None:
        raise DataError(
            path,
            line,
            "counts",
            "is given without pairs",
            'give the comparisons as "pairs": [[winner, loser], ...] and one count per pair',
            reason="counts without pairs",
        )
    if pairs is not None:
        stated = check_pairs(pairs, len(c), path, line)
        if ranks is not None and find_cycle(stated) is None:  # a kept cycle's ranks are a summary (net wins)
            for i, (w, l) in enumerate(stated):
                if not r[w] < r[l]:
                    raise DataError(
                        path,
                        line,
                        f"pairs[{i}]",
                        f"says completion {w} beats {l}, ranks say not",
                        "give ranks or pairs, or make them agree",
                        reason="pairs disagree with ranks",
                    )
    n_pairs = len(stated) if pairs is not None else sum(1 for a in r for b in r if a < b)
    n = None if counts is None else check_counts(counts, n_pairs, path, line)
    m = None
    if margins is not None:
        if not isinstance(margins, list) or len(margins) != n_pairs:
            raise DataError(
                path,
                line,
                "margins",
                f"expected a list of {n_pairs} numbers, one per comparison",
                "give one margin per comparison, in the order of pairs (or of the ranks' pairs)",
                reason="margins of the wrong length",
            )
        m = tuple(check_number(x, path, line, f"margins[{i}]") for i, x in enumerate(margins))
    s = check_subset(subset, path, line)
    if pairs is not None:
        return group_from_pairs(p, c, stated, m, path, line, tree, n, s, conflicts)
    return RankedGroup(p, c, r, tree=tree, source=f"{path}:{line}", margins=m, subset=s)
