"""The data model: RankedGroup, the ReadReport of what a reader kept and skipped, validating the native fields,
splitting by prompt, and writing groups as native JSONL.

Every reader (readers.py and the format modules it imports) builds its groups with the validators here."""

from __future__ import annotations

import graphlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from rankrm.data.containers import records
from rankrm.errors import DataError, Location, SettingsError

Messages = list[dict]
Prompt = str | Messages

ROLES = ("system", "user", "assistant", "tool")


def comparisons(ranks, stated_pairs=None) -> list[tuple[int, int]]:
    """Every (winner, loser) index pair a group states: its stated pairs (a partial order), else every pair its
    ranks order; tied pairs give none. RankedGroup and TokenizedGroup both read their comparisons here."""
    if stated_pairs is not None:
        return list(stated_pairs)
    k = len(ranks)
    return [(i, j) for i in range(k) for j in range(k) if ranks[i] < ranks[j]]


def votes(ranks, stated_pairs=None, counts=None) -> list[int]:
    """How many times each pair of comparisons(ranks, stated_pairs) was stated: counts, else 1 each."""
    return list(counts) if counts is not None else [1] * len(comparisons(ranks, stated_pairs))


def prompt_key(prompt: Prompt) -> str:
    """A prompt as one comparable string, text or messages (JSON, so a text never equals a list of messages)."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def cycle_problem(cycle: list[int], name) -> tuple[str, str]:
    """(what, chain) of a cycle find_cycle found: "contradictory" for a > b > a, else "cyclic"; and the cycle
    written with name(i) for each member ("completion 0 > completion 2 > completion 0")."""
    return ("contradictory" if len(cycle) == 3 else "cyclic"), " > ".join(name(i) for i in cycle)


@dataclass(frozen=True)
class RankedGroup:
    """One prompt with K >= 2 completions ranked by a labeler (rank 0 is best; equal ranks are ties).

    A group merged from pairwise records may state only some comparisons (a partial order): then `stated_pairs`
    lists exactly the (winner, loser) pairs stated, and `ranks` is a ranking consistent with them (each
    completion's depth below the best) that states more than was labeled, so only comparisons() is to be used for
    training and metrics. `margins`, when the source gave them (TRL's `margin`), align with comparisons(); the
    loss does not use them, they are kept for conversion and inspection.

    Human judgments repeat and disagree: `counts`, aligned with `stated_pairs`, says how many times each (winner,
    loser) pair was stated (several annotators), and `stated_pairs` may then hold both (a, b) and (b, a) or a
    cycle. Such a group's `ranks` come from net wins (see net_win_ranks): a summary for ranking metrics, never a
    source of comparisons. None: every pair counts once. `subset`: the record's subset or category (RewardBench's
    layout), for per-subset metrics. `fields`: a pairwise source's other record fields (short text, numbers,
    booleans), each a tuple aligned with comparisons() like margins, for per-comparison slices (`rankrm eval
    --slice FIELD`); None when the records carried none."""

    prompt: Prompt
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    tree: str | None = None  # conversation this prompt belongs to; groups of one tree are never split apart
    source: str = ""  # "file:line" the group came from, for messages
    stated_pairs: tuple[tuple[int, int], ...] | None = None  # the (winner, loser) pairs stated; None: ranks state all
    margins: tuple[float, ...] | None = None  # one per pair of comparisons(), in that order
    counts: tuple[int, ...] | None = None  # times each pair of stated_pairs was stated; None: once each
    subset: str | None = None  # the subset / category the record belongs to (RewardBench's `subset`)
    fields: dict[str, tuple] | None = None  # record field -> one value per pair of comparisons(), in that order

    @property
    def k(self) -> int:
        """How many completions the group ranks."""
        return len(self.completions)

    def comparisons(self) -> list[tuple[int, int]]:
        """Every (winner, loser) index pair this group states; tied or unstated pairs give none."""
        return comparisons(self.ranks, self.stated_pairs)

    def votes(self) -> list[int]:
        """How many times each pair of comparisons() was stated (1 each unless the group has counts)."""
        return votes(self.ranks, self.stated_pairs, self.counts)

    @property
    def split_key(self) -> str:
        """What splitting keeps together: the conversation tree, else the prompt's first message."""
        if self.tree is not None:
            return "tree:" + self.tree
        first = self.prompt if isinstance(self.prompt, str) else self.prompt[0]["content"]
        return "prompt:" + first

    def to_json(self) -> dict:
        """The group as a native record (pairs, margins and tree only when it has them)."""
        out = {"prompt": self.prompt, "completions": list(self.completions), "ranks": list(self.ranks)}
        if self.stated_pairs is not None:
            out["pairs"] = [list(p) for p in self.stated_pairs]
        if self.counts is not None:
            out["counts"] = list(self.counts)
        if self.margins is not None:
            out["margins"] = list(self.margins)
        if self.subset is not None:
            out["subset"] = self.subset
        if self.fields is not None:
            out["fields"] = {name: list(v) for name, v in self.fields.items()}
        if self.tree is not None:
            out["tree"] = self.tree
        return out


