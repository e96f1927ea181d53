"""Metrics of rated-attribute predictions on held-out data, per attribute: RMSE, Pearson's r and Spearman's rho,
beside the constant-mean baseline (every completion given the training ratings' mean), pure functions of arrays.

A missing rating (NaN target) is left out of that attribute's figures only; a correlation is None where it is
undefined (fewer than two ratings, or either side constant: the baseline's predictions always are), never NaN, so
the metrics stay JSON."""

from __future__ import annotations

import math

import numpy as np


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
