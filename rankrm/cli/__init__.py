"""The `rankrm` command: each subcommand parses its flags and calls the library.

Exit codes: 0 done; 2 bad input or settings (a RankrmError: one line naming the file, line or setting, and the fix;
argparse's usage errors too); 1 a bug (any other exception: Python prints its traceback); 128 + N when training
stopped on signal N after writing a checkpoint (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1). Under `accelerate launch`
every process follows the same rule."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rankrm.cli.data import add_data_parser, add_store_flags, check_sources, shared_flags
from rankrm.data.readers import FORMAT_HELP, FORMAT_NAMES
from rankrm.errors import RankrmError, SettingsError
from rankrm.serving.server import add_serve_parser


def cmd_train(args) -> int:
    from rankrm.training.flags import config_from_args
    from rankrm.training.run import train

    cfg = config_from_args(args)
    check_sources(cfg.train_data + cfg.eval_data)  # before Accelerate starts and the model loads
    train(cfg)
    return 0


def cmd_eval(args) -> int:
    check_sources(args.data)  # before any weights load: a missing file is said in a second, not after a minute
    from rankrm.data.encode import tokenize_processes
    from rankrm.data.prepare import open_data
    from rankrm.data.store import default_cache
    from rankrm.evaluation.evaluate import compare, evaluate_groups
    from rankrm.evaluation.formatting import format_report
    from rankrm.modeling.model import RewardModel

    results, out = [], {"data": args.data, "models": []}
    for name in args.model:
        model = RewardModel.from_pretrained(name, max_length=args.max_length)
        store = open_data(
            args.data,
            model.encoder,
            args.data_cache or default_cache(),
            args.format,
            args.conflicts,
            args.skip_invalid,
            tokenize_processes(args.num_proc),
            what=f"--model {name}",
        )
        report = store.report
        out["read"] = report.summary()
        tok = store.view()
        truncated = int(tok.column("cut").sum())
        res = evaluate_groups(model, tok, args.batch_tokens, progress=not args.json)
        results.append(res)
        slices = {"slices": res.slices(args.slice)} if args.slice else {}
        out["models"].append({"model": name, "truncated_completions": truncated, **res.metrics, **slices})
        if truncated:
            print(
                f"rankrm eval: {name}: {truncated} completions had their prompt cut from the left to fit "
                f"--max-length {model.max_length}",
                file=sys.stderr,
            )
    if len(results) > 1:  # each later model against the first, paired over the same prompts
        out["differences"] = [
            {"model": name, "against": args.model[0], **compare(results[0], res)}
            for name, res in zip(args.model[1:], results[1:])
        ]
    if args.report:
        from rankrm.evaluation.plots import write_report

        files = write_report(args.report, args.model, results, out.get("differences"), " ".join(args.data))
        print(f"rankrm eval: report written: {', '.join(str(f) for f in files)}", file=sys.stderr)
    if args.json:
        print(json.dumps(out if len(results) > 1 else {**out.pop("models")[0], **out}, indent=2))
        return 0
    print(report.summary())
    for m in out["models"]:
        print(f"== {m['model']} ({m['truncated_completions']} completions cut to --max-length)")
        print(format_report(m))
    for d in out.get("differences", []):
        print(
            f"== {d['model']} minus {d['against']} (paired bootstrap over prompts, 95% CI): accuracy "
            f"{d['accuracy_gain']:+.4f} [{d['accuracy_gain_ci95'][0]:+.4f}, {d['accuracy_gain_ci95'][1]:+.4f}]  "
            f"log loss {d['log_loss_change']:+.4f} [{d['log_loss_change_ci95'][0]:+.4f}, "
            f"{d['log_loss_change_ci95'][1]:+.4f}]"
        )
    return 0


def cmd_normalize(args) -> int:
    from rankrm.modeling.model import RewardModel
    from rankrm.modeling.normalize import demonstrations, file_sha256, normalize
    from rankrm.modeling.ratings import parse_weights, set_reward_weights

    if args.demonstrations is None and args.calibrate is None and args.weights is None:
        raise SettingsError(
            "normalize has nothing to do. Fix: give --demonstrations FILE (the bias), --calibrate DATA (a "
            "temperature), --weights NAME=W,... (an attributes model's reward), or several of them"
        )
    given = parse_weights(args.weights, "--weights") if args.weights is not None else None
    if args.demonstrations is not None:  # read before any weights load: a bad file is said at once
        prompts, responses, source = demonstrations(args.demonstrations, args.format)
    if args.calibrate is not None:
        check_sources([str(p) for p in args.calibrate])
    model = RewardModel.from_pretrained(args.model, max_length=args.max_length)
    out = args.output_dir or args.model
    if given is not None:  # first: the demonstrations and the calibration then read the new reward
        weights = set_reward_weights(model, given)
        reward = " + ".join(f"{w:g} * {n}" for n, w in zip(model.head_spec.names, weights) if w) or "0"
        print(f"the reward is now {reward} (an earlier normalization and calibration are dropped)")
    if args.demonstrations is not None:
        stats = normalize(model, prompts, responses, args.target_std, args.batch_tokens, progress=True)
        stats.update({"file": str(args.demonstrations), "sha256": file_sha256(args.demonstrations), "source": source})
        model.normalization = stats
    if args.calibrate is not None:
        from rankrm.evaluation.evaluate import evaluate
        from rankrm.evaluation.temperature import calibrate

        res = evaluate(model, [str(p) for p in args.calibrate], args.format, args.batch_tokens)
        model.calibration = calibrate(model, res) | {"file": ", ".join(map(str, args.calibrate))}
    model.save_pretrained(out)
    if args.demonstrations is not None:
        check = model.score(prompts, responses, batch_tokens=args.batch_tokens)
        mean = sum(check) / len(check)
        print(
            f"{stats['count']} demonstrations ({source}): mean {stats['mean']:+.4f}, std {stats['std']:.4f} before; "
            f"offset {stats['offset']:+.4f} ({stats['offset_in']}), gain {stats['gain']:.4f}; "
            f"mean after {mean:+.2e}; saved to {out}"
        )
    if args.calibrate is not None:
        c = model.calibration
        print(
            f"calibrated on {c['pairs']} comparisons: rewards divided by the temperature {c['temperature']:.4g}; "
            f"ECE {c['ece_before']:.4f} before, {c['ece_after']:.4f} after; saved to {out}"
        )
    return 0


def cmd_score(args) -> int:
    from rankrm.data.containers import check_file
    from rankrm.modeling.model import RewardModel
    from rankrm.serving.scoring import score_file

    check_file(args.input)  # before the weights load
    model = RewardModel.from_pretrained(args.model, max_length=args.max_length)
    n = score_file(model, args.input, args.output, args.chunk_lines, args.batch_tokens, progress=not args.quiet)
    if n["truncated"]:
        print(
            f"rankrm score: {n['truncated']} of {n['records']} records had their prompt cut from the left to fit "
            f'--max-length {model.max_length} (marked "truncated": true)',
            file=sys.stderr,
        )
    print(f"scored {n['records']} records into {args.output}")
    return 0


def add_train_parser(sub) -> None:
    """`rankrm train`: one flag per TrainConfig setting (training/flags.py)."""
    from rankrm.training.flags import train_flags

    t = sub.add_parser(
        "train",
        parents=[train_flags()],
        help="train a reward model",
        description="Train a reward model on ranked groups. Launch on several GPUs or nodes with "
        "`accelerate launch -m rankrm train ...`.",
    )
    t.set_defaults(func=cmd_train)


def add_eval_parser(sub, shared: dict) -> None:
    """`rankrm eval`: metrics of one or more saved models on ranked data."""
    e = sub.add_parser(
        "eval",
        parents=[shared["data"]],
        help="accuracy, log loss, ranking, vote, calibration and per-subset metrics of reward "
        "models on ranked data; with several --model, their paired differences",
    )
    e.add_argument(
        "--model",
        required=True,
        action="append",
        help="a saved reward model directory (or hub id); "
        "repeat it to compare models on the same data (each against the first, paired by prompt)",
    )
    e.add_argument(
        "--max-length", type=int, default=None, help="tokens per prompt + completion (default: the model's own)"
    )
    e.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per forward pass")
    e.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="file(s) of ranked groups, or a prepared store "
        "(rankrm data prepare); files are prepared once into --data-cache",
    )
    add_store_flags(e)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument(
        "--slice",
        action="append",
        default=[],
        metavar="FIELD",
        help="metrics per value of a pairwise record's field, per comparison (repeatable); "
        "'length' is built in: the preferred completion longer, shorter or as long (characters)",
    )
    e.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write PNG plots (reliability diagram, rewards "
        "of preferred vs rejected completions, accuracy per subset) and summary.md into DIR (needs "
        "matplotlib: pip install 'rankrm[report]')",
    )
    e.set_defaults(func=cmd_eval)


def add_normalize_parser(sub, shared: dict) -> None:
    """`rankrm normalize`: the demonstrations' bias and/or a calibrating temperature."""
    n = sub.add_parser(
        "normalize",
        parents=[shared["model"]],
        help="set a bias so that demonstrations score a mean of 0 (InstructGPT), and/or fold a calibrating temperature into the weights",
    )
    n.add_argument(
        "--demonstrations",
        default=None,
        type=Path,
        help="JSONL of {prompt, response}, or ranked data whose rank-0 completions serve as "
        "demonstrations (e.g. the heldout.jsonl that `rankrm train` writes)",
    )
    n.add_argument(
        "--weights",
        default=None,
        metavar="NAME=W,...",
        help="an attributes model (trained with --attributes): make the reward (output 0) the weighted sum of its "
        "attributes, an attribute left out weighing 0 (applied before --demonstrations and --calibrate)",
    )
    n.add_argument("--output-dir", default=None, help="where to save the normalized model (default: in place)")
    n.add_argument(
        "--target-std",
        type=float,
        default=None,
        help="also set a gain so the demonstrations' rewards have this standard deviation",
    )
    n.add_argument(
        "--calibrate",
        nargs="+",
        type=Path,
        default=None,
        metavar="DATA",
        help="held-out ranked data: fit the temperature T there and divide every reward by it, so that "
        "sigmoid(r_a - r_b) is calibrated (recorded in rankrm.json; after --demonstrations when both are given)",
    )
    n.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMAT_NAMES),
        help="format of a ranked-data demonstrations or --calibrate file: " + FORMAT_HELP,
    )
    n.set_defaults(func=cmd_normalize)


def add_score_parser(sub, shared: dict) -> None:
    """`rankrm score`: a reward added to every record of a JSONL file."""
    s = sub.add_parser(
        "score", parents=[shared["model"]], help="add a reward to every (prompt, completion) record of a JSONL file"
    )
    s.add_argument("input", help="JSONL with prompt (string or messages) and completion per line; .gz is read too")
    s.add_argument("output", help='JSONL to write: the input records with "reward" added, in input order')
    s.add_argument("--chunk-lines", type=int, default=4096, help="records held in memory at once")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankrm", description="Train reward models on K-wise human rankings, the InstructGPT way."
    )
    sub = p.add_subparsers(dest="command", required=True)
    shared = shared_flags()
    add_train_parser(sub)
    add_eval_parser(sub, shared)
    add_data_parser(sub)
    add_normalize_parser(sub, shared)
    add_score_parser(sub, shared)
    add_serve_parser(sub)
    return p


def main(argv=None) -> int:
    from rankrm.training.signals import TrainingInterrupted

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"rankrm {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"rankrm {args.command}: interrupted", file=sys.stderr)
        return 130
    except RankrmError as e:  # bad input or settings; anything else is a bug and shows its traceback
        print(f"rankrm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
