"""`rankrm eval --report DIR`: the pictures people look at (a reliability diagram, rewards of preferred vs rejected
completions, accuracy per subset) as PNG files and a short Markdown summary, drawn with matplotlib.

Every file is written whole or not at all (files.atomic_file). matplotlib is an optional dependency
(pip install rankrm[report]); it is imported here only, when a report is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluate import EvalResult, format_report
from .files import atomic_file, write_text


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--report draws with matplotlib, which is not installed. Fix: pip install "
                         "'rankrm[report]' (or matplotlib)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def preferred_and_rejected(res: EvalResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winner rewards, loser rewards, votes) of every stated comparison."""
    w = [r[a] for r, lab in zip(res.rewards, res.labels) for a, _ in lab.pairs]
    l = [r[b] for r, lab in zip(res.rewards, res.labels) for _, b in lab.pairs]  # noqa: E741
    n = [v for lab in res.labels for v in lab.votes]
    return np.asarray(w, dtype=float), np.asarray(l, dtype=float), np.asarray(n, dtype=float)


def write_report(out_dir, names: list[str], results: list[EvalResult], differences: list[dict] | None = None,
                 data: str = "") -> list[Path]:
    """Write reliability.png, rewards.png, subsets.png (when the data names subsets) and summary.md into out_dir;
    returns the files written."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="perfectly calibrated")
    for name, res in zip(names, results):
        c = res.metrics["calibration"]
        conf = [b["confidence"] for b in c["reliability"]]
        acc = [b["accuracy"] for b in c["reliability"]]
        ax.plot(conf, acc, marker="o", label=f"{Path(name).name} (ECE {c['ece']:.3f}, T {c['temperature']:.3g})")
    ax.set(xlabel="confidence: sigmoid(|r_a - r_b|) of the favoured completion",
           ylabel="share of votes the favoured completion won", xlim=(0.5, 1.0), ylim=(0.0, 1.0),
           title="Reliability of P(preferred beats rejected)")
    ax.legend(fontsize=8)
    _save(fig, out / "reliability.png")
    written.append(out / "reliability.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, name, res in zip(axes[0], names, results):
        w, l, n = preferred_and_rejected(res)  # noqa: E741
        bins = np.linspace(min(w.min(), l.min()), max(w.max(), l.max()), 30)
        ax.hist(w, bins=bins, weights=n, alpha=0.6, label="preferred")
        ax.hist(l, bins=bins, weights=n, alpha=0.6, label="rejected")
        ax.set(xlabel="reward", ylabel="votes", title=Path(name).name)
        ax.legend(fontsize=8)
    _save(fig, out / "rewards.png")
    written.append(out / "rewards.png")
    plt.close(fig)

    subsets = sorted({s for res in results for s in res.metrics.get("subsets", {})})
    if subsets:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(subsets) * len(results)), 4))
        width = 0.8 / len(results)
        for i, (name, res) in enumerate(zip(names, results)):
            acc = [res.metrics["subsets"].get(s, {}).get("accuracy", np.nan) for s in subsets]
            ax.bar(np.arange(len(subsets)) + i * width, acc, width, label=Path(name).name)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(subsets)) + 0.4 - width / 2, subsets, rotation=45, ha="right")
        ax.set(ylabel="accuracy", ylim=(0, 1), title="Accuracy per subset")
        ax.legend(fontsize=8)
        _save(fig, out / "subsets.png")
        written.append(out / "subsets.png")
        plt.close(fig)

    lines = ["# Reward model evaluation", "", f"Data: {data}", ""]
    for name, res in zip(names, results):
        lines += [f"## {name}", "", "```", format_report(res.metrics), "```", ""]
    for d in differences or []:
        lines += [f"**{d['model']} minus {d['against']}** (paired bootstrap over prompts, 95% CI): accuracy "
                  f"{d['accuracy_gain']:+.4f} [{d['accuracy_gain_ci95'][0]:+.4f}, {d['accuracy_gain_ci95'][1]:+.4f}],"
                  f" log loss {d['log_loss_change']:+.4f} [{d['log_loss_change_ci95'][0]:+.4f}, "
                  f"{d['log_loss_change_ci95'][1]:+.4f}]", ""]
    lines += [f"![{p.stem}]({p.name})" for p in written]
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    return written + [out / "summary.md"]
