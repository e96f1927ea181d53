"""The metrics the field reads, as pure functions of rewards and labels: Kendall tau-b, top-1 and its reward gap,
accuracy against every vote and each pair's majority, calibration (reliability table, ECE, temperature), and
accuracy per subset with RewardBench's sections. EvalResult (evaluate.py) computes them once."""

from __future__ import annotations

import math

import numpy as np


def kendall_tau_b(x, y) -> float | None:
    """Kendall's tau-b between two scorings of the same items (higher is better in both); None when either is
    constant. (n_c - n_d) / sqrt((n_0 - t_x) (n_0 - t_y)), t: pairs tied in that scoring."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    denom = math.sqrt((n0 - np.sum(sx == 0)) * (n0 - np.sum(sy == 0)))
    return None if denom == 0 else float(np.sum(sx * sy) / denom)


def ranking_metrics(rewards, labels) -> dict:
    """Over groups the humans ranked whole with K >= 3: the mean Kendall tau-b of rewards against the human ranking,
    top-1 accuracy (the model's highest reward is one of the humans' best) and the mean reward gap between the
    model's pick and the best-scored of the humans' best (0 when the pick is right). Empty without such groups."""
    taus, top1, gaps = [], [], []
    for r, lab in zip(rewards, labels):
        if not lab.full_ranking or len(r) < 3:
            continue
        ranks = np.asarray(lab.ranks)
        tau = kendall_tau_b(-ranks, r)
        if tau is not None:
            taus.append(tau)
        best = ranks == ranks.min()
        pick = int(np.argmax(r))
        top1.append(float(best[pick]))
        gaps.append(float(r[pick] - r[best].max()))
    if not top1:
        return {}
    return {
        "ranked_groups": len(top1),
        "kendall_tau_b": float(np.mean(taus)) if taus else None,
        "top1_accuracy": float(np.mean(top1)),
        "top1_reward_gap": float(np.mean(gaps)),
    }


def vote_metrics(rewards, labels) -> dict:
    """For data with several votes on a comparison: accuracy against every vote, and against each pair's majority
    (pairs whose votes split evenly left out and counted). Empty when every pair was stated once, one way."""
    if all(max(lab.votes, default=1) == 1 and not _contradicted(lab.pairs) for lab in labels):
        return {}
    right = total = majority_right = majority = split = 0.0
    for r, lab in zip(rewards, labels):
        tally: dict[tuple[int, int], int] = {}
        for (w, l), n in zip(lab.pairs, lab.votes):
            right += n * _ordered(r[w] - r[l])
            total += n
            key = (min(w, l), max(w, l))
            tally[key] = tally.get(key, 0) + (n if w < l else -n)  # votes for the lower index minus the other's
        for (a, b), net in tally.items():
            if net == 0:
                split += 1
                continue
            majority += 1
            majority_right += _ordered(r[a] - r[b] if net > 0 else r[b] - r[a])
    return {
        "accuracy_votes": right / total,
        "accuracy_majority": majority_right / majority if majority else None,
        "majority_pairs": int(majority),
        "split_pairs": int(split),
    }


def _contradicted(pairs) -> bool:
    stated = set(pairs)
    return any((l, w) in stated for w, l in pairs)


def _ordered(d: float) -> float:
    """1 when the winner's reward is higher, 1/2 on a reward tie, else 0."""
    return 1.0 if d > 0 else 0.5 if d == 0 else 0.0


def stated_margins(rewards, labels) -> tuple[np.ndarray, np.ndarray]:
    """(d, w): r_w - r_l of every stated comparison and its votes."""
    d = [r[w] - r[l] for r, lab in zip(rewards, labels) for w, l in lab.pairs]
    w = [n for lab in labels for n in lab.votes]
    return np.asarray(d, dtype=float), np.asarray(w, dtype=float)


CALIBRATION_BINS = 10


