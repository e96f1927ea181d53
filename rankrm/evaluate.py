"""Metrics of a reward model over held-out groups: pairwise accuracy and log loss with bootstrap confidence intervals
by prompt; ranking metrics (Kendall tau-b, top-1); accuracy against every vote and each pair's majority;
calibration (reliability table, ECE, temperature); accuracy per subset with RewardBench's sections."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .batch import TokenizedGroup, collate
from .loss import group_stats
from .model import batch_rewards
from .planning import plan_batches

N_BOOT = 2000  # bootstrap resamples of the held-out prompts


def bootstrap_indices(n_groups: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(B, G) resampled group indices: whole prompts are resampled, since the pairs of one prompt correlate."""
    return np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))


def interval(values: np.ndarray) -> list[float]:
    """The central 95% of bootstrap values."""
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


@dataclass(frozen=True)
class Labels:
    """What the humans said about one held-out group, as the metrics read it."""

    ranks: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]  # the stated (winner, loser) comparisons
    votes: tuple[int, ...]  # how many times each pair was stated
    full_ranking: bool  # the ranks are the humans' own ranking (not a partial order or a summary of votes)
    subset: str | None = None

    @classmethod
    def of(cls, g: TokenizedGroup) -> "Labels":
        return cls(tuple(g.ranks), tuple(g.comparisons()), tuple(g.votes()), g.stated_pairs is None, g.subset)

    def to_json(self) -> dict:
        return {"ranks": list(self.ranks), "pairs": [list(p) for p in self.pairs], "votes": list(self.votes),
                "full_ranking": self.full_ranking, "subset": self.subset}

    @classmethod
    def from_json(cls, d: dict) -> "Labels":
        return cls(tuple(d["ranks"]), tuple(tuple(p) for p in d["pairs"]), tuple(d["votes"]), d["full_ranking"],
                   d.get("subset"))


@dataclass(frozen=True)
class EvalResult:
    """Per-group pair statistics (G,): votes ordered right (reward ties count 1/2), votes, summed log loss; and,
    for the ranking, vote, calibration and subset metrics, each group's rewards and labels."""

    correct: np.ndarray
    pairs: np.ndarray
    nll: np.ndarray
    rewards: tuple[np.ndarray, ...] = ()  # per group (K,)
    labels: tuple[Labels, ...] = ()

    @functools.cached_property
    def metrics(self) -> dict:
        """Accuracy and log loss over all votes, the mean per-group loss, 95% intervals, and (with rewards and
        labels) ranking, vote, calibration and per-subset metrics (computed once)."""
        keep = self.pairs > 0  # prompts without a comparison weigh nothing, and are not resampled
        correct, pairs, nll = self.correct[keep], self.pairs[keep], self.nll[keep]
        n = float(pairs.sum())
        idx = bootstrap_indices(len(pairs))  # (B, G)
        boot_pairs = pairs[idx].sum(axis=1)  # (B,)
        m = {"accuracy": float(correct.sum() / n), "log_loss": float(nll.sum() / n),
             "group_loss": float((nll / pairs).mean()), "groups": int(keep.sum()), "pairs": int(n),
             "accuracy_ci95": interval(correct[idx].sum(axis=1) / boot_pairs),
             "log_loss_ci95": interval(nll[idx].sum(axis=1) / boot_pairs)}
        if not self.labels:
            return m
        m.update(vote_metrics(self.rewards, self.labels))
        m.update(ranking_metrics(self.rewards, self.labels))
        d, w = stated_margins(self.rewards, self.labels)
        m["calibration"] = calibration(d, w)
        m.update(subset_metrics(self.correct, self.pairs, [x.subset for x in self.labels]))
        return m

    def to_json(self) -> dict:
        return {"correct": self.correct.tolist(), "pairs": self.pairs.tolist(), "nll": self.nll.tolist(),
                "rewards": [r.tolist() for r in self.rewards], "labels": [x.to_json() for x in self.labels]}

    @classmethod
    def from_json(cls, d: dict) -> "EvalResult":
        return cls(np.array(d["correct"], dtype=float), np.array(d["pairs"], dtype=float),
                   np.array(d["nll"], dtype=float), tuple(np.array(r, dtype=float) for r in d.get("rewards", [])),
                   tuple(Labels.from_json(x) for x in d.get("labels", [])))


