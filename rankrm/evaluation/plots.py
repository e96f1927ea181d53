"""The pictures people look at (a reliability diagram, rewards of preferred vs rejected completions, accuracy per
subset, accuracy next to the longer-wins baseline by length, and for a training run its training and validation curves) as PNG files and a short Markdown summary, drawn
with matplotlib: `rankrm eval --report DIR`, and `rankrm train` into OUTPUT_DIR/report/ (--plots, on by default).

Every file is written whole or not at all (files.atomic_file; a training report is swapped in as a whole directory).
matplotlib is an optional dependency (pip install rankrm[report]); it is imported here only, when a report is asked
for, and a training run without it skips its report with a note rather than failing after the model is saved."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rankrm.errors import SettingsError
from rankrm.evaluation.evaluate import EvalResult
from rankrm.evaluation.formatting import format_report
from rankrm.files import atomic_dir, atomic_file, write_text

log = logging.getLogger(__name__)

MISSING = "matplotlib is not installed. Fix: pip install 'rankrm[report]' (or matplotlib)"


def plotting_missing() -> str | None:
    """Why no plots can be drawn (matplotlib missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    return None


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SettingsError(f"--report draws with matplotlib: {MISSING}") from None
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


def write_report(
    out_dir,
    names: list[str],
    results: list[EvalResult],
    differences: list[dict] | None = None,
    data: str = "",
    curves: list[dict] | None = None,
    title: str = "Reward model evaluation",
    notes: tuple[str, ...] = (),
) -> list[Path]:
    """Write curves.png (given the points of a training run), reliability.png, rewards.png, subsets.png (when the
    data names subsets), length.png (when the results know lengths) and summary.md into out_dir; returns the files
    written.

    curves: {"step", "accuracy", "log_loss"[, "train_loss", "train_accuracy"]} per evaluation, in step order."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "curves": curves_figure(plt, curves) if curves else None,
        "reliability": reliability_figure(plt, names, results),
        "rewards": rewards_figure(plt, names, results),
        "subsets": subsets_figure(plt, names, results),
        "length": length_figure(plt, names, results) if all("length" in r.metrics for r in results) else None,
    }
    written = []
    for stem, fig in figures.items():
        if fig is not None:
            _save(fig, out / f"{stem}.png")
            written.append(out / f"{stem}.png")
            plt.close(fig)
    lines = [f"# {title}", "", f"Data: {data}", "", *[x for n in notes for x in (n, "")]]
    for name, res in zip(names, results):
        lines += [f"## {name}", "", "```", format_report(res.metrics), "```", ""]
    for d in differences or []:
        lines += [
            f"**{d['model']} minus {d['against']}** (paired bootstrap over prompts, 95% CI): accuracy "
            f"{d['accuracy_gain']:+.4f} [{d['accuracy_gain_ci95'][0]:+.4f}, {d['accuracy_gain_ci95'][1]:+.4f}],"
            f" log loss {d['log_loss_change']:+.4f} [{d['log_loss_change_ci95'][0]:+.4f}, "
            f"{d['log_loss_change_ci95'][1]:+.4f}]",
            "",
        ]
    lines += [f"![{p.stem}]({p.name})" for p in written]
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    return written + [out / "summary.md"]


def curves_figure(plt, curves: list[dict]):
    """Training and validation loss and accuracy over the optimizer steps, with chance marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, train_key, held_key, chance, what in (
        (axes[0], "train_loss", "log_loss", np.log(2), "loss"),
        (axes[1], "train_accuracy", "accuracy", 0.5, "accuracy"),
    ):
        pts = [(c["step"], c[train_key]) for c in curves if c.get(train_key) is not None]
        if pts:  # each point: the mean over the steps since the evaluation before it
            ax.plot(*zip(*pts), marker=".", label="training (mean since the last evaluation)")
        ax.plot(
            [c["step"] for c in curves],
            [c[held_key] for c in curves],
            marker="o",
            label=f"validation (held-out {'log loss' if what == 'loss' else 'pair accuracy'})",
        )
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set(xlabel="optimizer step", ylabel=what, title=f"{what.capitalize()} over training")
        ax.legend(fontsize=8)
    return fig


def reliability_figure(plt, names: list[str], results: list[EvalResult]):
    """Each model's reliability curve against the diagonal, with its ECE and fitted temperature."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="perfectly calibrated")
    for name, res in zip(names, results):
        c = res.metrics["calibration"]
        conf = [b["confidence"] for b in c["reliability"]]
        acc = [b["accuracy"] for b in c["reliability"]]
        ax.plot(conf, acc, marker="o", label=f"{Path(name).name} (ECE {c['ece']:.3f}, T {c['temperature']:.3g})")
    ax.set(
        xlabel="confidence: sigmoid(|r_a - r_b|) of the favoured completion",
        ylabel="share of votes the favoured completion won",
        xlim=(0.5, 1.0),
        ylim=(0.0, 1.0),
        title="Reliability of P(preferred beats rejected)",
    )
    ax.legend(fontsize=8)
    return fig


def rewards_figure(plt, names: list[str], results: list[EvalResult]):
    """Histograms of the preferred and rejected completions' rewards, weighted by votes, one panel per model."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, name, res in zip(axes[0], names, results):
        w, l, n = preferred_and_rejected(res)  # noqa: E741
        bins = np.linspace(min(w.min(), l.min()), max(w.max(), l.max()), 30)
        ax.hist(w, bins=bins, weights=n, alpha=0.6, label="preferred")
        ax.hist(l, bins=bins, weights=n, alpha=0.6, label="rejected")
        ax.set(xlabel="reward", ylabel="votes", title=Path(name).name)
        ax.legend(fontsize=8)
    return fig


def subsets_figure(plt, names: list[str], results: list[EvalResult]):
    """Accuracy per subset, a bar per model; None when the data names no subsets."""
    subsets = sorted({s for res in results for s in res.metrics.get("subsets", {})})
    if not subsets:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(subsets) * len(results)), 4))
    width = 0.8 / len(results)
    for i, (name, res) in enumerate(zip(names, results)):
        acc = [res.metrics["subsets"].get(s, {}).get("accuracy", np.nan) for s in subsets]
        ax.bar(np.arange(len(subsets)) + i * width, acc, width, label=Path(name).name)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(subsets)) + 0.4 - width / 2, subsets, rotation=45, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="Accuracy per subset")
    ax.legend(fontsize=8)
    return fig


