"""Pairwise accuracy and log loss over held-out groups, with bootstrap confidence intervals by prompt."""

from __future__ import annotations

import functools
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
class EvalResult:
    """Per-group pair statistics (G,): pairs ordered right (reward ties count 1/2), pairs, summed log loss."""

    correct: np.ndarray
    pairs: np.ndarray
    nll: np.ndarray

    @functools.cached_property
    def metrics(self) -> dict:
        """Accuracy and log loss over all pairs, the mean per-group loss, and 95% intervals (computed once)."""
        n = float(self.pairs.sum())
        keep = self.pairs > 0
        idx = bootstrap_indices(len(self.pairs))  # (B, G)
        boot_pairs = self.pairs[idx].sum(axis=1)  # (B,)
        return {"accuracy": float(self.correct.sum() / n), "log_loss": float(self.nll.sum() / n),
                "group_loss": float((self.nll[keep] / self.pairs[keep]).mean()),
                "groups": int(keep.sum()), "pairs": int(n),
                "accuracy_ci95": interval(self.correct[idx].sum(axis=1) / boot_pairs),
                "log_loss_ci95": interval(self.nll[idx].sum(axis=1) / boot_pairs)}

    def to_json(self) -> dict:
        return {"correct": self.correct.tolist(), "pairs": self.pairs.tolist(), "nll": self.nll.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "EvalResult":
        return cls(np.array(d["correct"], dtype=float), np.array(d["pairs"], dtype=float),
                   np.array(d["nll"], dtype=float))


def compare(before: EvalResult, after: EvalResult) -> dict:
    """The change from `before` to `after` on the same groups, with paired bootstrap 95% intervals."""
    idx = bootstrap_indices(len(before.pairs))  # (B, G): the same prompts on both sides
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


@torch.no_grad()
def evaluate_groups(model, groups: list[TokenizedGroup], batch_tokens: int = 4096, layout: str = "auto", cache=None,
             progress: bool = False) -> EvalResult:
    """Score every completion once and collect each group's pair statistics (ties between labels excluded).

    cache: a frozen.FrozenLayerCache; the frozen layers then run only the first time a sequence is seen."""
    from tqdm.auto import tqdm

    if not groups or not any(g.comparisons() for g in groups):
        raise ValueError("no held-out comparison to evaluate (every group is tied or there are no groups). Fix: give "
                         "evaluation data with ranked, untied completions")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id
    correct, pairs, nll = (np.zeros(len(groups)) for _ in range(3))
    plan = plan_batches(groups, batch_tokens, layout, model.attention_per_token, kv=cache is None)
    for idx, how in tqdm(plan, desc="evaluating", disable=not progress, leave=False):
        b = collate([groups[i] for i in idx], pad_id, how).to(device)
        r = batch_rewards(model, b, cache).double()
        s = group_stats(r, b.ranks, b.group_index, len(idx), b.pair_counts)
        correct[idx], pairs[idx], nll[idx] = (t.cpu().numpy() for t in (s.correct, s.pairs, s.nll))
    model.train(was_training)
    return EvalResult(correct, pairs, nll)


def evaluate(model, data, fmt: str = "auto", batch_tokens: int = 4096, max_length: int | None = None,
             skip_invalid: bool = False) -> EvalResult:
    """Evaluate a reward model (a RewardModel or a saved directory) on ranked data (files or RankedGroups).

    `.metrics` of the result holds accuracy, log loss and their 95% intervals; `compare(a, b)` pairs two results."""
    from .batch import tokenize_groups
    from .readers import read_groups
    from .model import RewardModel

    if not isinstance(model, RewardModel):
        model = RewardModel.from_pretrained(str(model), max_length=max_length)
    given = isinstance(data, list) and data and hasattr(data[0], "completions")  # RankedGroups, not paths
    groups = data if given else read_groups(data, fmt, skip_invalid=skip_invalid)
    tokenized, _ = tokenize_groups(model, groups)
    return evaluate_groups(model, tokenized, batch_tokens)
