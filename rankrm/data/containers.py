"""File containers: records as dicts from JSONL, a JSON list, CSV/TSV (each optionally gzip-compressed), Parquet,
and Hugging Face datasets: a save_to_disk directory (DIR, or DIR:SPLIT) or, online, a hub id
(hf:NAME[/DATA_DIR][:SPLIT]); and the atomic JSONL writer.

Nothing here knows a format or what a record means: `records` yields (location, dict or DataError) and the
readers above decide what the fields say."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from rankrm.errors import DataError, Location
from rankrm.files import atomic_file

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
    return DataError(
        path,
        line,
        None,
        f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)",
        "re-encode the file as UTF-8",
        reason="not valid UTF-8",
    )


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
                yield (
                    lineno,
                    DataError(
                        path,
                        lineno,
                        None,
                        f"malformed JSON ({e.msg} at column {e.colno})",
                        "write one JSON object per line",
                        reason="malformed JSON",
                    ),
                )
                continue
            if not isinstance(obj, dict):
                obj = DataError(
                    path,
                    lineno,
                    None,
                    f"expected a JSON object, got {type(obj).__name__}",
                    "write one JSON object per line",
                    reason="not a JSON object",
                )
            yield lineno, obj


def check_file(path) -> None:
    """Fail early, naming the path, when a data file does not exist or is not a file."""
    if not Path(path).is_file():
        problem = "is a directory, not a file" if Path(path).is_dir() else "does not exist"
        raise DataError(path, None, None, problem, "check the path")


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line; a bad line is a DataError naming it."""
    check_file(path)
    for lineno, obj in _jsonl_rows(path):
        if isinstance(obj, DataError):
            raise obj
        yield lineno, obj


def _json_list_rows(path: Path, data: bytes):
    """("record N", object or DataError) for a file holding one JSON list of objects."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, data[: e.start].count(b"\n") + 1, e) from None
    try:
        objs = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            path,
            e.lineno,
            None,
            f"malformed JSON ({e.msg} at column {e.colno})",
            "write a JSON list of objects, or one object per line (JSONL)",
        ) from None
    if not isinstance(objs, list):
        raise DataError(
            path,
            None,
            None,
            f"expected a JSON list of records, got {type(objs).__name__}",
            "write a JSON list of objects, or one object per line (JSONL)",
        )
    for i, obj in enumerate(objs, start=1):
        if not isinstance(obj, dict):
            obj = DataError(
                path,
                f"record {i}",
                None,
                f"expected a JSON object, got {type(obj).__name__}",
                "make every element of the list an object",
                reason="not a JSON object",
            )
        yield f"record {i}", obj


def _csv_cell(path, line, name: str, cell: str):
    """A CSV cell as the value its column means (see CSV_JSON_FIELDS); None when empty."""
    if _NOT_UTF8.search(cell):
        return DataError(
            path, line, name, "is not valid UTF-8", "re-encode the file as UTF-8", reason="not valid UTF-8"
        )
    if cell == "":
        return None
    if name in CSV_JSON_FIELDS or (name in CSV_MESSAGE_FIELDS and _LOOKS_LIKE_MESSAGES.match(cell)):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as e:
            return DataError(
                path,
                line,
                name,
                f"malformed JSON in a CSV cell ({e.msg} at column {e.colno})",
                'write lists as JSON, e.g. ["a", "b"] or [{"role": "user", "content": "..."}]',
                reason=f"{name}: malformed JSON in a CSV cell",
            )
    if name in CSV_NUMBER_FIELDS:
        try:
            return float(cell)
        except ValueError:
            return DataError(
                path,
                line,
                name,
                f"expected a number, got {cell[:40]!r}",
                "write a number",
                reason=f"{name}: not a number",
            )
    return cell


def _csv_rows(path: Path, data: bytes):
    """(line, object or DataError) for each row of a CSV file with a header; line is where the row starts."""
    delimiter = "\t" if ".tsv" in Path(path).name else ","
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""), delimiter=delimiter)
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
            yield (
                line,
                DataError(
                    path,
                    line,
                    None,
                    f"has {len(row)} cells for {len(header)} columns",
                    "quote cells that contain the delimiter, quotes or line breaks",
                    reason="wrong number of CSV cells",
                ),
            )
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
        raise DataError(path, None, None, "is Parquet, and pyarrow is not installed", "pip install pyarrow") from None
    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                i += 1
                yield f"record {i}", obj
    except (OSError, ValueError, UnicodeDecodeError) as e:  # pyarrow's errors derive from these
        raise DataError(
            path,
            f"record {i + 1}",
            None,
            f"unreadable Parquet ({type(e).__name__}: {e})",
            "check the file, or write it again",
        ) from None


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
        raise DataError(
            src, None, None, "is a Hugging Face dataset, and `datasets` is not installed", "pip install datasets"
        ) from None
    name, split = split_suffix(src[len(HUB_PREFIX) :] if src.startswith(HUB_PREFIX) else src)
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
        raise DataError(
            src,
            None,
            None,
            f"could not be loaded ({type(e).__name__}: {e})",
            "check the name, the split and your connection (hub ids need to be online)",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(
                src,
                None,
                None,
                f"has splits {', '.join(ds)}; none named {split!r}"
                if split
                else f"has several splits ({', '.join(ds)})",
                f"name one, as {name}:SPLIT",
            )
        ds = ds[split]
    return ds


def records(path) -> Iterator[tuple[Location, dict | DataError]]:
    """(location, object or DataError) for every record of a file or dataset, whatever its container; bad records
    are yielded as their DataError (not raised), so a reader can count them and go on."""
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


def check_source(p) -> None:
    """Fail early, naming the path, when a data source is neither a file, a dataset directory nor a hub id."""
    src = str(p)
    if src.startswith(HUB_PREFIX) or is_dataset_dir(src) or Path(src).is_file():
        return
    fix = "check the path" + (
        " (a directory must be a datasets save_to_disk directory)"
        if Path(src).is_dir()
        else "; hub datasets are named hf:OWNER/NAME[:SPLIT]"
    )
    raise DataError(p, None, None, "does not exist" if not Path(src).exists() else "is not a data file", fix)


def write_jsonl(rows, path: Path) -> None:
    """Write JSON objects one per line (gzip-compressed when the name ends in .gz), atomically (files.atomic_file):
    a failure leaves no partial output. NaN is refused (it is not JSON)."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    with atomic_file(path, "wb") as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else raw
        try:
            for row in rows:
                out.write((json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
        finally:
            if gz:
                out.close()  # writes gzip's trailer; the file itself stays open for atomic_file