def length_figure(plt, names: list[str], results: list[EvalResult]):
    """Per model: its accuracy where the preferred completion is shorter / longer and in the length-matched bins,
    each next to "the longer completion wins" on the same pairs."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.8), squeeze=False)
    for ax, name, res in zip(axes[0], names, results):
        length = res.metrics["length"]
        split = length["by_preferred_length"]
        cols = [
            (f"preferred\n{k}\n({split[k]['pairs']})", split[k]["accuracy"], 1.0 if k == "longer" else 0.0)
            for k in ("shorter", "longer")
        ]
        cols += [
            (
                f"|log ratio|\n{b['log_ratio'][0]:.2f}-{b['log_ratio'][1]:.2f}\n({b['pairs']})",
                b["accuracy"],
                b["longer_wins"],
            )
            for b in length["length_matched"]
        ]
        x = np.arange(len(cols))
        ax.bar(x, [np.nan if c[1] is None else c[1] for c in cols], 0.6, label="the model")
        ax.plot(
            x,
            [np.nan if c[2] is None else c[2] for c in cols],
            "k_",
            markersize=22,
            mew=2,
            label="the longer completion wins",
        )
        ax.axhline(res.metrics["accuracy"], color="C0", linestyle=":", linewidth=1, label="the model, all pairs")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, [c[0] for c in cols], fontsize=7)
        ax.set(ylabel="accuracy (votes)", ylim=(0, 1.05), title=f"{Path(name).name}: accuracy and length")
        ax.legend(fontsize=7)
    return fig


def write_training_report(out_dir, before: EvalResult, after: EvalResult, results: dict) -> None:
    """A training run's report (curves from its history, and the held-out metrics before and after training) as
    one directory swapped in whole; without matplotlib, a note instead."""
    why = plotting_missing()
    if why:
        log.info(f"note: no training report in {out_dir}: {why}, or pass --no-plots")
        return
    curves = [{"step": 0, **before.metrics}, *results["history"], {"step": results["steps"], **after.metrics}]
    change = {"model": "after training", "against": "before training", **results["change"]}
    cfg = results["config"]
    held = ", ".join(cfg["eval_data"]) if cfg["eval_data"] else f"{cfg['eval_fraction']:g} of the prompts (split)"
    notes = (
        f"{results['steps']} optimizer steps on {results['train_groups']} training groups; held out: "
        f"{results['eval_groups']} groups from {held}. Training data read: {results['data']['train']}.",
    )
    if not results["history"]:
        notes += (
            "Only the held-out metrics before and after training are plotted: evaluate during training with "
            "--eval-steps N for curves.",
        )
    with atomic_dir(out_dir) as tmp:
        files = write_report(
            tmp,
            ["before training", "after training"],
            [before, after],
            [change],
            ", ".join(cfg["train_data"]),
            curves,
            "Reward model training",
            notes,
        )
    log.info(f"training report written to {out_dir}: {', '.join(f.name for f in files)}")
