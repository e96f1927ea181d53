"""Pairwise vs Plackett-Luce on the shipped OpenAssistant rankings with K >= 3 completions: does the likelihood of
the whole ranking train a better reward model than the mean of its C(K,2) pairs?

Both objectives train the same backbone, trainable part, optimizer, learning rates, schedule, steps and data order
per seed, and are evaluated on the same held-out prompts (each seed its own split of 20% of the conversation
trees) with the same pairwise and ranking metrics: held-out pairwise accuracy, log loss (of sigmoid(r_w - r_l)),
Kendall tau-b of the rewards against the human ranks, and top-1 (the model's best is the humans' best).

Equal steps: the metrics at the end of the run. Equal wall time: the loss itself is a few (N, N) tensor
operations beside the forward and backward of the model, so both objectives cost the same per step up to timing
noise (the table gives the measured per-step times); each run is evaluated every few steps with its training
seconds, and for each seed the metrics are read at the last evaluation within the shorter run's training time
(the faster run's end, the slower's last evaluation before it).

Cost: the frozen bottom layers run once per distinct sequence for all runs together (a warm-up whose time is
reported apart), so training times compare the top layer, head and loss only.

    python -m benchmarks.objectives   # measured time in results/objectives.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._results import save
from benchmarks.grouping import warm_cache
from rankrm.data.readers import read_groups
from rankrm.data.splits import write_native
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.training.config import TrainConfig
from rankrm.training.run import _train

ROOT = Path(__file__).resolve().parents[1]
DATA = [str(ROOT / "rankrm/shipped/oasst_en_100_tree.jsonl"), str(ROOT / "rankrm/shipped/oasst1_en_validation.jsonl")]
METRICS = ("accuracy", "log_loss", "kendall_tau_b", "top1_accuracy")
# name in the table -> TrainConfig settings
OBJECTIVES = {
    "pairwise": {"objective": "pairwise"},
    "plackett-luce": {"objective": "plackett-luce"},
    "plackett-luce top-1": {"objective": "plackett-luce", "listwise_top": 1},
}


def point(step: int, seconds: float, m: dict) -> dict:
    return {"step": step, "train_seconds": seconds, **{k: m[k] for k in METRICS}}


def curve(res) -> list[dict]:
    """The held-out metrics before training, at each evaluation and at the end, with the training seconds."""
    pts = [point(0, 0.0, res["before"])]
    pts += [point(h["step"], h["train_seconds"], h) for h in res["history"]]
    return pts + [point(res["steps"], res["train_seconds"], res["after"])]


def at_time(c: list[dict], budget: float) -> dict:
    """The last point of a curve within `budget` training seconds."""
    return [p for p in c if p["train_seconds"] <= budget + 1e-9][-1]


def stat(xs, d=4) -> str:
    m, s = statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
    return f"{m:.{d}f} ± {s:.{d}f}"


def table(runs: dict, seeds) -> list[str]:
    names = list(runs)
    head = "| objective | " + " | ".join(METRICS) + " | s per step |"
    sep = "| --- " * (len(METRICS) + 2) + "|"
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; mean ± standard deviation over seeds. accuracy and log_loss: held-out "
        "pairs; kendall_tau_b: per prompt, averaged; top1_accuracy: share of prompts whose highest reward is the "
        "humans' best.",
        "",
        "**Equal steps** (the end of each run):",
        "",
        head,
        sep,
    ]
    for n in names:
        ends = [c[-1] for c in runs[n]]
        per_step = [c[-1]["train_seconds"] / c[-1]["step"] for c in runs[n]]
        lines.append(
            f"| {n} | " + " | ".join(stat([e[k] for e in ends]) for k in METRICS) + f" | {stat(per_step, 3)} |"
        )
    lines += ["", "**Equal wall time** (each seed: the last evaluation within the shortest run's training time):", ""]
    lines += [head.replace(" s per step |", " steps reached |"), sep]
    budgets = [min(runs[n][i][-1]["train_seconds"] for n in names) for i in range(len(seeds))]
    for n in names:
        pts = [at_time(c, b) for c, b in zip(runs[n], budgets)]
        lines.append(
            f"| {n} | "
            + " | ".join(stat([p[k] for p in pts]) for k in METRICS)
            + f" | {', '.join(str(p['step']) for p in pts)} |"
        )
    lines += [
        "",
        "Per seed (end of run): "
        + "; ".join(
            f"{n} seed {s}: acc {c[-1]['accuracy']:.4f}, tau-b {c[-1]['kendall_tau_b']:.4f}, top-1 {c[-1]['top1_accuracy']:.4f}"
            for n in names
            for s, c in zip(seeds, runs[n])
        ),
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--train-layers", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-points", type=int, default=4, help="evaluations during training (plus before and end)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        groups = [g for g in read_groups(DATA) if g.k >= 3]
        data = Path(tmp) / "oasst-k3.jsonl"
        write_native(groups, data)
        base = dict(
            model=args.model,
            train_data=[str(data)],
            eval_fraction=0.2,
            max_length=args.max_length,
            train_layers=args.train_layers,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=5e-5,
            head_learning_rate=5e-4,
            warmup_ratio=0.05,
            layout="padded",
            length_sort_window=0,
            plots=False,
        )
        steps = int(args.epochs * -(-round(0.8 * len(groups)) // args.batch_size))
        base["eval_steps"] = max(1, steps // (args.eval_points + 1))
        cache: dict = {}
        print(f"{len(groups)} groups with K >= 3; warming the frozen-layer cache ({args.model}, {args.max_length})")
        warm = warm_cache(TrainConfig(**base), cache)
        print(f"warm-up: {warm:.0f}s, {len(cache)} distinct sequences", flush=True)
        runs: dict = {n: [] for n in args.objectives}
        raw = []
        for seed in args.seeds:
            for name in args.objectives:
                out = Path(tmp) / f"{name}-{seed}".replace(" ", "_")
                cfg = TrainConfig(**base, **OBJECTIVES[name], seed=seed, output_dir=str(out))
                res = _train(cfg, frozen_store=cache)
                runs[name].append(curve(res))
                raw.append(
                    {
                        "seed": seed,
                        "objective": name,
                        "curve": runs[name][-1],
                        "after": res["after"],
                        "train_groups": res["train_groups"],
                        "eval_groups": res["eval_groups"],
                    }
                )
                print(f"{name} seed {seed}: {runs[name][-1][-1]}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    total = time.time() - t_all
    title = (
        f"{Path(args.model).name}, top {args.train_layers} layer(s) + final norm + head trained, max length "
        f"{args.max_length}, {args.epochs:g} epochs, batch {args.batch_size}, OpenAssistant groups with K >= 3 "
        f"({len(groups)}: about {raw[0]['train_groups']} train / {raw[0]['eval_groups']} held-out prompts per seed), "
        f"{len(args.seeds)} seeds"
    )
    head = (
        f"# Pairwise vs Plackett-Luce\n\n{title}; frozen-layer warm-up {warm:.0f} s, total run time "
        f"{total / 60:.1f} min on a 2-core CPU (times compare within one run only, and follow its load).\n"
    )
    payload = {
        "settings": {**base, "seeds": args.seeds, "train_data": "shipped OpenAssistant, K >= 3"},
        "runs": raw,
        "warm_seconds": warm,
        "total_seconds": total,
    }
    save(args.out, "objectives", head, table(runs, args.seeds), payload, "objectives")


if __name__ == "__main__":
    main()
