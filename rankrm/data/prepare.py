"""Preparing a data store: the groups streamed out of their files (readers.iter_groups), written as an Arrow file,
tokenized with datasets' map in num_proc processes into Arrow files of token ids, lengths and labels, each file's
SHA-256 in the manifest, the directory swapped into place whole (files.atomic_dir); and open_data, which finds a
run's store in the data cache or prepares it there. Reading a store is store.py's."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from rankrm.data.containers import HUB_PREFIX, check_source
from rankrm.data.encode import attribute_columns
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import iter_groups
from rankrm.data.store import (
    CHUNK,
    GROUPS_FILE,
    MANIFEST,
    VERSION,
    Store,
    fingerprint,
    is_store,
    mark_verified,
    max_token_id,
)
from rankrm.errors import DataError
from rankrm.files import atomic_dir, remove_leftovers
from rankrm.progress import library_bars

log = logging.getLogger(__name__)


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
            "margins": List(Value("float64")),
            "has_margins": Value("bool"),
            "attributes": Value("string"),
            "tokens": Value("int64"),
            "cut": Value("int32"),
            "blind": Value("bool"),
        }
    )


def _write_groups(sources, fmt, report, skip_invalid, conflicts, path: Path) -> tuple[int, bool, dict]:
    """Stream the groups into an Arrow file; returns (groups written, whether they came out in file order, the
    ratings given per attribute name)."""
    import pyarrow as pa

    schema, rows, n, last, ordered, rated = _groups_schema(), [], 0, (-1, -1), True, Counter()
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
            for ratings in g.attributes or ():
                rated.update(ratings.keys())
            if len(rows) >= CHUNK:
                flush()
        if rows:
            flush()
    return n, ordered, dict(sorted(rated.items()))


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
            "margins": pa.array([g.get("margins") or [] for g in groups], pa.list_(pa.float64())),
            "has_margins": pa.array(["margins" in g for g in groups], pa.bool_()),
            "attributes": pa.array(
                [json.dumps(attribute_columns(g["attributes"])) if "attributes" in g else None for g in groups],
                pa.string(),
            ),
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
        n, ordered, rated = _write_groups(sources, fmt, report, skip_invalid, conflicts, raw)
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
            "attributes": rated,  # ratings given per attribute name (the regression objective's targets)
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
    mark_verified(out, manifest["files"])  # just hashed: not hashed again by this process (a rename keeps the mtime)
    return Store(out)


def file_entry(path: Path) -> dict:
    """A store file's size and SHA-256, as the manifest records them."""
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


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
