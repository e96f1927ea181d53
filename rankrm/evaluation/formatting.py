"""The evaluation metrics as text: the one-line summary a training log prints at every evaluation, and the full
report `rankrm eval` prints (ranking, votes, calibration, subsets, length, ensemble spread, slices)."""

from __future__ import annotations

from rankrm.evaluation.uncertainty import format_spread


def format_metrics(m: dict) -> str:
    """One line: accuracy with its interval, log loss, prompts and pairs."""
    return (
        f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]  "
        f"log loss {m['log_loss']:.4f}  ({m['groups']} prompts, {m['pairs']} pairs)"
    )


def format_report(m: dict) -> str:
    """The metrics as a few lines: accuracy and log loss, then whichever of the ranking, vote, calibration and
    subset metrics the data allowed."""
    lines = [format_metrics(m)]
    if "top1_accuracy" in m:
        tau = "n/a" if m["kendall_tau_b"] is None else f"{m['kendall_tau_b']:.4f}"
        lines.append(
            f"ranking ({m['ranked_groups']} groups with K >= 3): Kendall tau-b {tau}  top-1 accuracy "
            f"{m['top1_accuracy']:.4f}  reward gap of the model's pick to the humans' best "
            f"{m['top1_reward_gap']:+.4f}"
        )
    if "accuracy_votes" in m:
        maj = "n/a" if m["accuracy_majority"] is None else f"{m['accuracy_majority']:.4f}"
        lines.append(
            f"votes: accuracy against every vote {m['accuracy_votes']:.4f}, against each pair's majority "
            f"{maj} ({m['majority_pairs']} pairs; {m['split_pairs']} split evenly, left out)"
        )
    if "calibration" in m:
        c = m["calibration"]
        lines.append(
            f"calibration: ECE {c['ece']:.4f}  temperature {c['temperature']:.3g} (at it: log loss "
            f"{c['log_loss_at_temperature']:.4f}, ECE {_num(c.get('ece_at_temperature'))})"
        )
        lines += [
            f"  P {b['bin'][0]:.2f}-{b['bin'][1]:.2f}: confidence {b['confidence']:.3f}  accuracy "
            f"{b['accuracy']:.3f}  ({b['votes']:g} votes)"
            for b in c["reliability"]
        ]
    if "subsets" in m:
        lines.append(f"subsets (mean accuracy {m['subset_mean']:.4f}):")
        lines += [
            f"  {name}: accuracy {v['accuracy']:.4f}  ({v['groups']} prompts, {v['pairs']} pairs)"
            for name, v in m["subsets"].items()
        ]
    if "sections" in m:
        lines.append(
            "sections: " + "  ".join(f"{k} {v:.4f}" for k, v in m["sections"].items()) + f"  score {m['score']:.4f}"
        )
    if "length" in m:
        lines += format_length(m["length"], m["accuracy"])
    if m.get("ensemble"):
        lines += format_spread(m["ensemble"])
    for name, values in m.get("slices", {}).items():
        lines.append(f"slice {name}:")
        lines += [
            f"  {key}: accuracy {_num(v['accuracy'])}  log loss {_num(v['log_loss'])}  longer wins "
            f"{_num(v['longer_wins'])}  ({v['pairs']} pairs)"
            for key, v in values.items()
        ]
    return "\n".join(lines)


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_length(length: dict, accuracy: float) -> list[str]:
    """The length block as lines: the longer-wins baseline next to the model, the shorter/longer split, the
    reward-length correlation, the length-matched bins, and the warning when the baseline is not beaten."""
    split, corr = length["by_preferred_length"], length["correlation"]
    unit = {"chars": "characters", "tokens": "tokens"}[length.get("unit", "tokens")]
    lines = [
        f"length: the model {accuracy:.4f}; the longer completion wins (no model) {_num(length['longer_wins_tokens'])}"
        f" by tokens, {_num(length['longer_wins_chars'])} by characters",
        f"  the model where the preferred completion ({unit}) is "
        + ", ".join(f"{k} {_num(v['accuracy'])} ({v['pairs']} pairs)" for k, v in split.items()),
        f"  Spearman of reward with length {_num(corr['spearman'], 3)} over completions, "
        f"{_num(corr['spearman_per_prompt'], 3)} mean per prompt ({corr['prompts']} prompts)",
        "  length-matched: the model and the longer-wins baseline on pairs binned by |log length ratio|",
    ]
    lines += [
        f"    {b['log_ratio'][0]:.2f}-{b['log_ratio'][1]:.2f}: the model {_num(b['accuracy'])}  longer wins "
        f"{_num(b['longer_wins'])}  ({b['pairs']} pairs)"
        for b in length["length_matched"]
    ]
    if length.get("warning"):
        lines.append(length["warning"])
    return lines