@dataclass
class ReadReport:
    """What a reader kept and what it left out, by reason; nothing is dropped without a count here."""

    groups: int = 0
    skipped: Counter = field(default_factory=Counter)
    records: int = 0  # records (lines, rows) read, valid or not
    notes: Counter = field(default_factory=Counter)  # kept, but worth knowing (merged records, margins, ...)

    def merge(self, other: ReadReport) -> None:
        """Add another report's counts to this one."""
        self.groups += other.groups
        self.records += other.records
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)

    def summary(self) -> str:
        """The counts as one line: groups, then what was skipped and noted, by reason."""
        parts = [f"{self.groups} groups"]
        parts += [f"skipped {n} ({reason})" for reason, n in sorted(self.skipped.items())]
        parts += [f"{n} {note}" for note, n in sorted(self.notes.items())]
        return ", ".join(parts)

    def skip(self, e: DataError, skip_invalid: bool) -> None:
        """Count a bad record under its reason when skipping invalid records; else raise its error."""
        if not skip_invalid:
            raise e
        self.skipped[f"invalid: {e.reason}"] += 1


def iter_records(path, report: ReadReport | None = None, skip_invalid: bool = False) -> Iterator[tuple[Location, dict]]:
    """Yield (location, record) from any supported container; a bad record raises, or is counted and skipped."""
    for loc, obj in records(path):
        if report is not None:
            report.records += 1
        if isinstance(obj, DataError):
            if report is None:
                raise obj
            report.skip(obj, skip_invalid)
            continue
        yield loc, obj


# ----------------------------------------------------------------------------------------------------------------
# Validation of the native fields, shared by every reader


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


def check_completions(value, path, line, name="completions", allow_empty: bool = False) -> tuple[str, ...]:
    """Validate K >= 2 distinct, non-empty completion strings (empty ones allowed where the source means them)."""
    if not isinstance(value, list):
        raise DataError(
            path,
            line,
            name,
            f"expected a list of strings, got {type(value).__name__}",
            "give the completions as a JSON list of strings",
            reason=f"{name}: not a list",
        )
    if len(value) < 2:
        raise DataError(
            path,
            line,
            name,
            f"has {len(value)} completion(s); a ranking needs at least 2",
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


def _graph(pairs) -> graphlib.TopologicalSorter:
    """The (winner, loser) pairs as a graph in which each loser comes after its winners."""
    graph = graphlib.TopologicalSorter()
    for w, l in pairs:
        graph.add(l, w)
    return graph


def find_cycle(pairs) -> list[int] | None:
    """A cycle w1 > w2 > ... > w1 among (winner, loser) pairs, from its lowest index, or None for a partial order."""
    if len(pairs) == 1:
        return None if pairs[0][0] != pairs[0][1] else [pairs[0][0], pairs[0][0]]
    try:
        _graph(pairs).prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1][:-1]  # each a winner over the next; graphlib repeats the first at the end
        start = cycle.index(min(cycle))  # the same cycle reads the same, whichever node graphlib found first
        return cycle[start:] + cycle[: start + 1]
    return None


def depth_ranks(k: int, pairs) -> tuple[int, ...]:
    """Ranks consistent with acyclic (winner, loser) pairs: each index's longest chain of winners above it."""
    if len(pairs) == 1:  # one comparison (a pairwise record): the loser one below the winner, the rest at the top
        rank = [0] * k
        rank[pairs[0][1]] = 1
        return tuple(rank)
    winners = defaultdict(list)
    for w, l in pairs:
        winners[l].append(w)
    rank = [0] * k
    for i in _graph(pairs).static_order():  # winners before their losers
        rank[i] = max((rank[w] + 1 for w in winners[i]), default=0)
    return tuple(rank)


