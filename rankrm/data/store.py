"""The prepared data store: ranked groups read, validated and tokenized once, kept on disk as memory-mapped Arrow.

`prepare` streams the groups out of their files (readers.iter_groups: memory bounded by hashes), writes them as an
Arrow file, and tokenizes them with Hugging Face datasets' `map` (batched through the fast tokenizer, in num_proc
processes) into Arrow files of token ids, lengths and labels. A store is a directory built under a temporary name
and renamed into place whole (files.atomic_dir), its manifest (rankrm-store.json) written last: a directory
without a manifest, or whose manifest does not match its files, is never used.

A store is keyed by a fingerprint of what decides its contents: the input files' bytes, the format, --conflicts and
--skip-invalid, the tokenizer, its chat template and the max length (TextEncoder.fingerprint), and rankrm's version
(a new release may read files differently). `rankrm train` and
`rankrm eval` find a store with their fingerprint in the data cache (--data-cache) or prepare one there; `rankrm
data prepare` writes one where asked, and a store directory can be given wherever data files are."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankrm._version import __version__
from rankrm.data.containers import HUB_PREFIX, check_source
from rankrm.data.encode import TokenizedGroup
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import iter_groups
from rankrm.errors import DataError
from rankrm.files import atomic_dir, remove_leftovers
from rankrm.progress import library_bars

MANIFEST = "rankrm-store.json"
VERSION = 2  # 2: a SHA-256 per file and the largest token id in the manifest; chars and fields columns
GROUPS_FILE = "groups.arrow"
CHUNK = 2048  # groups per Arrow record batch while reading

log = logging.getLogger(__name__)


def default_cache() -> Path:
    """Where prepared stores are kept: $RANKRM_DATA_CACHE, else ~/.cache/rankrm/data."""
    return Path(os.environ.get("RANKRM_DATA_CACHE") or Path.home() / ".cache" / "rankrm" / "data")


def is_store(path) -> bool:
    return not str(path).startswith(HUB_PREFIX) and (Path(path) / MANIFEST).is_file()


def source_identity(src) -> dict:
    """What a data source is, for the fingerprint: a file's or dataset directory's bytes; a hub id by its name."""
    s = str(src)
    if s.startswith(HUB_PREFIX):
        return {"hub": s}
    p = Path(s)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return {"bytes": sum(f.stat().st_size for f in files), "sha256": h.hexdigest()}


def fingerprint(sources, fmt: str, conflicts: str, skip_invalid: bool, encoder) -> tuple[str, dict]:
    """(digest, what it covers) of a store built from these sources with these options and this encoder."""
    what = {
        "version": VERSION,
        "rankrm": __version__,
        "sources": [source_identity(s) for s in sources],
        "format": fmt,
        "conflicts": conflicts,
        "skip_invalid": bool(skip_invalid),
        "encoder": encoder.fingerprint(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


# -- preparing --------------------------------------------------------------------------------------------------


def _groups_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.int32()),
            ("order", pa.int64()),
            ("split_key", pa.large_string()),
            ("n_pairs", pa.int32()),
            ("group", pa.large_string()),
        ]
    )


def _token_features():
    from datasets import Features, List, Value

    return Features(
        {
            "ids": List(List(Value("int32"))),
            "ranks": List(Value("int32")),
            "pairs": List(List(Value("int32"))),
            "counts": List(Value("int32")),
            "has_pairs": Value("bool"),
            "has_counts": Value("bool"),
            "subset": Value("string"),
            "chars": List(Value("int32")),
            "fields": Value("string"),
            "tokens": Value("int64"),
            "cut": Value("int32"),
            "blind": Value("bool"),
        }
    )


def _write_groups(sources, fmt, report, skip_invalid, conflicts, path: Path) -> tuple[int, bool]:
    """Stream the groups into an Arrow file; returns (groups written, whether they came out in file order)."""
    import pyarrow as pa

    schema, rows, n, last, ordered = _groups_schema(), [], 0, (-1, -1), True
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def flush():
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
            rows.clear()

        for file, order, g in iter_groups(sources, fmt, report, skip_invalid, conflicts):
            ordered &= (file, order) > last
            last = (file, order)
            rows.append(
                {
                    "file": file,
                    "order": order,
                    "split_key": g.split_key,
                    "n_pairs": len(g.comparisons()),
                    "group": json.dumps(group_record(g), ensure_ascii=False),
                }
            )
            n += 1
            if len(rows) >= CHUNK:
                flush()
        if rows:
            flush()
    return n, ordered


def group_record(g: RankedGroup) -> dict:
    """A group as its native record plus where it came from (for messages)."""
    return {**g.to_json(), "source": g.source}


def native_line(record: str) -> str:
    """A stored group record as a line of native JSONL (without where it came from)."""
    obj = json.loads(record)
    obj.pop("source", None)
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _encode(batch: dict, encoder):
    """datasets.map function: a batch of groups (their JSON) -> token ids and labels, through TextEncoder.tokenize;
    returned as an Arrow table built from flat arrays (no per-token Python objects on the way to Arrow)."""
    import pyarrow as pa

    groups = [json.loads(s) for s in batch["group"]]
    ids, cut = encoder.tokenize(
        [g["prompt"] for g in groups for _ in g["completions"]], [c for g in groups for c in g["completions"]]
    )
    ks = np.fromiter((len(g["completions"]) for g in groups), np.int32, len(groups))
    row_len = np.fromiter((len(r) for r in ids), np.int32, len(ids))
    values = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(row_len.sum()))
    rows = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(row_len)]), pa.int32()), values)
    group_at = np.concatenate([[0], np.cumsum(ks)])
    starts = group_at[:-1]
    tokens = np.add.reduceat(row_len, starts) if len(row_len) else np.zeros(0, np.int64)
    cuts = np.add.reduceat(np.asarray(cut, np.int32), starts) if len(cut) else np.zeros(0, np.int32)
    blind = [len({tuple(r) for r in ids[a:b]}) < b - a for a, b in zip(group_at[:-1], group_at[1:])]
    i32 = pa.list_(pa.int32())
    return pa.table(
        {
            "ids": pa.ListArray.from_arrays(pa.array(group_at, pa.int32()), rows),
            "ranks": pa.array([g["ranks"] for g in groups], i32),
            "pairs": pa.array([g.get("pairs") or [] for g in groups], pa.list_(i32)),
            "counts": pa.array([g.get("counts") or [] for g in groups], i32),
            "has_pairs": pa.array(["pairs" in g for g in groups], pa.bool_()),
            "has_counts": pa.array(["counts" in g for g in groups], pa.bool_()),
            "subset": pa.array([g.get("subset") for g in groups], pa.string()),
            "chars": pa.array([[len(c) for c in g["completions"]] for g in groups], i32),  # for length metrics
            "fields": pa.array([json.dumps(g["fields"]) if "fields" in g else None for g in groups], pa.string()),
            "tokens": pa.array(tokens.astype(np.int64), pa.int64()),
            "cut": pa.array(cuts.astype(np.int32), pa.int32()),
            "blind": pa.array(blind, pa.bool_()),
        }
    )


def prepare(
    sources,
    encoder,
    out,
    fmt: str = "auto",
    conflicts: str = "keep",
    skip_invalid: bool = False,
    num_proc: int = 1,
) -> Store:
    """Read, validate and tokenize the sources into a store at `out` (replacing one there as a whole)."""
    import datasets

    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    for s in sources:
        if is_store(s):
            raise DataError(s, None, None, "is a prepared store already", "give the data files it was prepared from")
        check_source(s)
    fp, what = fingerprint(sources, fmt, conflicts, skip_invalid, encoder)
    out, report, t0 = Path(out), ReadReport(), time.time()
    with library_bars("datasets"), atomic_dir(out) as tmp:  # datasets' bars: on a terminal only
        raw = tmp / "groups-read.arrow"
        n, ordered = _write_groups(sources, fmt, report, skip_invalid, conflicts, raw)
        if n == 0:
            raise DataError(
                ", ".join(sources),
                None,
                None,
                f"gives no comparison to train or evaluate on ({report.summary()})",
                "give files with ranked groups whose completions are not all tied",
            )
        t_read = time.time() - t0
        ds = datasets.Dataset.from_file(str(raw))
        if not ordered:  # pairwise groups merged late: back to their first record's order
            ds = ds.sort(["file", "order"], indices_cache_file_name=str(tmp / "order.arrow"))
            ds = ds.flatten_indices(cache_file_name=str(tmp / GROUPS_FILE))
        else:
            os.link(raw, tmp / GROUPS_FILE)
            ds = datasets.Dataset.from_file(str(tmp / GROUPS_FILE))
        tokens = ds.map(
            _encode,
            batched=True,
            batch_size=512,
            num_proc=num_proc if num_proc > 1 else None,
            fn_kwargs={"encoder": encoder},
            remove_columns=ds.column_names,
            features=_token_features(),
            cache_file_name=str(tmp / "tokens.arrow"),
            new_fingerprint=fp[:32],
            desc="tokenizing",
        )
        token_files = [Path(f["filename"]).name for f in tokens.cache_files]
        for f in ("groups-read.arrow", "order.arrow"):
            (tmp / f).unlink(missing_ok=True)
        for f in tmp.glob("cache-*"):
            f.unlink()
        lengths = np.asarray(tokens.data.column("tokens").to_numpy())
        manifest = {
            "format": "rankrm-store",
            "version": VERSION,
            "fingerprint": fp,
            "covers": what,
            "sources": sources,
            "groups": n,
            "comparisons": int(np.asarray(ds.data.column("n_pairs").to_numpy()).sum()),
            "tokens": int(lengths.sum()),
            "report": {
                "groups": report.groups,
                "records": report.records,
                "skipped": dict(report.skipped),
                "notes": dict(report.notes),
            },
            # hashed as soon as written, from the page cache (datasets writes the token files itself)
            "files": {f: file_entry(tmp / f) for f in [GROUPS_FILE, *token_files]},
            "token_files": token_files,
            "max_token_id": max_token_id(tokens.data.column("ids")),
            "max_length": encoder.max_length,
            "seconds": {"read": round(t_read, 1), "total": round(time.time() - t0, 1)},
        }
        del ds, tokens
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for name in manifest["files"]:  # just hashed: not hashed again by this process (a rename keeps the mtime)
        st = (out / name).stat()
        _VERIFIED.add((str((out / name).resolve()), st.st_size, st.st_mtime_ns))
    return Store(out)


def file_entry(path: Path) -> dict:
    """A store file's size and SHA-256, as the manifest records them."""
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def max_token_id(ids) -> int:
    """The largest token id in an ids column (lists of lists of int32), -1 for none."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(pc.list_flatten(ids))
    return -1 if len(flat) == 0 else int(pc.max(flat).as_py())


# -- reading ----------------------------------------------------------------------------------------------------

# files this process has hashed and found as the manifest says: (path, size, mtime) of each; later opens compare
# size and mtime only (hashing a 2.5 GB store of a million comparisons each time would cost seconds)
_VERIFIED: set[tuple[str, int, int]] = set()


def verify_files(path: Path, files: dict) -> None:
    """Raise ValueError naming the first file whose size or SHA-256 is not the manifest's (hashed once a process)."""
    for name, want in files.items():
        f = path / name
        st = f.stat()
        if st.st_size != want["bytes"]:
            raise ValueError(f"{f} is {st.st_size} bytes, the manifest says {want['bytes']}")
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            continue
        with open(f, "rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != want["sha256"]:
            raise ValueError(f"{f} has changed since it was prepared (its SHA-256 is not the manifest's)")
        _VERIFIED.add(key)


def _mapped(path: Path):
    """An Arrow IPC stream file as a table whose buffers stay in the memory map (nothing read into memory)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


class Store:
    """A prepared store, memory-mapped: the groups' labels and token ids, read row by row when a step needs them."""

    def __init__(self, path):
        import pyarrow as pa

        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
            if self.manifest.get("format") != "rankrm-store" or self.manifest.get("version") != VERSION:
                raise ValueError(f"format {self.manifest.get('format')!r} version {self.manifest.get('version')!r}")
            verify_files(self.path, self.manifest["files"])
            self.groups = _mapped(self.path / GROUPS_FILE)
            self.tokens = pa.concat_tables([_mapped(self.path / f) for f in self.manifest["token_files"]])
            if not len(self.groups) == len(self.tokens) == self.manifest["groups"]:
                raise ValueError(
                    f"{len(self.groups)} groups and {len(self.tokens)} tokenized, the manifest says "
                    f"{self.manifest['groups']}"
                )
        except (OSError, ValueError, KeyError, pa.ArrowException) as e:
            raise DataError(
                self.path,
                None,
                None,
                f"is not a usable prepared store ({e})",
                "delete it and prepare it again (rankrm data prepare, or let train/eval prepare it)",
            ) from None
        self.lengths = np.asarray(self.tokens.column("tokens").to_numpy(), dtype=np.int64)
        self.fingerprint = self.manifest["fingerprint"]

    @property
    def report(self) -> ReadReport:
        r = self.manifest["report"]
        out = ReadReport(r["groups"], records=r["records"])
        out.skipped.update(r["skipped"])
        out.notes.update(r["notes"])
        return out

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    def column(self, name: str) -> np.ndarray:
        table = self.groups if name in self.groups.column_names else self.tokens
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False))

    def view(self, indices=None) -> StoreView:
        return StoreView(self, np.arange(len(self.tokens)) if indices is None else np.asarray(indices, np.int64))

    def check_encoder(self, encoder, what: str) -> None:
        """Refuse a store tokenized otherwise than this model would (another tokenizer, template or max length), or
        holding token ids outside its tokenizer's vocabulary."""
        vocab = len(encoder.tokenizer)
        if self.manifest["max_token_id"] >= vocab:
            raise DataError(
                self.path,
                None,
                None,
                f"holds token id {self.manifest['max_token_id']}, outside the vocabulary of the tokenizer {what} "
                f"uses ({vocab} tokens)",
                "prepare it again with this model (rankrm data prepare FILES --model M --out DIR), or give the "
                "data files",
            )
        if self.manifest["covers"]["encoder"] != encoder.fingerprint():
            raise DataError(
                self.path,
                None,
                None,
                f"was tokenized for another tokenizer, chat template or max "
                f"length (max length {self.manifest['max_length']}) than {what} uses "
                f"(max length {encoder.max_length})",
                "prepare it again with this model and "
                "--max-length (rankrm data prepare FILES --model M --max-length N --out DIR), or give "
                "the data files",
            )


