"""Metrics of rated-attribute predictions on held-out data, per attribute: RMSE, Pearson's r and Spearman's rho,
beside the constant-mean baseline (every completion given the training ratings' mean), pure functions of arrays.

A missing rating (NaN target) is left out of that attribute's figures only; a correlation is None where it is
undefined (fewer than two ratings, or either side constant: the baseline's predictions always are), never NaN, so
the metrics stay JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import torch


def rmse(pred, target) -> float | None:
    """The root mean squared error; None for no values."""
    pred, target = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    return None if len(pred) == 0 else float(math.sqrt(np.mean((pred - target) ** 2)))


def pearson(x, y) -> float | None:
    """Pearson's correlation coefficient; None when it is undefined (n < 2 or either side constant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    return None if denom == 0 else float(np.sum(dx * dy) / denom)


def average_ranks(x) -> np.ndarray:
    """1-based ranks, tied values given the mean of the ranks they span ([10, 20, 20, 5] -> [2, 3.5, 3.5, 1])."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # the mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float | None:
    """Spearman's rank correlation: Pearson's r of the average ranks (ties share their mean rank)."""
    return pearson(average_ranks(x), average_ranks(y))


def attribute_metrics(pred, target, names, train_means=None) -> dict:
    """{name: {ratings, rmse, pearson, spearman, baseline_rmse, mean}} per attribute, and "mean" over attributes.

    pred (N, A): the model's attribute outputs; target (N, A): the held-out ratings, NaN where missing; names (A,);
    train_means (A,): the training ratings' means, the constant baseline's predictions (the held-out mean when
    None, which flatters the baseline)."""
    pred, target = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    out = {}
    for a, name in enumerate(names):
        seen = ~np.isnan(target[:, a])
        p, t = pred[seen, a], target[seen, a]
        if not len(t):
            out[name] = {"ratings": 0}
            continue
        mean = float(t.mean()) if train_means is None else float(train_means[a])
        out[name] = {
            "ratings": int(seen.sum()),
            "rmse": rmse(p, t),
            "pearson": pearson(p, t),
            "spearman": spearman(p, t),
            "baseline_rmse": rmse(np.full(len(t), mean), t),
            "baseline_mean": mean,
        }
    rated = [m for m in out.values() if m["ratings"]]
    out["mean"] = {
        key: (None if any(m[key] is None for m in rated) or not rated else float(np.mean([m[key] for m in rated])))
        for key in ("rmse", "pearson", "spearman", "baseline_rmse")
    }
    return out


def train_means(view, names) -> list[float | None]:
    """Each attribute's mean rating over training groups (a StoreView or TokenizedGroups): the constant baseline's
    predictions; None for an attribute with no training rating."""
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    cols = view.column("attributes") if hasattr(view, "column") else [g.attributes for g in view]
    for c in cols:
        if c is None:
            continue
        c = json.loads(c) if isinstance(c, str) else c
        for a, name in enumerate(names):
            values = [v for v in c.get(name, ()) if v is not None]
            sums[a] += sum(values)
            counts[a] += len(values)
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


@torch.no_grad()
def evaluate_attributes(model, groups, names, means=None, batch_tokens: int = 4096, layout: str = "auto", cache=None):
    """attribute_metrics of the model's attribute outputs (1..A) on the held-out groups that carry ratings, in one
    pass over those groups (the same batches as evaluate_groups plans). means: the training ratings' means."""
    from rankrm.modeling.batch import collate
    from rankrm.modeling.model import batch_outputs
    from rankrm.modeling.planning import plan_batches
    from rankrm.modeling.ratings import attribute_targets

    rated = [g for g in (groups[i] for i in range(len(groups))) if g.attributes]
    if not rated:
        return {name: {"ratings": 0} for name in names}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, targets = [], []
    plan = plan_batches(rated, batch_tokens, layout, model.attention_per_token, kv=cache is None)
    for idx, how in plan:
        part = [rated[i] for i in idx]
        b = collate(part, model.tokenizer.pad_token_id, how, dense_mask=not model.segment_aware).to(device)
        out = batch_outputs(model, b, cache).double().cpu()  # (N, O)
        t, m = attribute_targets(part, names)  # (N, A)
        preds.append(out[:, 1 : 1 + len(names)].numpy())
        targets.append(np.where(m.numpy(), t.double().numpy(), np.nan))
    model.train(was_training)
    return attribute_metrics(np.concatenate(preds), np.concatenate(targets), names, means)


def format_attributes(m: dict) -> list[str]:
    """The per-attribute metrics as lines: RMSE against the constant-mean baseline's, Pearson, Spearman."""

    def num(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = []
    for name, v in m.items():
        if name == "mean" or not v.get("ratings"):
            continue
        lines.append(
            f"  {name}: RMSE {num(v['rmse'])} (constant mean {num(v['baseline_rmse'])})  Pearson {num(v['pearson'])}"
            f"  Spearman {num(v['spearman'])}  ({v['ratings']} ratings)"
        )
    return lines
