"""One prompt's judgments from several files: the same group (prompt and completions) judged differently in two files
is one group whose votes add up, the rule that merges a prompt's pairwise records within a file (--conflicts keep).
The same judgment in two files (overlapping exports of one dataset, as the shipped OpenAssistant files are) is a
duplicate, not a second vote: the reader drops it as before."""

from __future__ import annotations

import dataclasses

from rankrm.data.groups import RankedGroup
from rankrm.data.judgments import group_from_pairs

MERGED = "groups judged differently in several files, merged (their votes added)"
MARGINS_DROPPED = "groups merged across files whose margins were given for some comparisons only (margins dropped)"


def judgment(g: RankedGroup) -> frozenset:
    """What a group states, whatever the order of its completions: {((winner text, loser text), votes)}."""
    return frozenset(((g.completions[w], g.completions[l]), n) for (w, l), n in zip(g.comparisons(), g.votes()))


def merge_groups(parts: list[RankedGroup], notes) -> RankedGroup:
    """The groups of one prompt and completion set, from several files, as one: each (winner, loser) comparison
    counted as often as the parts state it, completions in the first part's order, margins, fields, subset, tree
    and rated attributes from the first part that gives them; the source is the first part's. notes: a Counter for what was merged."""
    first = parts[0]
    texts = list(first.completions)
    at = {t: i for i, t in enumerate(texts)}
    votes: dict[tuple[int, int], int] = {}
    margin: dict[tuple[int, int], float | None] = {}
    fields: dict[tuple[int, int], dict] = {}
    for g in parts:
        for j, ((w, l), n) in enumerate(zip(g.comparisons(), g.votes())):
            pair = (at[g.completions[w]], at[g.completions[l]])
            votes[pair] = votes.get(pair, 0) + n
            margin.setdefault(pair, g.margins[j] if g.margins is not None else None)
            fields.setdefault(pair, {k: v[j] for k, v in (g.fields or {}).items()})
    pairs = list(votes)
    given = [margin[p] is not None for p in pairs]
    margins = [margin[p] for p in pairs] if all(given) else None
    if any(given) and not all(given):
        notes[MARGINS_DROPPED] += 1
    names = sorted({k for p in pairs for k in fields[p]})
    merged = group_from_pairs(
        first.prompt,
        texts,
        pairs,
        margins,
        first.source,
        None,
        tree=next((g.tree for g in parts if g.tree is not None), None),
        counts=[votes[p] for p in pairs],
        subset=next((g.subset for g in parts if g.subset is not None), None),
        conflicts="keep",
        fields={k: tuple(fields[p].get(k) for p in pairs) for k in names} or None,
    )
    notes[MERGED] += 1
    rated = next((g for g in parts if g.attributes is not None), None)  # ratings: the first part's that has them
    attributes = None
    if rated is not None:
        by_text = dict(zip(rated.completions, rated.attributes))
        attributes = tuple(by_text[t] for t in merged.completions)
    return dataclasses.replace(merged, source=first.source, attributes=attributes)
