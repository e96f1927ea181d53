"""`rankrm data inspect|convert|prepare|cache`, and the data flags every command shares (--format, --skip-invalid,
--conflicts; the prepared store's --data-cache and --num-proc)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rankrm.data.convert import CONVERT_TARGETS
from rankrm.data.judgments import CONFLICTS
from rankrm.data.readers import CONFLICTS_HELP, FORMAT_HELP, FORMAT_NAMES, SKIP_INVALID_HELP


def check_sources(sources: list[str]) -> None:
    """Data files, dataset directories, hub ids or prepared stores that exist, else a DataError naming the first
    that does not; the data itself is read later."""
    from rankrm.data.containers import check_source
    from rankrm.data.store import is_store

    for s in sources:
        if not is_store(s):
            check_source(s)


def cmd_data(args) -> int:
    from rankrm.data.convert import convert_data
    from rankrm.data.inspect import describe_data, format_description

    if args.data_command == "prepare":
        return data_prepare(args)
    if args.data_command == "cache":
        return data_cache(args)
    if args.data_command == "inspect":
        encoder = encoder_for(args.model, args.max_length) if args.model else None
        d = describe_data(args.files, args.format, args.skip_invalid, encoder, args.model, args.against, args.conflicts)
        print(json.dumps(d, indent=2) if args.json else format_description(d))
    else:
        report, n = convert_data(args.inputs, args.output, args.to, args.format, args.skip_invalid, args.conflicts)
        print(f"read {report.summary()}; wrote {n} {args.to} records to {args.output}")
    return 0


def encoder_for(model: str, max_length: int | None):
    """The TextEncoder `rankrm train` would use for a model (its tokenizer only, never its weights): a reward model's
    own max length, else train's default, unless max_length is given."""
    from rankrm.data.encode import TextEncoder
    from rankrm.modeling.hub import resolve
    from rankrm.training.config import TrainConfig

    path = resolve(model)
    saved = (Path(path) / "rankrm.json").is_file()
    return TextEncoder.from_pretrained(path, max_length or (None if saved else TrainConfig.max_length))


def data_prepare(args) -> int:
    import time

    from rankrm.data.encode import tokenize_processes
    from rankrm.data.prepare import prepare

    t0 = time.time()
    encoder = encoder_for(args.model, args.max_length)
    store = prepare(
        args.inputs,
        encoder,
        args.out,
        args.format,
        args.conflicts,
        args.skip_invalid,
        tokenize_processes(args.num_proc),
    )
    m = store.manifest
    print(
        f"read {store.report.summary()}; prepared {m['groups']} groups ({m['comparisons']} comparisons, "
        f"{m['tokens']} tokens, max length {m['max_length']}) into {store.path} ({store.bytes / 2**20:.1f} MB) in "
        f"{time.time() - t0:.0f}s; give it to train (--train-data / --eval-data) or eval (--data)"
    )
    return 0


def data_cache(args) -> int:
    import shutil

    from rankrm.data.store import MANIFEST, default_cache

    root = Path(args.data_cache or default_cache())
    found = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    total = 0
    for p in found:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        total += size
        try:
            sources = ", ".join(json.loads((p / MANIFEST).read_text())["sources"])
        except (OSError, ValueError, KeyError):
            sources = "(unfinished or damaged: no manifest)"
        print(f"{size / 2**20:10.1f} MB  {p}  {sources}")
        if args.clear:
            shutil.rmtree(p)
    print(f"{'removed' if args.clear else 'in all'}: {len(found)} prepared stores, {total / 2**20:.1f} MB in {root}")
    return 0


def add_store_flags(p) -> None:
    p.add_argument(
        "--data-cache",
        default="",
        help="where prepared stores are kept (default: $RANKRM_DATA_CACHE, else ~/.cache/rankrm/data)",
    )
    p.add_argument(
        "--num-proc",
        type=int,
        default=0,
        help="processes that tokenize when data is prepared (0: up to 8, one per CPU core)",
    )


def add_data_parser(sub) -> None:
    """`rankrm data inspect|convert|prepare|cache`."""
    d = sub.add_parser("data", help="inspect a data set, convert it to another format, or prepare it for training")
    dsub = d.add_subparsers(dest="data_command", required=True)
    data_flags = shared_flags()["data"]
    pr = dsub.add_parser(
        "prepare",
        parents=[data_flags],
        help="read, validate and tokenize data once into a memory-mapped store that "
        "train and eval read (they also prepare into --data-cache by themselves)",
    )
    pr.add_argument("inputs", nargs="+", help="data file(s), datasets directories or hf:OWNER/NAME[:SPLIT]")
    pr.add_argument(
        "--model",
        required=True,
        help="the backbone or reward model whose tokenizer and chat template "
        "the store is for (its weights are not loaded)",
    )
    pr.add_argument("--out", required=True, help="the store directory to write (replaced as a whole)")
    pr.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per prompt + completion (default: a "
        "reward model's own, else train's default, 512); "
        "train with the same",
    )
    pr.add_argument("--num-proc", type=int, default=0, help="tokenizing processes (0: up to 8, one per CPU core)")
    ca = dsub.add_parser(
        "cache", help="list the prepared stores of the data cache and their sizes; --clear removes them"
    )
    ca.add_argument(
        "--data-cache", default="", help="the cache directory (default: $RANKRM_DATA_CACHE, else ~/.cache/rankrm/data)"
    )
    ca.add_argument("--clear", action="store_true", help="remove every prepared store")
    i = dsub.add_parser(
        "inspect", parents=[data_flags], help="groups, K, comparisons, ties, duplicates, lengths, truncation"
    )
    i.add_argument("files", nargs="+", help="data file(s), datasets directories or hf:OWNER/NAME[:SPLIT]")
    i.add_argument("--json", action="store_true", help="print the inspection as JSON")
    i.add_argument("--model", default=None, help="count tokens with this model's tokenizer and template")
    i.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per prompt + completion for the "
        "truncation count (default: a reward model's own, else train's default, as data prepare)",
    )
    i.add_argument(
        "--against",
        nargs="+",
        default=None,
        help="other file(s), e.g. the eval set: count prompts and conversations found in both",
    )
    c = dsub.add_parser("convert", parents=[data_flags], help="write data as native or TRL pairwise JSONL")
    c.add_argument("inputs", nargs="+", help="data file(s) to read")
    c.add_argument("output", help="the JSONL file to write (gzip-compressed if it ends in .gz)")
    c.add_argument(
        "--to",
        required=True,
        choices=CONVERT_TARGETS,
        help="native: one ranked group per line; pairwise: one prompt/chosen/rejected record per stated "
        "comparison (TRL's format)",
    )
    d.set_defaults(func=cmd_data)


def shared_flags() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers (argparse parents=) for the flags several subcommands share."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", required=True, help="a saved reward model directory (or hub id)")
    model.add_argument(
        "--max-length", type=int, default=None, help="tokens per prompt + completion (default: the model's own)"
    )
    model.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per forward pass")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--format", default="auto", choices=("auto", *FORMAT_NAMES), help=FORMAT_HELP)
    data.add_argument("--skip-invalid", action="store_true", help=SKIP_INVALID_HELP)
    data.add_argument("--conflicts", default="keep", choices=CONFLICTS, help=CONFLICTS_HELP)
    return {"model": model, "data": data}
