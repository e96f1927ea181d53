"""The data model: RankedGroup (one prompt, its completions and their ranking), the ReadReport of what a reader kept
and skipped, and the records of a file as (location, object). The checks of the native fields are in validate.py,
the judgments of one prompt (cycles, conflicts, ranks from pairs) in judgments.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from rankrm.data.containers import records
from rankrm.errors import DataError, Location

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
    --slice FIELD`); None when the records carried none. `attributes`: one dict of ratings per completion (name ->
    number, a rating not given absent), for the regression objective (data/attributes.py); None: no ratings. A
    group with ratings may have K = 1 and no comparison (rated single completions)."""

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
    attributes: tuple[dict[str, float], ...] | None = None  # per completion: attribute name -> rating

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
        if self.attributes is not None:
            out["attributes"] = [dict(a) for a in self.attributes]
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
