"""Ranked groups: the one record type, reading records from files, the native and OpenAssistant readers, splitting.

The other formats (pairwise, implicit-prompt dialogues, scored completions) are read in formats.py."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

Location = Union[int, str]  # a line number, or "record N" where a file has no lines (Parquet, JSON lists, datasets)

Messages = list[dict]
Prompt = Union[str, Messages]

ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """Bad input data; the message names the file, the line, the field and the fix."""

    def __init__(self, path, line, field_name, problem, fix, reason: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        fld = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{fld} {problem}. Fix: {fix}")
        self.path, self.line, self.field, self.problem, self.fix = path, line, field_name, problem, fix
        # a short, stable category for --skip-invalid counts; the problem itself may quote values
        base = re.sub(r"\[\d+\]", "[]", field_name) if field_name else None
        self.reason = reason or (f"{base}: {problem}" if base else problem)


@dataclass(frozen=True)
class RankedGroup:
    """One prompt with K >= 2 completions ranked by a labeler (rank 0 is best; equal ranks are ties).

    A group merged from pairwise records may state only some comparisons (a partial order): then `comparisons`
    lists exactly the (winner, loser) pairs stated, and `ranks` is a ranking consistent with them (each
    completion's depth below the best) that states more than was labeled, so only pairs() is to be used for
    training and metrics. `margins`, when the source gave them (TRL's `margin`), align with pairs(); the loss
    does not use them, they are kept for conversion and inspection."""

    prompt: Prompt
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    tree: str | None = None  # conversation this prompt belongs to; groups of one tree are never split apart
    source: str = ""  # "file:line" the group came from, for messages
    stated_pairs: tuple[tuple[int, int], ...] | None = None  # the stated (winner, loser) pairs, if not all of ranks'
    margins: tuple[float, ...] | None = None  # one per pair of pairs(), in that order

    @property
    def k(self) -> int:
        return len(self.completions)

    def comparisons(self) -> list[tuple[int, int]]:
        """The ordered (winner, loser) index pairs this group states; tied or unstated pairs give none."""
        if self.stated_pairs is not None:
            return list(self.stated_pairs)
        return [(i, j) for i in range(self.k) for j in range(self.k) if self.ranks[i] < self.ranks[j]]

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
        if self.margins is not None:
            out["margins"] = list(self.margins)
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

    def merge(self, other: "ReadReport") -> None:
        self.groups += other.groups
        self.records += other.records
        self.skipped.update(other.skipped)
        self.notes.update(other.notes)

    def summary(self) -> str:
        parts = [f"{self.groups} groups"]
        parts += [f"skipped {n} ({reason})" for reason, n in sorted(self.skipped.items())]
        parts += [f"{n} {note}" for note, n in sorted(self.notes.items())]
        return ", ".join(parts)

    def skip(self, e: "DataError", skip_invalid: bool) -> None:
        """Count a bad record under its reason when skipping invalid records; else raise its error."""
        if not skip_invalid:
            raise e
        self.skipped[f"invalid: {e.reason}"] += 1


# ----------------------------------------------------------------------------------------------------------------
# Low-level: records from files. JSONL, a JSON list of objects, CSV (each optionally gzip-compressed), Parquet, and
# Hugging Face datasets: a save_to_disk directory (DIR, or DIR:SPLIT) or, online, a hub id (hf:NAME[/DATA_DIR][:SPLIT]).

HUB_PREFIX = "hf:"
# CSV cells are text; these columns hold JSON. Lists are always JSON arrays; a prompt, chosen or rejected cell is a
# JSON message list when it starts with "[{" (else it is text); a margin cell is a number. Empty cells are absent.
CSV_JSON_FIELDS = ("completions", "ranks", "scores", "ratings", "pairs", "margins")
CSV_MESSAGE_FIELDS = ("prompt", "chosen", "rejected")
CSV_NUMBER_FIELDS = ("margin",)
_LOOKS_LIKE_MESSAGES = re.compile(r"^\s*\[\s*\{")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"


def open_bytes(path: Path):
    """Open a file for reading bytes, through gzip when it starts with gzip's magic number."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _utf8_error(path, line, e: UnicodeDecodeError) -> DataError:
    return DataError(path, line, None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)",
                     "re-encode the file as UTF-8", reason="not valid UTF-8")


def _jsonl_rows(path: Path):
    """(line, object or DataError) for every non-blank line of a JSONL file."""
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _utf8_error(path, lineno, e)
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataError(path, lineno, None, f"malformed JSON ({e.msg} at column {e.colno})",
                                        "write one JSON object per line", reason="malformed JSON")
                continue
            if not isinstance(obj, dict):
                obj = DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}",
                                "write one JSON object per line", reason="not a JSON object")
            yield lineno, obj


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line; a bad line is a DataError naming it."""
    for lineno, obj in _jsonl_rows(path):
        if isinstance(obj, DataError):
            raise obj
        yield lineno, obj


def _json_list_rows(path: Path, data: bytes):
    """("record N", object or DataError) for a file holding one JSON list of objects."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, data[:e.start].count(b"\n") + 1, e) from None
    try:
        objs = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})",
                        "write a JSON list of objects, or one object per line (JSONL)") from None
    if not isinstance(objs, list):
        raise DataError(path, None, None, f"expected a JSON list of records, got {type(objs).__name__}",
                        "write a JSON list of objects, or one object per line (JSONL)")
    for i, obj in enumerate(objs, start=1):
        if not isinstance(obj, dict):
            obj = DataError(path, f"record {i}", None, f"expected a JSON object, got {type(obj).__name__}",
                            "make every element of the list an object", reason="not a JSON object")
        yield f"record {i}", obj


