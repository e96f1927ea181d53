"""Pairwise accuracy and log loss over held-out groups, with bootstrap confidence intervals by prompt."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batching import TokenizedGroup, collate_groups, plan_batches, to_device
from .loss import group_pair_stats


@dataclass
class EvalResult:
    """Per-group pair statistics (G,) and the metrics over all pairs."""

    correct: np.ndarray
    pairs: np.ndarray
    nll: np.ndarray

    @property
    def metrics(self) -> dict:
        n = float(self.pairs.sum())
        keep = self.pairs > 0
        return {"accuracy": float(self.correct.sum() / n), "log_loss": float(self.nll.sum() / n),
                "group_loss": float((self.nll[keep] / self.pairs[keep]).mean()),
                "groups": int(keep.sum()), "pairs": int(n),
                "accuracy_ci95": bootstrap_ci(self, lambda c, p, l: c.sum() / p.sum()),
                "log_loss_ci95": bootstrap_ci(self, lambda c, p, l: l.sum() / p.sum())}


def _resample(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))  # (B, G)


def bootstrap_ci(res: EvalResult, stat, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of a statistic, resampling held-out prompts (groups), since pairs of one prompt correlate."""
    idx = _resample(len(res.pairs), n_boot, seed)
    vals = [stat(res.correct[i], res.pairs[i], res.nll[i]) for i in idx]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def compare(before: EvalResult, after: EvalResult, n_boot: int = 2000, seed: int = 0) -> dict:
    """The change from `before` to `after` on the same groups, with paired bootstrap 95% intervals."""
    idx = _resample(len(before.pairs), n_boot, seed)
    d_acc = [(after.correct[i].sum() - before.correct[i].sum()) / before.pairs[i].sum() for i in idx]
    d_ll = [(after.nll[i].sum() - before.nll[i].sum()) / before.pairs[i].sum() for i in idx]
    a, b = after.metrics, before.metrics
    return {"accuracy_gain": a["accuracy"] - b["accuracy"],
            "accuracy_gain_ci95": [float(np.percentile(d_acc, 2.5)), float(np.percentile(d_acc, 97.5))],
            "log_loss_change": a["log_loss"] - b["log_loss"],
            "log_loss_change_ci95": [float(np.percentile(d_ll, 2.5)), float(np.percentile(d_ll, 97.5))]}


@torch.no_grad()
def evaluate(model, groups: list[TokenizedGroup], batch_tokens: int = 4096, progress: bool = False,
             prefix=None, layout: str = "auto") -> EvalResult:
    """Score every completion once and collect each group's pair statistics (ties between labels excluded).

    With a FrozenPrefix cache, the frozen layers run only the first time a token sequence is seen."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = model.tokenizer.pad_token_id
    g = len(groups)
    correct, pairs, nll = np.zeros(g), np.zeros(g), np.zeros(g)
    for idx, how in tqdm(plan_batches(groups, batch_tokens, layout, model.attention_per_token,
                                         kv=prefix is None), desc="evaluating",
                         disable=not progress, leave=False):
        b = to_device(collate_groups([groups[i] for i in idx], pad_id, layout=how), device)
        if prefix is None:
            r = model(b["input_ids"], b["attention_mask"], b["position_ids"], b["end_index"], b.get("prompt"))
        else:
            r = prefix.forward(model, b)
        stats = group_pair_stats(r.double(), b["ranks"], b["group_index"], len(idx), b.get("pair_mask"))
        c, p, l = (t.cpu().double().numpy() for t in stats)
        correct[idx], pairs[idx], nll[idx] = c, p, l
    model.train(was_training)
    return EvalResult(correct, pairs, nll)
