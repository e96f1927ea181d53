"""Metrics of a reward model over held-out groups: pairwise accuracy and log loss with bootstrap confidence intervals
by prompt; ranking metrics (Kendall tau-b, top-1); accuracy against every vote and each pair's majority;
calibration (reliability table, ECE, temperature); accuracy per subset with RewardBench's sections."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.errors import DataError
from rankrm.evaluation.length import (
    length_metrics,
    length_unit,
    length_warning,
    pair_lengths,
    slice_metrics,
    slice_values,
)
from rankrm.evaluation.metrics import calibration, ranking_metrics, stated_margins, subset_metrics, vote_metrics
from rankrm.evaluation.uncertainty import spread_metrics
from rankrm.loss import group_stats
from rankrm.modeling.batch import collate
from rankrm.modeling.model import batch_outputs
from rankrm.modeling.planning import plan_batches
from rankrm.progress import with_progress

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
    tokens: tuple[int, ...] | None = None  # each completion's tokens after the shared prompt (its EOS included)
    chars: tuple[int, ...] | None = None  # each completion's characters
    fields: dict[str, tuple] | None = None  # record field -> one value per pair, for --slice

    @classmethod
    def of(cls, g: TokenizedGroup) -> Labels:
        """The labels of a tokenized group, with its completions' lengths and per-comparison fields."""
        return cls(
            tuple(g.ranks),
            tuple(g.comparisons()),
            tuple(g.votes()),
            g.stated_pairs is None,
            g.subset,
            tuple(len(row) - g.prompt_length for row in g.ids),
            None if g.chars is None else tuple(g.chars),
            None if g.fields is None else {k: tuple(v) for k, v in g.fields.items()},
        )

    def to_json(self) -> dict:
        return {
            "ranks": list(self.ranks),
            "pairs": [list(p) for p in self.pairs],
            "votes": list(self.votes),
            "full_ranking": self.full_ranking,
            "subset": self.subset,
            "tokens": None if self.tokens is None else list(self.tokens),
            "chars": None if self.chars is None else list(self.chars),
            "fields": None if self.fields is None else {k: list(v) for k, v in self.fields.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> Labels:
        return cls(
            tuple(d["ranks"]),
            tuple(tuple(p) for p in d["pairs"]),
            tuple(d["votes"]),
            d["full_ranking"],
            d.get("subset"),
            None if d.get("tokens") is None else tuple(d["tokens"]),
            None if d.get("chars") is None else tuple(d["chars"]),
            None if d.get("fields") is None else {k: tuple(v) for k, v in d["fields"].items()},
        )


@dataclass(frozen=True)
class EvalResult:
    """Per-group pair statistics (G,): votes ordered right (reward ties count 1/2), votes, summed log loss; and,
    for the ranking, vote, calibration and subset metrics, each group's rewards and labels."""

    correct: np.ndarray
    pairs: np.ndarray
    nll: np.ndarray
    rewards: tuple[np.ndarray, ...] = ()  # per group (K,)
    labels: tuple[Labels, ...] = ()
    members: tuple[np.ndarray, ...] = ()  # an ensemble's: per group (K, M) member rewards (uncertainty.py)

    @functools.cached_property
    def metrics(self) -> dict:
        """Accuracy and log loss over all votes, the mean per-group loss, 95% intervals, and (with rewards and
        labels) ranking, vote, calibration and per-subset metrics (computed once)."""
        keep = self.pairs > 0  # prompts without a comparison weigh nothing, and are not resampled
        correct, pairs, nll = self.correct[keep], self.pairs[keep], self.nll[keep]
        n = float(pairs.sum())
        idx = bootstrap_indices(len(pairs))  # (B, G)
        boot_pairs = pairs[idx].sum(axis=1)  # (B,)
        m = {
            "accuracy": float(correct.sum() / n),
            "log_loss": float(nll.sum() / n),
            "group_loss": float((nll / pairs).mean()),
            "groups": int(keep.sum()),
            "pairs": int(n),
            "accuracy_ci95": interval(correct[idx].sum(axis=1) / boot_pairs),
            "log_loss_ci95": interval(nll[idx].sum(axis=1) / boot_pairs),
        }
        if not self.labels:
            return m
        m.update(vote_metrics(self.rewards, self.labels))
        m.update(ranking_metrics(self.rewards, self.labels))
        d, w = stated_margins(self.rewards, self.labels)
        m["calibration"] = calibration(d, w)
        m.update(subset_metrics(self.correct, self.pairs, [x.subset for x in self.labels]))
        length = length_metrics(self.rewards, self.labels, d, w)
        if length:
            m["length"] = length
            length["warning"] = length_warning(m)
        if self.members:
            m["ensemble"] = spread_metrics(self.rewards, self.members, self.labels)
        return m

    def slices(self, names) -> dict:
        """Accuracy, log loss and the longer-wins baseline per value of each named per-comparison field ("length"
        built in: the preferred completion longer, shorter or as long), computed per comparison; lengths in
        length_unit (characters where known)."""
        d, w = stated_margins(self.rewards, self.labels)
        unit = length_unit(self.labels)
        lw, ll = pair_lengths(self.labels, unit) if unit else (None, None)
        return {name: slice_metrics(d, w, slice_values(self.labels, name), lw, ll) for name in names}

    def to_json(self) -> dict:
        return {
            "correct": self.correct.tolist(),
            "pairs": self.pairs.tolist(),
            "nll": self.nll.tolist(),
            "rewards": [r.tolist() for r in self.rewards],
            "labels": [x.to_json() for x in self.labels],
            **({"members": [x.tolist() for x in self.members]} if self.members else {}),
        }

    @classmethod
    def from_json(cls, d: dict) -> EvalResult:
        return cls(
            np.array(d["correct"], dtype=float),
            np.array(d["pairs"], dtype=float),
            np.array(d["nll"], dtype=float),
            tuple(np.array(r, dtype=float) for r in d.get("rewards", [])),
            tuple(Labels.from_json(x) for x in d.get("labels", [])),
            tuple(np.array(x, dtype=float) for x in d.get("members", [])),
        )


# -- the metrics the field reads, each a pure function of rewards and labels ----------------------------------------


def compare(before: EvalResult, after: EvalResult) -> dict:
    """The change from `before` to `after` on the same groups, with paired bootstrap 95% intervals (two models on
    the same data, or one model before and after training)."""
    if len(before.pairs) != len(after.pairs) or not np.array_equal(before.pairs, after.pairs):
        raise ValueError(
            "the two results do not cover the same groups and votes. Fix: evaluate both on the same "
            "data, read the same way"
        )
    keep = before.pairs > 0
    idx = np.flatnonzero(keep)[bootstrap_indices(int(keep.sum()))]  # (B, G): the same prompts on both sides
    boot_pairs = before.pairs[idx].sum(axis=1)  # (B,)
    d_acc = (after.correct[idx].sum(axis=1) - before.correct[idx].sum(axis=1)) / boot_pairs
    d_ll = (after.nll[idx].sum(axis=1) - before.nll[idx].sum(axis=1)) / boot_pairs
    a, b = after.metrics, before.metrics
    return {
        "accuracy_gain": a["accuracy"] - b["accuracy"],
        "accuracy_gain_ci95": interval(d_acc),
        "log_loss_change": a["log_loss"] - b["log_loss"],
        "log_loss_change_ci95": interval(d_ll),
    }


@torch.no_grad()
def evaluate_groups(
    model,
    groups: list[TokenizedGroup],
    batch_tokens: int = 4096,
    layout: str = "auto",
    cache=None,
    progress: bool = False,
    require_pairs: bool = True,
) -> EvalResult:
    """Score every completion once and collect each group's pair statistics (ties between labels excluded).

    cache: a frozen.FrozenLayerCache; the frozen layers then run only the first time a sequence is seen.
    require_pairs=False scores groups that state no comparison too (a share of a distributed evaluation)."""
    if require_pairs and (not groups or not any(g.comparisons() for g in groups)):
        raise DataError(
            "the evaluation data",
            None,
            None,
            "has no comparison to evaluate (every group is tied, or there are no groups)",
            "give evaluation data with ranked, untied completions",
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id
    correct, pairs, nll = (np.zeros(len(groups)) for _ in range(3))
    rewards: list[np.ndarray] = [np.zeros(0)] * len(groups)
    ensemble = model.head_spec.kind == "ensemble"
    members: list[np.ndarray] = [np.zeros((0, 0))] * len(groups) if ensemble else []
    lean = model.segment_aware  # the attention reads segments: no dense mask, allowed pairs in the cost model
    plan = plan_batches(groups, batch_tokens, layout, model.attention_per_token, kv=cache is None, segment_aware=lean)
    for idx, how in with_progress(plan, "evaluating", "batches", enabled=progress, leave=False):
        b = collate([groups[i] for i in idx], pad_id, how, dense_mask=not lean, with_segments=lean).to(device)
        out = batch_outputs(model, b, cache).double()  # (N, O)
        r = out[:, 0]
        s = group_stats(r, b.ranks, b.group_index, len(idx), b.pair_counts)
        correct[idx], pairs[idx], nll[idx] = (t.cpu().numpy() for t in (s.correct, s.pairs, s.nll))
        flat, at = out.cpu().numpy(), 0  # (N, O): the batch's completions in group order
        for i in idx:
            rewards[i] = flat[at : at + len(groups[i].ids), 0]
            if ensemble:
                members[i] = flat[at : at + len(groups[i].ids), 1:]
            at += len(groups[i].ids)
    model.train(was_training)
    return EvalResult(correct, pairs, nll, tuple(rewards), tuple(Labels.of(g) for g in groups), tuple(members))


def evaluate(
    model,
    data,
    fmt: str = "auto",
    batch_tokens: int = 4096,
    max_length: int | None = None,
    skip_invalid: bool = False,
    conflicts: str = "keep",
) -> EvalResult:
    """Evaluate a reward model (a RewardModel or a saved directory) on ranked data (files or RankedGroups).

    `.metrics` of the result holds accuracy, log loss and their 95% intervals, and the ranking, vote, calibration and
    per-subset metrics the data allows; `compare(a, b)` pairs two results."""
    from rankrm.data.encode import tokenize_groups
    from rankrm.data.readers import read_groups
    from rankrm.modeling.model import RewardModel

    if not isinstance(model, RewardModel):
        model = RewardModel.from_pretrained(str(model), max_length=max_length)
    given = isinstance(data, list) and data and hasattr(data[0], "completions")  # RankedGroups, not paths
    groups = data if given else read_groups(data, fmt, skip_invalid=skip_invalid, conflicts=conflicts)
    tokenized, _ = tokenize_groups(model, groups)
    return evaluate_groups(model, tokenized, batch_tokens)