def _csv_cell(path, line, name: str, cell: str):
    """A CSV cell as the value its column means (see CSV_JSON_FIELDS); None when empty."""
    if _NOT_UTF8.search(cell):
        return DataError(path, line, name, "is not valid UTF-8", "re-encode the file as UTF-8",
                         reason="not valid UTF-8")
    if cell == "":
        return None
    if name in CSV_JSON_FIELDS or (name in CSV_MESSAGE_FIELDS and _LOOKS_LIKE_MESSAGES.match(cell)):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as e:
            return DataError(path, line, name, f"malformed JSON in a CSV cell ({e.msg} at column {e.colno})",
                             'write lists as JSON, e.g. ["a", "b"] or [{"role": "user", "content": "..."}]',
                             reason=f"{name}: malformed JSON in a CSV cell")
    if name in CSV_NUMBER_FIELDS:
        try:
            return float(cell)
        except ValueError:
            return DataError(path, line, name, f"expected a number, got {cell[:40]!r}", "write a number",
                             reason=f"{name}: not a number")
    return cell


def _csv_rows(path: Path, data: bytes):
    """(line, object or DataError) for each row of a CSV file with a header; line is where the row starts."""
    delimiter = "\t" if ".tsv" in Path(path).name else ","
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""),
                        delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            yield line, DataError(path, line, None, f"has {len(row)} cells for {len(header)} columns",
                                  "quote cells that contain the delimiter, quotes or line breaks",
                                  reason="wrong number of CSV cells")
            continue
        obj = {}
        for name, cell in zip(header, row):
            value = _csv_cell(path, line, name, cell)
            if isinstance(value, DataError):
                obj = value
                break
            if value is not None:
                obj[name] = value
        yield line, obj


