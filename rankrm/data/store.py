"""The prepared data store: ranked groups read, validated and tokenized once, kept on disk as memory-mapped Arrow.
This module reads a store (Store, StoreView, the checks of its files); prepare.py makes one.

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
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankrm._version import __version__
from rankrm.data.containers import HUB_PREFIX
from rankrm.data.encode import TokenizedGroup
from rankrm.data.groups import ReadReport
from rankrm.errors import DataError

MANIFEST = "rankrm-store.json"
# 2: a SHA-256 per file and the largest token id in the manifest; chars and fields columns. 3: margins, or
# (another branch's 3) the rated attributes; 4: both (margins, an "attributes" column, the manifest's ratings)
VERSION = 4
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


def max_token_id(ids) -> int:
    """The largest token id in an ids column (lists of lists of int32), -1 for none."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(pc.list_flatten(ids))
    return -1 if len(flat) == 0 else int(pc.max(flat).as_py())


# -- reading ----------------------------------------------------------------------------------------------------

# files this process has hashed and found as the manifest says: (path, size, mtime) of each; later opens compare
# size and mtime only (hashing a 2.5 GB store of a million comparisons each time would cost seconds)
_VERIFIED: set[tuple[str, int, int]] = set()


def mark_verified(path: Path, names) -> None:
    """Files just written and hashed by this process: later opens compare their size and mtime only."""
    for name in names:
        st = (path / name).stat()
        _VERIFIED.add((str((path / name).resolve()), st.st_size, st.st_mtime_ns))


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
    def attributes(self) -> dict[str, int]:
        """The rated attributes in the store: name -> how many completions were rated on it."""
        return dict(self.manifest.get("attributes", {}))

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
            row["margins"] if row["has_margins"] else None,
            json.loads(row["attributes"]) if row.get("attributes") else None,
        )

    def column(self, name: str) -> np.ndarray:
        return self.store.column(name)[self.indices]

    def records(self):
        """The groups' native records (JSON text), in this view's order, one at a time."""
        col = self.store.groups.column("group")
        for i in self.indices:
            yield col[int(i)].as_py()