def net_win_ranks(k: int, pairs, counts=None) -> tuple[int, ...]:
    """Dense ranks by net wins (votes won minus votes lost), best first: the majority's order where judgments
    disagree (a 2-1 split ranks the majority's winner first; a cycle of single votes ties all its members)."""
    net = [0] * k
    for (w, l), c in zip(pairs, counts if counts is not None else [1] * len(pairs)):
        net[w] += c
        net[l] -= c
    levels = sorted(set(net), reverse=True)
    return tuple(levels.index(x) for x in net)


CONFLICTS = ("keep", "drop", "error")  # what to do with repeated, contradictory and cyclic judgments of one prompt


def check_conflicts(conflicts: str) -> str:
    """Validate a --conflicts policy."""
    if conflicts not in CONFLICTS:
        raise SettingsError(
            f"conflicts {conflicts!r} unknown. Fix: use keep (every vote counts), drop (repeats once, "
            "prompts whose judgments contradict or cycle left out) or error"
        )
    return conflicts


def conflict_counts(pairs, counts=None) -> dict[str, int]:
    """How a group's judgments disagree: extra votes on a pair ("repeated"), pairs stated both ways
    ("contradictory"), and 1 when the other pairs still form a cycle a > b > c > a ("cyclic")."""
    pairs = list(pairs)
    stated = set(pairs)
    both = {(w, l) for w, l in pairs if (l, w) in stated}
    one_way = [p for p in pairs if p not in both]
    return {
        "repeated": (sum(counts) - len(pairs)) if counts is not None else 0,
        "contradictory": len(both) // 2,
        "cyclic": int(find_cycle(one_way) is not None),
    }


def count_conflicts(report: ReadReport, pairs, counts=None) -> None:
    """Note a kept group's repeated, contradictory and cyclic judgments in the report."""
    c = conflict_counts(pairs, counts)
    if c["repeated"]:
        report.notes["repeated comparisons kept as votes (a pair stated again)"] += c["repeated"]
    if c["contradictory"]:
        report.notes["contradictory comparisons kept as votes (a pair stated both ways)"] += c["contradictory"]
    if c["cyclic"]:
        report.notes["groups with cyclic comparisons kept (a > b > c > a)"] += 1


def group_from_pairs(
    prompt: Prompt,
    completions,
    pairs,
    margins,
    path,
    line,
    tree=None,
    counts=None,
    subset=None,
    conflicts: str = "error",
    fields: dict[str, tuple] | None = None,
) -> RankedGroup:
    """A group stating exactly the given (winner, loser) pairs (stated counts[i] times each); plain ranks when they
    state the same pairs once each. A cycle is an error unless conflicts is keep or drop: then it is kept, ranked
    by net wins. margins and fields (name -> values) align with pairs, and are reordered with them."""
    pairs = tuple(pairs)
    counts = None if counts is None or all(c == 1 for c in counts) else tuple(counts)
    cycle = find_cycle(pairs)
    if cycle is not None and conflicts == "error":
        what, chain = cycle_problem(cycle, lambda i: f"completion {i}")
        raise DataError(
            path,
            line,
            "pairs",
            f"{what} comparisons: {chain}",
            "fix the labels so no completion is (transitively) better than itself, drop them, or keep "
            "them as votes (--conflicts keep)",
            reason=f"{what} comparisons",
        )
    k = len(completions)
    ranks = depth_ranks(k, pairs) if cycle is None else net_win_ranks(k, pairs, counts)
    g = RankedGroup(prompt, tuple(completions), ranks, tree=tree, source=f"{path}:{line}", subset=subset)
    implied = g.comparisons()
    if counts is None and cycle is None and set(implied) == set(pairs):  # a ranking states exactly these pairs
        order = [{p: i for i, p in enumerate(pairs)}[p] for p in implied]
        m = None if margins is None else tuple(margins[i] for i in order)
        f = None if fields is None else {name: tuple(v[i] for i in order) for name, v in fields.items()}
        return RankedGroup(
            prompt, tuple(completions), ranks, tree=tree, source=g.source, margins=m, subset=subset, fields=f
        )
    return RankedGroup(
        prompt,
        tuple(completions),
        ranks,
        tree=tree,
        source=g.source,
        stated_pairs=pairs,
        margins=None if margins is None else tuple(margins),
        counts=counts,
        subset=subset,
        fields=None if fields is None else {name: tuple(v) for name, v in fields.items()},
    )


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
) -> RankedGroup:
    """Validate the native fields and build a group."""
    p = check_prompt(prompt, path, line)
    c = check_completions(completions, path, line)
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