def _parquet_rows(path: Path):
    """("record N", object) for each row of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(path, None, None, "is Parquet, and pyarrow is not installed",
                        "pip install pyarrow") from None
    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                i += 1
                yield f"record {i}", obj
    except (OSError, ValueError, UnicodeDecodeError) as e:  # pyarrow's errors derive from these
        raise DataError(path, f"record {i + 1}", None, f"unreadable Parquet ({type(e).__name__}: {e})",
                        "check the file, or write it again") from None


def split_suffix(src: str) -> tuple[str, str | None]:
    """'NAME:SPLIT' -> (NAME, SPLIT); a name without a split gives (NAME, None)."""
    head, sep, tail = src.rpartition(":")
    if sep and tail and "/" not in tail and head:
        return head, tail
    return src, None


def is_dataset_dir(src) -> bool:
    """Whether src names a Hugging Face `datasets` save_to_disk directory (optionally as DIR:SPLIT)."""
    for name in (str(src), split_suffix(str(src))[0]):
        d = Path(name)
        if d.is_dir() and any((d / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return True
    return False


def load_dataset_source(src: str):
    """A `datasets.Dataset` from a save_to_disk directory (DIR[:SPLIT]) or a hub id (hf:NAME[/DATA_DIR][:SPLIT])."""
    try:
        import datasets
    except ImportError:
        raise DataError(src, None, None, "is a Hugging Face dataset, and `datasets` is not installed",
                        "pip install datasets") from None
    name, split = split_suffix(src[len(HUB_PREFIX):] if src.startswith(HUB_PREFIX) else src)
    try:
        if src.startswith(HUB_PREFIX):
            repo = "/".join(name.split("/")[:2])
            data_dir = "/".join(name.split("/")[2:]) or None
            ds = datasets.load_dataset(repo, data_dir=data_dir, split=split)
        elif Path(src).is_dir():
            name, split = src, None
            ds = datasets.load_from_disk(src)
        else:
            ds = datasets.load_from_disk(name)
    except DataError:
        raise
    except Exception as e:  # the hub, the network and the cache raise many kinds
        raise DataError(src, None, None, f"could not be loaded ({type(e).__name__}: {e})",
                        "check the name, the split and your connection (hub ids need to be online)") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(src, None, None, f"has splits {', '.join(ds)}; none named {split!r}" if split else
                            f"has several splits ({', '.join(ds)})", f"name one, as {name}:SPLIT")
        ds = ds[split]
    return ds


def _raw_rows(path):
    """(location, object or DataError) for every record of a file or dataset, whatever its container."""
    src = str(path)
    if src.startswith(HUB_PREFIX) or is_dataset_dir(src):
        for i, obj in enumerate(load_dataset_source(src), start=1):
            yield f"record {i}", obj
        return
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            yield from _parquet_rows(path)
            return
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        with open_bytes(path) as f:
            yield from _csv_rows(path, f.read())
        return
    with open_bytes(path) as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"[") and not name.endswith(".jsonl"):  # a .jsonl file is read line by line, whatever it holds
        with open_bytes(path) as f:
            yield from _json_list_rows(path, f.read())
        return
    yield from _jsonl_rows(path)


def iter_records(path, report: ReadReport | None = None,
                 skip_invalid: bool = False) -> Iterator[tuple[Location, dict]]:
    """Yield (location, record) from any supported container; a bad record raises, or is counted and skipped."""
    for loc, obj in _raw_rows(path):
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
                                f"use one of {', '.join(ROLES)}", reason=f"{name}: unknown role")
            msgs.append({"role": m["role"], "content": m["content"]})
        return msgs
    raise DataError(path, line, name, f"expected a string or a list of messages, got {type(value).__name__}",
                    "give the prompt text or a list of messages", reason=f"{name}: not text or messages")


def check_completions(value, path, line, name="completions", allow_empty: bool = False) -> tuple[str, ...]:
    """Validate K >= 2 distinct, non-empty completion strings (empty ones allowed where the source means them)."""
    if not isinstance(value, list):
        raise DataError(path, line, name, f"expected a list of strings, got {type(value).__name__}",
                        "give the completions as a JSON list of strings", reason=f"{name}: not a list")
    if len(value) < 2:
        raise DataError(path, line, name, f"has {len(value)} completion(s); a ranking needs at least 2",
                        "give K >= 2 completions for the prompt, or drop the record", reason="K < 2")
    seen = {}
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise DataError(path, line, f"{name}[{i}]", f"expected a string, got {type(c).__name__}",
                            "give each completion as a string", reason=f"{name}: not a string")
        if not c.strip() and not allow_empty:
            raise DataError(path, line, f"{name}[{i}]", "is empty",
                            "remove the empty completion (or pass --skip-invalid to drop such records)",
                            reason="empty completion")
        if c in seen:
            raise DataError(path, line, f"{name}[{i}]", f"duplicates {name}[{seen[c]}]",
                            "keep one copy of each completion (merge their ranks)",
                            reason="duplicate completions in a group")
        seen[c] = i
    return tuple(value)


def check_ranks(value, k, path, line, name="ranks") -> tuple[int, ...]:
    """Validate a ranks list: K non-negative integers (rank 0 is best; equal ranks are ties)."""
    if value is None:
        return tuple(range(k))
    if not isinstance(value, list):
        raise DataError(path, line, name, f"expected a list of integers, got {type(value).__name__}",
                        "give one integer rank per completion, 0 = best", reason=f"{name}: not a list")
    if len(value) != k:
        raise DataError(path, line, name, f"has {len(value)} ranks for {k} completions",
                        "give exactly one rank per completion", reason="ranks of the wrong length")
    for i, r in enumerate(value):
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise DataError(path, line, f"{name}[{i}]", f"expected a non-negative integer, got {r!r}",
                            "use integer ranks, 0 = best, equal ranks for ties",
                            reason=f"{name}: not a non-negative integer")
    return tuple(value)


def check_number(value, path, line, name) -> float:
    """Validate a finite number (not a bool, not NaN, not infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, line, name, f"expected a number, got {type(value).__name__}", "write a number",
                        reason=f"{name.split('[')[0]}: not a number")
    if not math.isfinite(value):
        raise DataError(path, line, name, f"is {value}", "give a finite number (fix or drop the record)",
                        reason=f"{name.split('[')[0]}: NaN or infinite")
    return float(value)