class StoreView(Sequence):
    """Some groups of a store, in a given order, as TokenizedGroups (read from the memory map when indexed)."""

    def __init__(self, store: Store, indices: np.ndarray):
        self.store, self.indices = store, indices
        self.lengths = store.lengths[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return StoreView(self.store, self.indices[i])
        row = self.store.tokens.slice(int(self.indices[i]), 1).to_pylist()[0]
        return TokenizedGroup(
            row["ids"],
            row["ranks"],
            [tuple(p) for p in row["pairs"]] if row["has_pairs"] else None,
            row["counts"] if row["has_counts"] else None,
            row["subset"],
            row.get("chars"),
            json.loads(row["fields"]) if row.get("fields") else None,
        )

    def column(self, name: str) -> np.ndarray:
        return self.store.column(name)[self.indices]

    def records(self):
        """The groups' native records (JSON text), in this view's order, one at a time."""
        col = self.store.groups.column("group")
        for i in self.indices:
            yield col[int(i)].as_py()


# -- finding or preparing a store for a run ---------------------------------------------------------------------


def open_data(
    sources,
    encoder,
    cache_dir,
    fmt: str = "auto",
    conflicts: str = "keep",
    skip_invalid: bool = False,
    num_proc: int = 1,
    what: str = "the model",
) -> Store:
    """The store for these sources: a prepared store given as the only source, else the one in cache_dir with
    their fingerprint, prepared there first when there is none (reported with its size and how to clear it)."""
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    stores = [s for s in sources if is_store(s)]
    if stores:
        if len(sources) > 1:
            raise DataError(
                stores[0],
                None,
                None,
                "is a prepared store, given with other data",
                "give a prepared store alone, or the data files (several files make one store)",
            )
        store = Store(stores[0])
        store.check_encoder(encoder, what)
        log.info(f"data: prepared store {store.path} ({store.manifest['groups']} groups, {_size(store.bytes)})")
        return store
    for s in sources:
        check_source(s)
    cache_dir = Path(cache_dir)
    t0 = time.time()
    fp, _ = fingerprint(sources, fmt, conflicts, skip_invalid, encoder)
    target = cache_dir / fp[:24]
    if is_store(target):
        try:
            store = Store(target)
            if store.fingerprint == fp:
                log.info(
                    f"data: {', '.join(sources)} prepared before: {target} ({_size(store.bytes)}; fingerprint "
                    f"checked in {time.time() - t0:.1f}s)"
                )
                return store
        except DataError as e:
            log.warning(f"warning: {e}; preparing it again")
    if cache_dir.is_dir():
        for p in remove_leftovers(cache_dir):
            log.info(f"removed the leftover of an interrupted prepare: {p}")
    if any(s.startswith(HUB_PREFIX) for s in sources):
        log.info(
            "note: hub datasets are keyed by their name, not their contents: clear the cache to read a new version"
        )
    log.info(
        f"data: preparing {', '.join(sources)} (read, validate, tokenize with {num_proc} process(es)) into {target}"
    )
    store = prepare(sources, encoder, target, fmt, conflicts, skip_invalid, num_proc)
    log.info(
        f"data: prepared in {time.time() - t0:.0f}s: {store.path} ({_size(store.bytes)}); remove it to free the "
        f"space (rm -r {store.path}; every prepared store: rm -r {cache_dir})"
    )
    return store


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
