"""Grouped vs shuffled-pairs training on the shipped OpenAssistant rankings: the InstructGPT claim, measured.

InstructGPT (section 3.5): shuffling the C(K,2) comparisons of each prompt into one data set overfits after a
single pass, while training on all comparisons of a prompt as ONE batch element forwards each completion once,
does not overfit, and gives better validation accuracy and log loss. This script trains both regimes with the
same backbone, trainable part, optimizer, learning rates, epochs and comparisons per optimizer step (so the same
number of steps), over several seeds, evaluating held-out accuracy and log loss at fixed points, and writes
results/grouping.{json,md,png}.

Matching: a grouped step takes `batch_size` prompts with all their comparisons (P pairs on average per prompt);
a shuffled-pairs step takes round(batch_size * P) single comparisons drawn from the whole shuffled data set. Both
see every comparison once per epoch, take the same number of steps and follow the same learning-rate schedule;
within a step, grouped weighs each prompt equally (the mean over its pairs), shuffled-pairs each pair.

Cost: the bottom layers are frozen and run once per distinct sequence for all runs together (a warm-up pass
whose time is reported apart), so the training times compare what the regimes themselves cost: the top layers
and head, forward and backward, once per completion forwarded.

    python -m benchmarks.grouping   # 28.8 min measured on 2 CPU cores; needs matplotlib (pip install rankrm[bench])
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._results import save
from rankrm.data.encode import tokenize_groups
from rankrm.data.readers import read_groups
from rankrm.evaluation.evaluate import evaluate_groups
from rankrm.modeling.frozen import FrozenLayerCache, select_trainable
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.run import _train

ROOT = Path(__file__).resolve().parents[1]
DATA = [str(ROOT / "rankrm/shipped/oasst_en_100_tree.jsonl"), str(ROOT / "rankrm/shipped/oasst1_en_validation.jsonl")]
REGIMES = ["grouped", "shuffled-pairs"]


def warm_cache(cfg: TrainConfig, cache: dict) -> float:
    """Run the frozen layers once over every sequence of the data (any split), filling the shared cache."""
    t0 = time.time()
    model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length)
    select_trainable(model, cfg.train_layers)
    frozen = FrozenLayerCache(model.backbone, cfg.train_layers)
    frozen.store = cache
    groups, _ = tokenize_groups(model, read_groups(cfg.train_data))
    evaluate_groups(model, groups, cfg.eval_batch_tokens, cfg.layout, frozen, progress=True)
    return time.time() - t0


def curve(res: dict) -> list[dict]:
    """(epoch, accuracy, log loss, completions forwarded, training seconds) from before training to the end."""
    pts = [
        {
            "epoch": 0.0,
            "accuracy": res["before"]["accuracy"],
            "log_loss": res["before"]["log_loss"],
            "completions_forwarded": 0,
            "train_seconds": 0.0,
        }
    ]
    pts += [
        {k: h[k] for k in ("epoch", "accuracy", "log_loss", "completions_forwarded", "train_seconds")}
        for h in res["history"]
    ]
    pts.append(
        {
            "epoch": res["config"]["epochs"],
            "accuracy": res["after"]["accuracy"],
            "log_loss": res["after"]["log_loss"],
            "completions_forwarded": res["completions_forwarded"],
            "train_seconds": res["train_seconds"],
        }
    )
    return pts


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def table(runs: dict, epochs: float, warm_seconds: float, seeds) -> str:
    lines = [
        f"Seeds: {', '.join(map(str, seeds))} (each seed: its own held-out split of 20% of the conversation "
        f"trees, head initialisation and data order). Mean ± standard deviation over seeds; "
        f"[min, max] in brackets.",
        "",
        "| regime | held-out accuracy (end) | log loss (end) | best accuracy (any point) | lowest log loss "
        "(any point) | completions forwarded per epoch | training time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for regime in REGIMES:
        rs = runs[regime]
        acc = [r[-1]["accuracy"] for r in rs]
        ll = [r[-1]["log_loss"] for r in rs]
        best = [max(p["accuracy"] for p in r) for r in rs]
        low = [min(p["log_loss"] for p in r) for r in rs]
        fwd = [r[-1]["completions_forwarded"] / epochs for r in rs]
        sec = [r[-1]["train_seconds"] for r in rs]

        def f(xs, d=4):
            return f"{mean_sd(xs)[0]:.{d}f} ± {mean_sd(xs)[1]:.{d}f} [{min(xs):.{d}f}, {max(xs):.{d}f}]"

        lines.append(
            f"| {regime} | {f(acc)} | {f(ll)} | {f(best)} | {f(low)} | {statistics.mean(fwd):.0f} | {f(sec, 0)} |"
        )
    g = statistics.mean(r[-1]["train_seconds"] for r in runs["grouped"])
    s = statistics.mean(r[-1]["train_seconds"] for r in runs["shuffled-pairs"])
    gf = statistics.mean(r[-1]["completions_forwarded"] for r in runs["grouped"])
    sf = statistics.mean(r[-1]["completions_forwarded"] for r in runs["shuffled-pairs"])
    lines += [
        "",
        f"Forward passes (completions through the trainable layers): shuffled-pairs / grouped = "
        f"{sf / gf:.2f}; training wall time shuffled-pairs / grouped = {s / g:.2f}. The frozen layers ran once "
        f"per distinct sequence for all runs together, before them ({warm_seconds:.0f} s).",
    ]
    return "\n".join(lines)


def plot(runs: dict, title: str):
    """The held-out accuracy and log loss curves of both regimes (mean and seed range): a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for regime, color in zip(REGIMES, ["tab:blue", "tab:red"]):
        rs = runs[regime]
        xs = [p["epoch"] for p in rs[0]]
        for ax, key in zip(axes, ["accuracy", "log_loss"]):
            ys = [[r[i][key] for r in rs] for i in range(len(xs))]
            ax.plot(
                xs,
                [statistics.mean(y) for y in ys],
                color=color,
                marker="o",
                ms=3,
                label=f"{regime} (mean of {len(rs)} seeds)",
            )
            ax.fill_between(
                xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.18, label=f"{regime}: seed min-max"
            )
    axes[0].set_ylabel("held-out pairwise accuracy")
    axes[1].set_ylabel("held-out log loss (mean -log sigmoid)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--train-layers", type=int, default=1)
    p.add_argument("--max-length", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step in the grouped regime")
    p.add_argument("--eval-points", type=int, default=6, help="evaluations during training (plus before and end)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    import matplotlib  # noqa: F401  (the plot comes last: fail now, not after the runs, if it is missing)

    base = dict(
        model=args.model,
        train_data=DATA,
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
    )
    n_train = round(0.8 * len(read_groups(DATA)))  # about: the split is by conversation tree
    steps = int(args.epochs * -(-n_train // args.batch_size))
    base["eval_steps"] = max(1, steps // (args.eval_points + 1))
    cache: dict = {}
    print(f"warming the frozen-layer cache over all sequences ({args.model}, max length {args.max_length})")
    warm = warm_cache(TrainConfig(**base), cache)
    print(f"warm-up: {warm:.0f}s, {len(cache)} distinct sequences")

    runs = {r: [] for r in REGIMES}
    raw = []
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for regime in REGIMES:
                out = Path(tmp) / f"{regime}-{seed}"
                res = _train(TrainConfig(**base, seed=seed, regime=regime, output_dir=str(out)), frozen_store=cache)
                runs[regime].append(curve(res))
                raw.append(
                    {
                        "seed": seed,
                        "regime": regime,
                        "curve": runs[regime][-1],
                        "before": res["before"],
                        "after": res["after"],
                        "steps": res["steps"],
                        "eval_groups": res["eval_groups"],
                        "train_groups": res["train_groups"],
                    }
                )
                shutil.rmtree(out, ignore_errors=True)
    total = time.time() - t_all + warm

    title = (
        f"{Path(args.model).name}, top {args.train_layers} layer(s) + final norm + head trained, max length {args.max_length}, "
        f"OpenAssistant ({raw[0]['train_groups']} train / {raw[0]['eval_groups']} held-out prompts), "
        f"{len(args.seeds)} seeds"
    )
    head = f"# Grouped vs shuffled pairs\n\n{title}; total run time {total / 60:.1f} min.\n"
    save(
        args.out,
        "grouping",
        head,
        table(runs, args.epochs, warm, args.seeds).split("\n"),
        {"settings": {**base, "seeds": args.seeds}, "runs": raw, "warm_seconds": warm, "total_seconds": total},
        "grouping",
        figure=plot(runs, title),
    )
    print(f"total {total / 60:.1f} min; wrote {args.out}/grouping.{{json,md,png}}")


if __name__ == "__main__":
    main()