def check_pairs(value, k, path, line, name="pairs") -> tuple[tuple[int, int], ...]:
    """Validate stated comparisons: a list of distinct [winner, loser] index pairs into the completions."""
    fix = "give comparisons as [[winner, loser], ...], indices into completions"
    if not isinstance(value, list) or not value:
        raise DataError(path, line, name, "expected a non-empty list of [winner, loser] pairs", fix,
                        reason=f"{name}: not a list of pairs")
    out = []
    for i, p in enumerate(value):
        if (not isinstance(p, list) or len(p) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < k for x in p) or p[0] == p[1]):
            raise DataError(path, line, f"{name}[{i}]", f"expected two different indices below {k}, got {p!r}", fix,
                            reason=f"{name}: not a pair of indices")
        if tuple(p) in out:
            raise DataError(path, line, f"{name}[{i}]", f"repeats the comparison {p}", "state it once",
                            reason=f"{name}: repeated comparison")
        out.append(tuple(p))
    return tuple(out)


def find_cycle(k: int, pairs) -> list[int] | None:
    """A cycle w1 > w2 > ... > w1 among the (winner, loser) pairs, as indices, or None if they form a partial order."""
    beats = defaultdict(list)
    for w, l in pairs:
        beats[w].append(l)
    state = [0] * k  # 0 unseen, 1 on the current path, 2 done
    for s in range(k):
        if state[s]:
            continue
        path, stack = [], [(s, iter(beats[s]))]
        state[s] = 1
        path.append(s)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                path.pop()
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(beats[nxt])))
    return None


def depth_ranks(k: int, pairs) -> tuple[int, ...]:
    """Ranks consistent with acyclic (winner, loser) pairs: each index's longest chain of winners above it."""
    rank = [0] * k
    for _ in range(k):  # Bellman-Ford style relaxation; k is small (a handful of completions)
        changed = False
        for w, l in pairs:
            if rank[l] < rank[w] + 1:
                rank[l], changed = rank[w] + 1, True
        if not changed:
            break
    return tuple(rank)