def calibration(d: np.ndarray, w: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """How well P(w beats l) = sigmoid(r_w - r_l) is calibrated, from margins d with vote weights w.

    Each comparison is read from the side the model favours: confidence sigmoid(|d|) in [0.5, 1], right when
    that side won (a reward tie: confidence 1/2, half right). The reliability table bins confidence in `bins`
    equal bins over [0.5, 1]; the expected calibration error is the vote-weighted mean |accuracy - confidence| over
    bins; the temperature T minimizes the log loss of sigmoid(d / T) (T > 1: the model is overconfident), and the
    ECE at it is what dividing every reward by T would give."""
    table, ece = reliability(d, w, bins)
    t = fit_temperature(d, w)
    return {
        "ece": ece,
        "reliability": table,
        "temperature": t,
        "log_loss_at_temperature": _log_loss(d / t, w),
        "ece_at_temperature": reliability(d / t, w, bins)[1],  # what rankrm would get with rewards divided by T
    }


def reliability(d: np.ndarray, w: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[list[dict], float]:
    """(reliability table, expected calibration error) of margins d with vote weights w (see calibration)."""
    conf = 1 / (1 + np.exp(-np.abs(d)))  # (P,)
    right = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))  # (P,)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)  # (P,)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = float(w[sel].sum())
        if n == 0:
            continue
        acc, c = float((w[sel] * right[sel]).sum() / n), float((w[sel] * conf[sel]).sum() / n)
        ece += n / w.sum() * abs(acc - c)
        table.append({"bin": [float(edges[b]), float(edges[b + 1])], "votes": n, "confidence": c, "accuracy": acc})
    return table, float(ece)


def _log_loss(d: np.ndarray, w: np.ndarray) -> float:
    return float((w * np.logaddexp(0.0, -d)).sum() / w.sum())  # -log sigmoid(d) = log(1 + e^-d)


def fit_temperature(d: np.ndarray, w: np.ndarray, lo: float = 1e-3, hi: float = 1e3) -> float:
    """The T in [lo, hi] minimizing the vote-weighted log loss of sigmoid(d / T).

    The loss is convex in 1/T (a logistic regression through the origin), so it is unimodal in log T: a golden-
    section search on log T finds it. A model whose every vote is right wants T -> 0 and gets lo; one worse than
    chance would want a negative T (flip its rewards) and gets hi, where its log loss is ln 2."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    f = lambda x: _log_loss(d / math.exp(x), w)  # noqa: E731
    c, e = b - g * (b - a), a + g * (b - a)
    fc, fe = f(c), f(e)
    for _ in range(200):
        if fc < fe:
            b, e, fe = e, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, e, fe
            e = a + g * (b - a)
            fe = f(e)
    return float(math.exp((a + b) / 2))


# RewardBench's sections (rewardbench's SUBSET_MAPPING); a section's score is the mean of its subsets' accuracies
# weighted by their examples, with math-prm weighted as much as all hep-* code subsets together, as RewardBench does.
REWARDBENCH_SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}


def subset_metrics(correct: np.ndarray, pairs: np.ndarray, subsets) -> dict:
    """Accuracy per subset (records' `subset` or `category`) and their unweighted mean; RewardBench's section
    scores where its subsets are present, and their mean ("score"). Empty when no group names a subset."""
    names = sorted({s for s in subsets if s is not None})
    if not names:
        return {}
    per = {}
    for name in names:
        sel = np.array([s == name for s in subsets])
        per[name] = {
            "accuracy": float(correct[sel].sum() / pairs[sel].sum()),
            "pairs": int(pairs[sel].sum()),
            "groups": int(sel.sum()),
        }
    out = {"subsets": per, "subset_mean": float(np.mean([v["accuracy"] for v in per.values()]))}
    sections = {}
    for section, members in REWARDBENCH_SECTIONS.items():
        present = [s for s in members if s in per]
        if not present:
            continue
        weight = {s: per[s]["pairs"] for s in present}
        if "math-prm" in weight:
            code = sum(per[s]["pairs"] for s in present if s.startswith("hep-"))
            weight["math-prm"] = code or weight["math-prm"]
        sections[section] = sum(per[s]["accuracy"] * weight[s] for s in present) / sum(weight.values())
    if sections:
        out["sections"] = sections
        out["score"] = float(np.mean(list(sections.values())))
    return out
