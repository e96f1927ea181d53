"""The judgments of one prompt as a graph: cycles (a > b > a), ranks from (winner, loser) pairs (depth or net wins),
what --conflicts does with repeated and contradictory votes, and the group stating exactly some pairs."""

from __future__ import annotations

import graphlib
from collections import defaultdict

from rankrm.data.groups import Prompt, RankedGroup, ReadReport
from rankrm.errors import DataError, SettingsError


def cycle_problem(cycle: list[int], name) -> tuple[str, str]:
    """(what, chain) of a cycle find_cycle found: "contradictory" for a > b > a, else "cyclic"; and the cycle
    written with name(i) for each member ("completion 0 > completion 2 > completion 0")."""
    return ("contradictory" if len(cycle) == 3 else "cyclic"), " > ".join(name(i) for i in cycle)


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