def group_from_pairs(prompt: Prompt, completions, pairs, margins, path, line, tree=None) -> RankedGroup:
    """A group stating exactly the given (winner, loser) pairs; plain ranks when they state the same pairs."""
    pairs = tuple(pairs)
    cycle = find_cycle(len(completions), pairs)
    if cycle is not None:
        what = "contradictory" if len(cycle) == 3 else "cyclic"
        raise DataError(path, line, "pairs", f"{what} comparisons: " + " > ".join(f"completion {i}" for i in cycle),
                        "fix the labels so no completion is (transitively) better than itself, or drop them",
                        reason=f"{what} comparisons")
    ranks = depth_ranks(len(completions), pairs)
    g = RankedGroup(prompt, tuple(completions), ranks, tree=tree, source=f"{path}:{line}")
    implied = g.comparisons()
    if set(implied) == set(pairs):  # a ranking states exactly these comparisons: keep the plain form
        order = {p: i for i, p in enumerate(pairs)}
        m = None if margins is None else tuple(margins[order[p]] for p in implied)
        return RankedGroup(prompt, tuple(completions), ranks, tree=tree, source=g.source, margins=m)
    return RankedGroup(prompt, tuple(completions), ranks, tree=tree, source=g.source, stated_pairs=pairs,
                       margins=None if margins is None else tuple(margins))


def make_group(prompt, completions, ranks, path, line, tree=None, pairs=None, margins=None) -> RankedGroup:
    """Validate the native fields and build a group."""
    p = check_prompt(prompt, path, line)
    c = check_completions(completions, path, line)
    r = check_ranks(ranks, len(c), path, line)
    if pairs is not None:
        stated = check_pairs(pairs, len(c), path, line)
        if ranks is not None:
            for i, (w, l) in enumerate(stated):
                if not r[w] < r[l]:
                    raise DataError(path, line, f"pairs[{i}]", f"says completion {w} beats {l}, ranks say not",
                                    "give ranks or pairs, or make them agree", reason="pairs disagree with ranks")
    n_pairs = len(stated) if pairs is not None else sum(1 for a in r for b in r if a < b)
    m = None
    if margins is not None:
        if not isinstance(margins, list) or len(margins) != n_pairs:
            raise DataError(path, line, "margins", f"expected a list of {n_pairs} numbers, one per comparison",
                            "give one margin per comparison, in the order of pairs (or of the ranks' pairs)",
                            reason="margins of the wrong length")
        m = tuple(check_number(x, path, line, f"margins[{i}]") for i, x in enumerate(margins))
    if pairs is not None:
        return group_from_pairs(p, c, stated, m, path, line, tree)
    return RankedGroup(p, c, r, tree=tree, source=f"{path}:{line}", margins=m)


# ----------------------------------------------------------------------------------------------------------------
# Readers: each takes (path, report, skip_invalid) and returns the groups it kept; what it left out is counted


def read_native(path: Path, report: ReadReport | None = None, skip_invalid: bool = False) -> list[RankedGroup]:
    """Read the native format: {"prompt", "completions", "ranks"? | "pairs"?, "margins"?, "tree"?} per record."""
    report = report if report is not None else ReadReport()
    groups = []
    for line, obj in iter_records(path, report, skip_invalid):
        try:
            for key in ("prompt", "completions"):
                if key not in obj:
                    raise DataError(path, line, key, "is missing",
                                    'write {"prompt": ..., "completions": [...], "ranks": [...]}')
            tree = obj.get("tree")
            if tree is not None and not isinstance(tree, str):
                raise DataError(path, line, "tree", "expected a string", "give the conversation id as a string")
            g = make_group(obj["prompt"], obj["completions"], obj.get("ranks"), path, line, tree,
                           obj.get("pairs"), obj.get("margins"))
        except DataError as e:
            report.skip(e, skip_invalid)
            continue
        if not g.comparisons():
            report.skipped["all completions tied: no comparison"] += 1
            continue
        if g.margins is not None:
            report.notes["groups with margins (kept, not used by the loss)"] += 1
        groups.append(g)
    report.groups += len(groups)
    return groups


