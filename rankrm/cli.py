"""The `rankrm` command: each subcommand parses its flags and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .data import DataError


def cmd_train(args) -> int:
    from .config import config_from_args
    from .train import train

    train(config_from_args(args))
    return 0


def cmd_eval(args) -> int:
    from .batching import tokenize_groups
    from .data import ReadReport, read_groups
    from .evaluate import evaluate
    from .model import RewardModel

    report = ReadReport()
    groups = read_groups(args.data, args.format, report)
    model = RewardModel.from_pretrained(args.model, max_length=args.max_length)
    tok, truncated = tokenize_groups(model, groups)
    m = evaluate(model, tok, args.batch_tokens, progress=not args.json).metrics
    m.update({"model": args.model, "data": args.data, "truncated_completions": truncated, "read": report.summary()})
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"{report.summary()}; {truncated} completions cut to --max-length")
        print(f"accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f} .. {m['accuracy_ci95'][1]:.4f})  "
              f"log loss {m['log_loss']:.4f}  groups {m['groups']}  pairs {m['pairs']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import add_config_arguments

    p = argparse.ArgumentParser(prog="rankrm", description="Train reward models on K-wise human rankings, "
                                                           "the InstructGPT way.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a reward model", description="Train a reward model on ranked groups. "
                       "Launch on several GPUs or nodes with `accelerate launch -m rankrm train ...`.")
    add_config_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="pairwise accuracy and log loss of a model on ranked data")
    e.add_argument("--model", required=True, help="a saved reward model directory (or hub id)")
    e.add_argument("--data", required=True, nargs="+", help="file(s) of ranked groups")
    e.add_argument("--format", default="auto", help="data format: auto, native or oasst")
    e.add_argument("--max-length", type=int, default=None, help="tokens per prompt + completion "
                                                               "(default: the model's own)")
    e.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, OSError) as e:
        print(f"rankrm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
