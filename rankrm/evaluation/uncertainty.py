"""Does an ensemble's spread predict its errors? Accuracy by quantile of each comparison's member spread.

An ensemble (--ensemble M, modeling/heads.py) gives each completion M member rewards; for a stated comparison
(w, l) member m's margin is d_m = r_m(w) - r_m(l), and the comparison's spread is their population standard
deviation std_m(d_m): how much the members disagree about that comparison (the std of the margin, not of either
reward, since a shift every member shares for one prompt cancels in a comparison). If the spread is useful, the
mean reward's accuracy falls from the least to the most disputed quantile bin."""

from __future__ import annotations

import numpy as np

SPREAD_BINS = 4


def comparison_spreads(rewards, members, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stated comparison's (margin of the mean reward, spread of the members' margins, votes), flat."""
    d, s, w = [], [], []
    for r, mem, lab in zip(rewards, members, labels):
        for (a, b), v in zip(lab.pairs, lab.votes):
            d.append(r[a] - r[b])
            s.append(np.std(mem[a] - mem[b]))  # (M,) margins -> their population std
            w.append(v)
    return np.asarray(d, float), np.asarray(s, float), np.asarray(w, float)


def spread_metrics(rewards, members, labels, bins: int = SPREAD_BINS) -> dict:
    """Accuracy (reward ties count 1/2, vote-weighted) in quantile bins of the comparisons' spread, and the mean
    spread of the comparisons the mean reward gets right and wrong. Bins by rank, so ties in spread never leave a
    bin empty; the last bin takes the remainder."""
    d, s, w = comparison_spreads(rewards, members, labels)
    if not len(d):
        return {}
    right = (d > 0) + 0.5 * (d == 0)
    order = np.argsort(s, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(order))):
        out.append(
            {
                "spread": [float(s[chunk].min()), float(s[chunk].max())],
                "accuracy": float((right[chunk] * w[chunk]).sum() / w[chunk].sum()),
                "pairs": int(len(chunk)),
            }
        )
    wrong = right < 1
    return {
        "spread_bins": out,
        "mean_spread_right": float(s[~wrong].mean()) if (~wrong).any() else None,
        "mean_spread_wrong": float(s[wrong].mean()) if wrong.any() else None,
        "members": int(np.asarray(members[0]).shape[-1]),
    }


def format_spread(u: dict) -> list[str]:
    """The spread block of `rankrm eval` and the training log as lines."""

    def num(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        f"ensemble spread ({u['members']} members; std of the members' margins): mean {num(u['mean_spread_right'])} "
        f"where the reward is right, {num(u['mean_spread_wrong'])} where wrong; accuracy by spread quantile:"
    ]
    lines += [
        f"  {b['spread'][0]:.4f}-{b['spread'][1]:.4f}: accuracy {b['accuracy']:.4f}  ({b['pairs']} pairs)"
        for b in u["spread_bins"]
    ]
    return lines