# -- the metrics the field reads, each a pure function of rewards and labels ----------------------------------------


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
    return {"ranked_groups": len(top1), "kendall_tau_b": float(np.mean(taus)) if taus else None,
            "top1_accuracy": float(np.mean(top1)), "top1_reward_gap": float(np.mean(gaps))}


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
    return {"accuracy_votes": right / total, "accuracy_majority": majority_right / majority if majority else None,
            "majority_pairs": int(majority), "split_pairs": int(split)}


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
    bins; the temperature T minimizes the log loss of sigmoid(d / T) (T > 1: the model is overconfident)."""
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
    t = fit_temperature(d, w)
    return {"ece": float(ece), "reliability": table, "temperature": t,
            "log_loss_at_temperature": _log_loss(d / t, w)}


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
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
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
        per[name] = {"accuracy": float(correct[sel].sum() / pairs[sel].sum()), "pairs": int(pairs[sel].sum()),
                     "groups": int(sel.sum())}
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


def compare(before: EvalResult, after: EvalResult) -> dict:
    """The change from `before` to `after` on the same groups, with paired bootstrap 95% intervals (two models on
    the same data, or one model before and after training)."""
    if len(before.pairs) != len(after.pairs) or not np.array_equal(before.pairs, after.pairs):
        raise ValueError("the two results do not cover the same groups and votes. Fix: evaluate both on the same "
                         "data, read the same way")
    keep = before.pairs > 0
    idx = np.flatnonzero(keep)[bootstrap_indices(int(keep.sum()))]  # (B, G): the same prompts on both sides
    boot_pairs = before.pairs[idx].sum(axis=1)  # (B,)
    d_acc = (after.correct[idx].sum(axis=1) - before.correct[idx].sum(axis=1)) / boot_pairs
    d_ll = (after.nll[idx].sum(axis=1) - before.nll[idx].sum(axis=1)) / boot_pairs
    a, b = after.metrics, before.metrics
    return {"accuracy_gain": a["accuracy"] - b["accuracy"], "accuracy_gain_ci95": interval(d_acc),
            "log_loss_change": a["log_loss"] - b["log_loss"], "log_loss_change_ci95": interval(d_ll)}


def format_metrics(m: dict) -> str:
    """One line: accuracy with its interval, log loss, prompts and pairs."""
    return (f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]  "
            f"log loss {m['log_loss']:.4f}  ({m['groups']} prompts, {m['pairs']} pairs)")


def format_report(m: dict) -> str:
    """The metrics as a few lines: accuracy and log loss, then whichever of the ranking, vote, calibration and
    subset metrics the data allowed."""
    lines = [format_metrics(m)]
    if "top1_accuracy" in m:
        tau = "n/a" if m["kendall_tau_b"] is None else f"{m['kendall_tau_b']:.4f}"
        lines.append(f"ranking ({m['ranked_groups']} groups with K >= 3): Kendall tau-b {tau}  top-1 accuracy "
                     f"{m['top1_accuracy']:.4f}  reward gap of the model's pick to the humans' best "
                     f"{m['top1_reward_gap']:+.4f}")
    if "accuracy_votes" in m:
        maj = "n/a" if m["accuracy_majority"] is None else f"{m['accuracy_majority']:.4f}"
        lines.append(f"votes: accuracy against every vote {m['accuracy_votes']:.4f}, against each pair's majority "
                     f"{maj} ({m['majority_pairs']} pairs; {m['split_pairs']} split evenly, left out)")
    if "calibration" in m:
        c = m["calibration"]
        lines.append(f"calibration: ECE {c['ece']:.4f}  temperature {c['temperature']:.3g} (log loss "
                     f"{c['log_loss_at_temperature']:.4f} at it)")
        lines += [f"  P {b['bin'][0]:.2f}-{b['bin'][1]:.2f}: confidence {b['confidence']:.3f}  accuracy "
                  f"{b['accuracy']:.3f}  ({b['votes']:g} votes)" for b in c["reliability"]]
    if "subsets" in m:
        lines.append(f"subsets (mean accuracy {m['subset_mean']:.4f}):")
        lines += [f"  {name}: accuracy {v['accuracy']:.4f}  ({v['groups']} prompts, {v['pairs']} pairs)"
                  for name, v in m["subsets"].items()]
    if "sections" in m:
        lines.append("sections: " + "  ".join(f"{k} {v:.4f}" for k, v in m["sections"].items())
                     + f"  score {m['score']:.4f}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_groups(model, groups: list[TokenizedGroup], batch_tokens: int = 4096, layout: str = "auto", cache=None,
                    progress: bool = False, require_pairs: bool = True) -> EvalResult:
    """Score every completion once and collect each group's pair statistics (ties between labels excluded).

    cache: a frozen.FrozenLayerCache; the frozen layers then run only the first time a sequence is seen.
    require_pairs=False scores groups that state no comparison too (a share of a distributed evaluation)."""
    from tqdm.auto import tqdm

    if require_pairs and (not groups or not any(g.comparisons() for g in groups)):
        raise ValueError("no held-out comparison to evaluate (every group is tied or there are no groups). Fix: give "
                         "evaluation data with ranked, untied completions")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id
    correct, pairs, nll = (np.zeros(len(groups)) for _ in range(3))
    rewards: list[np.ndarray] = [np.zeros(0)] * len(groups)
    plan = plan_batches(groups, batch_tokens, layout, model.attention_per_token, kv=cache is None)
    for idx, how in tqdm(plan, desc="evaluating", disable=not progress, leave=False):
        b = collate([groups[i] for i in idx], pad_id, how).to(device)
        r = batch_rewards(model, b, cache).double()
        s = group_stats(r, b.ranks, b.group_index, len(idx), b.pair_counts)
        correct[idx], pairs[idx], nll[idx] = (t.cpu().numpy() for t in (s.correct, s.pairs, s.nll))
        flat, at = r.cpu().numpy(), 0  # (N,): the batch's completions in group order
        for i in idx:
            rewards[i] = flat[at:at + len(groups[i].ids)]
            at += len(groups[i].ids)
    model.train(was_training)
    return EvalResult(correct, pairs, nll, tuple(rewards), tuple(Labels.of(g) for g in groups))


def evaluate(model, data, fmt: str = "auto", batch_tokens: int = 4096, max_length: int | None = None,
             skip_invalid: bool = False, conflicts: str = "keep") -> EvalResult:
    """Evaluate a reward model (a RewardModel or a saved directory) on ranked data (files or RankedGroups).

    `.metrics` of the result holds accuracy, log loss and their 95% intervals, and the ranking, vote, calibration and
    per-subset metrics the data allows; `compare(a, b)` pairs two results."""
    from .batch import tokenize_groups
    from .readers import read_groups
    from .model import RewardModel

    if not isinstance(model, RewardModel):
        model = RewardModel.from_pretrained(str(model), max_length=max_length)
    given = isinstance(data, list) and data and hasattr(data[0], "completions")  # RankedGroups, not paths
    groups = data if given else read_groups(data, fmt, skip_invalid=skip_invalid, conflicts=conflicts)
    tokenized, _ = tokenize_groups(model, groups)
    return evaluate_groups(model, tokenized, batch_tokens)