OASST_ROLES = ("prompter", "assistant")


def _role(message: dict) -> str:
    return "user" if message.get("role") == "prompter" else "assistant"


def _check_oasst_message(m, path, line, name: str) -> None:
    """Validate the fields of one OpenAssistant message that the readers use (a NaN rank, as pandas writes a
    missing integer, is set to null)."""
    fix = "give OpenAssistant messages with text, role (prompter/assistant), rank (null or an integer), replies"
    if not isinstance(m, dict):
        raise DataError(path, line, name, f"expected a message object, got {type(m).__name__}", fix,
                        reason="oasst: not a message")
    if isinstance(m.get("rank"), float) and math.isnan(m["rank"]):
        m["rank"] = None
    if not isinstance(m.get("text"), str):
        raise DataError(path, line, f"{name}.text" if name else "text", "missing or not a string", fix,
                        reason="oasst: text missing or not a string")
    if m.get("role") not in OASST_ROLES:
        raise DataError(path, line, f"{name}.role" if name else "role", f"expected prompter or assistant, got "
                        f"{m.get('role')!r}", fix, reason="oasst: unknown role")
    r = m.get("rank")
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)
                          or int(r) != r or r < 0):
        raise DataError(path, line, f"{name}.rank" if name else "rank", f"expected null or a non-negative integer, "
                        f"got {r!r}", fix, reason="oasst: bad rank")
    if not isinstance(m.get("replies", []), list):
        raise DataError(path, line, f"{name}.replies" if name else "replies", "expected a list of messages", fix,
                        reason="oasst: replies not a list")


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
                        g = make_group(convo, completions, [int(r["rank"]) for r in ranked], path, line_of(node),
                                       tree)
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


def read_oasst(path: Path, report: ReadReport | None = None, skip_invalid: bool = False) -> list[RankedGroup]:
    """Read OpenAssistant data, nested trees (one tree per line) or the flat export (one message per line).

    Assistant replies only; deleted messages (and what hangs below them) are dropped; synthetic replies are
    kept (humans ranked them like the others). The prompt is the conversation up to the ranked replies."""
    report = report if report is not None else ReadReport()
    groups: list[RankedGroup] = []
    rows = list(iter_records(path, report, skip_invalid))
    if rows and "prompt" in rows[0][1] and "message_tree_id" in rows[0][1]:  # nested: one tree per line
        for line, obj in rows:
            try:
                if not isinstance(obj.get("prompt"), dict):
                    raise DataError(path, line, "prompt", "is not an OpenAssistant message",
                                    "give the tree's root message with 'text', 'role' and 'replies'",
                                    reason="oasst: not a message")
                _check_oasst_tree(obj["prompt"], path, line)
                tree = obj.get("message_tree_id")
                if not isinstance(tree, str):
                    raise DataError(path, line, "message_tree_id", "missing or not a string",
                                    "give each tree its id as a string", reason="oasst: bad message_tree_id")
            except DataError as e:
                report.skip(e, skip_invalid)
                continue
            root = obj["prompt"]
            if root.get("deleted"):
                report.skipped["deleted trees"] += 1
                continue
            groups += _oasst_groups(root, lambda n: n.get("replies", []), tree, lambda n, _line=line: _line, path,
                                    report)
    else:  # flat export
        by_id, kids, line_of = {}, defaultdict(list), {}
        for line, obj in rows:
            try:
                for key in ("message_id", "text", "role", "message_tree_id"):
                    if key not in obj:
                        raise DataError(path, line, key, "is missing",
                                        "give OpenAssistant messages with message_id, parent_id, text, role, rank")
                obj.pop("replies", None)  # the flat export links messages by parent_id only
                _check_oasst_message(obj, path, line, "")
                for key in ("message_id", "message_tree_id", "parent_id"):
                    value = obj.get(key)
                    if not isinstance(value, str) and not (key == "parent_id" and value is None):
                        raise DataError(path, line, key, "expected a string id", "give message ids as strings",
                                        reason="oasst: id not a string")
                if obj["message_id"] in by_id:
                    raise DataError(path, line, "message_id", f"repeats the id of line {line_of[obj['message_id']]}",
                                    "give each message a unique id", reason="oasst: repeated message_id")
            except DataError as e:
                report.skip(e, skip_invalid)
                continue
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


def format_of(obj: dict) -> str | None:
    """The format a record's fields show, or None."""
    if "message_tree_id" in obj:
        return "oasst"
    if "chosen" in obj or "rejected" in obj:
        return "pairwise" if "prompt" in obj else "implicit"
    if "completions" in obj:
        c = obj["completions"]
        dicts = isinstance(c, list) and bool(c) and isinstance(c[0], dict)
        return "scored" if dicts or "scores" in obj or "ratings" in obj else "native"
    return None


def detect_format(path, skip_invalid: bool = False) -> str:
    """Guess a file's format from the fields of its first (valid) record."""
    for line, obj in iter_records(path, ReadReport(), skip_invalid):
        fmt = format_of(obj)
        if fmt is None:
            raise DataError(path, line, None, f"unrecognised record with fields {sorted(obj)[:8]}",
                            "use one of the formats (native prompt/completions/ranks; pairwise prompt/chosen/"
                            "rejected; chosen/rejected dialogues; prompt/completions/scores; an OpenAssistant "
                            "export), or name the format with --format")
        return fmt
    raise DataError(path, None, None, "has no records", "give a file with at least one ranked group")


# The other readers need the validators above; formats.py imports them from here.
from .formats import read_implicit, read_pairwise, read_scored  # noqa: E402

READERS = {"native": read_native, "pairwise": read_pairwise, "implicit": read_implicit, "scored": read_scored,
           "oasst": read_oasst}


def check_source(p) -> None:
    """Fail early, naming the path, when a data source is neither a file, a dataset directory nor a hub id."""
    src = str(p)
    if src.startswith(HUB_PREFIX) or is_dataset_dir(src) or Path(src).is_file():
        return
    fix = "check the path" + (" (a directory must be a datasets save_to_disk directory)" if Path(src).is_dir()
                              else "; hub datasets are named hf:OWNER/NAME[:SPLIT]")
    raise DataError(p, None, None, "does not exist" if not Path(src).exists() else "is not a data file", fix)


def read_groups(paths, fmt: str = "auto", report: ReadReport | None = None,
                skip_invalid: bool = False) -> list[RankedGroup]:
    """Read and validate ranked groups from one or more files; exact duplicate groups across files are dropped."""
    report = report if report is not None else ReadReport()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out, seen = [], set()
    for p in paths:
        p = p if str(p).startswith(HUB_PREFIX) else Path(p)
        check_source(p)
        f = detect_format(p, skip_invalid) if fmt == "auto" else fmt
        if f not in READERS:
            raise DataError(p, None, None, f"unknown format {f!r}", f"use one of auto, {', '.join(READERS)}")
        sub = ReadReport()
        for g in READERS[f](p, sub, skip_invalid):
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


def write_jsonl(rows, path: Path) -> None:
    """Write JSON objects one per line (gzip-compressed when the name ends in .gz), atomically: a temporary file
    is renamed into place only once everything is written, so a failure leaves no partial output."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with (gzip.open(tmp, "wt", encoding="utf-8") if path.name.endswith(".gz")
              else open(tmp, "w", encoding="utf-8")) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_native(groups, path: Path) -> None:
    """Write groups as native JSONL, atomically (a temporary file renamed into place)."""
    write_jsonl((g.to_json() for g in groups), path)


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


def prompt_key(prompt: Prompt) -> str:
    """A prompt as one comparable string (messages included)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def identical_prompts(train, held) -> int:
    """How many held-out groups have exactly the prompt of a training group (overlap counts wider: same start)."""
    keys = {prompt_key(g.prompt) for g in train}
    return sum(1 for g in held if prompt_key(g.prompt) in keys)
