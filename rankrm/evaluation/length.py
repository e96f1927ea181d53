"""How much of a reward model's accuracy is length, as pure functions of rewards, labels and completion lengths.

The best-known failure of reward models is "longer is better". These metrics put the model next to the one-line
heuristic "the longer completion wins" on the same pairs, split its accuracy by whether the preferred completion is
the shorter or the longer one, correlate its rewards with length, and measure it on pairs of about equal length.
Lengths are characters of the completion where known (the text's own length, the same for every tokenizer and
untouched when --max-length cuts a prompt), else tokens of the completion after the shared prompt (its EOS
included; capped where the prompt was cut, so such pairs look equally long); the baseline is given in both. Every accuracy is vote-weighted and counts a tie (in reward, or in length for the
baseline) as half right, like the model's accuracy; "pairs" are votes, like the model's "pairs"."""

from __future__ import annotations

import numpy as np

from rankrm.errors import SettingsError

LENGTH_BINS = 4  # quantile bins of |log length ratio| for the length-matched accuracy


def ordered(d: np.ndarray) -> np.ndarray:
    """1 where d > 0, 1/2 where d == 0, else 0: a pair's share ordered right."""
    return np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))


def weighted_accuracy(d: np.ndarray, w: np.ndarray) -> float | None:
    """The vote-weighted share of pairs ordered right by d (ties 1/2); None without votes."""
    n = float(w.sum())
    return float((w * ordered(d)).sum() / n) if n else None


def length_unit(labels) -> str | None:
    """The unit the split, correlation, bins and length slice use: "chars" where every group knows them, else
    "tokens"; None when the labels carry no lengths (results saved before lengths were recorded)."""
    if labels and all(lab.chars is not None for lab in labels):
        return "chars"
    return "tokens" if labels and all(lab.tokens is not None for lab in labels) else None


def pair_lengths(labels, unit: str = "tokens") -> tuple[np.ndarray, np.ndarray] | None:
    """(winner lengths, loser lengths) of every stated comparison, aligned with metrics.stated_margins; None when a
    group does not know its completions' lengths in this unit ("tokens" or "chars")."""
    lengths = [getattr(lab, unit) for lab in labels]
    if any(x is None for x in lengths):
        return None
    lw = [n[w] for n, lab in zip(lengths, labels) for w, _ in lab.pairs]
    ll = [n[l] for n, lab in zip(lengths, labels) for _, l in lab.pairs]
    return np.asarray(lw, dtype=float), np.asarray(ll, dtype=float)


def split_by_preferred_length(d, len_w, len_l, w) -> dict:
    """The model's accuracy where the preferred completion is the longer, the shorter, and as long as the other."""
    out = {}
    for name, sel in (("longer", len_w > len_l), ("shorter", len_w < len_l), ("same", len_w == len_l)):
        out[name] = {"accuracy": weighted_accuracy(d[sel], w[sel]), "pairs": int(w[sel].sum())}
    return out


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of x, tied values given the mean of the ranks they span."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (Pearson's of the average ranks); None when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return None if denom == 0 else float((rx * ry).sum() / denom)


def length_correlation(rewards, lengths) -> dict:
    """Spearman of reward against length over all completions, and its mean over prompts (those whose rewards and
    lengths both vary; a K=2 prompt gives +1 or -1)."""
    per = [spearman(r, n) for r, n in zip(rewards, lengths) if len(r) >= 2]
    per = [c for c in per if c is not None]
    return {
        "spearman": spearman(np.concatenate(rewards), np.concatenate(lengths)),
        "spearman_per_prompt": float(np.mean(per)) if per else None,
        "prompts": len(per),
    }


def length_matched(d, len_w, len_l, w, bins: int = LENGTH_BINS) -> list[dict]:
    """Accuracy, and the longer-wins baseline, in bins of |log((1 + len_w) / (1 + len_l))|: quantiles over the comparisons
    (equal edges merged), each bin (lo, hi] but the first [lo, hi]; the first bin holds the pairs of most nearly
    equal length, where length cannot explain the model's choices."""
    x = np.abs(np.log((1 + len_w) / (1 + len_l)))  # (P,): one more (the EOS) so that an empty reply has a length
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1), method="lower"))
    which = np.searchsorted(edges[1:-1], x, side="left")  # (P,): x <= edges[1] in bin 0, ...
    out = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        out.append(
            {
                "log_ratio": [float(edges[b]), float(edges[min(b + 1, len(edges) - 1)])],
                "accuracy": weighted_accuracy(d[sel], w[sel]),
                "longer_wins": weighted_accuracy(len_w[sel] - len_l[sel], w[sel]),
                "pairs": int(w[sel].sum()),
            }
        )
    return out


def length_metrics(rewards, labels, d: np.ndarray, w: np.ndarray) -> dict:
    """The length block of EvalResult.metrics; d, w: margins and votes of every stated comparison (stated_margins).
    Empty when the labels carry no lengths (results saved before lengths were recorded)."""
    unit = length_unit(labels)
    if unit is None or not len(d):
        return {}
    lw, ll = pair_lengths(labels, unit)
    tokens, chars = pair_lengths(labels, "tokens"), pair_lengths(labels, "chars")
    return {
        "unit": unit,
        "longer_wins_tokens": None if tokens is None else weighted_accuracy(tokens[0] - tokens[1], w),
        "longer_wins_chars": None if chars is None else weighted_accuracy(chars[0] - chars[1], w),
        "by_preferred_length": split_by_preferred_length(d, lw, ll, w),
        "correlation": length_correlation(rewards, [np.asarray(getattr(lab, unit), dtype=float) for lab in labels]),
        "length_matched": length_matched(d, lw, ll, w),
    }


def length_warning(m: dict) -> str | None:
    """The warning for a model whose accuracy does not beat "the longer completion wins" (the better of tokens and
    characters) on the same pairs, else None."""
    length = m.get("length") or {}
    base = max(
        (v for v in (length.get("longer_wins_tokens"), length.get("longer_wins_chars")) if v is not None), default=None
    )
    if base is None or m["accuracy"] > base:
        return None
    return (
        f"warning: the length-only baseline (longer wins) scores {base:.4f} on these pairs, the model "
        f"{m['accuracy']:.4f}"
    )


def slice_values(labels, name: str) -> list:
    """One value per stated comparison (aligned with stated_margins) of a record field; "length" is built in
    (the preferred completion longer, shorter or as long, in length_unit). Raises SettingsError naming the fields there are
    when no comparison carries it."""
    if name == "length":
        unit = length_unit(labels)
        if unit is None:
            raise SettingsError("--slice length: these results carry no completion lengths. Fix: evaluate again")
        lw, ll = pair_lengths(labels, unit)
        return [
            "longer preferred" if a > b else "shorter preferred" if a < b else "same length" for a, b in zip(lw, ll)
        ]
    if not any(lab.fields and name in lab.fields for lab in labels):
        there = sorted({k for lab in labels for k in (lab.fields or {})})
        raise SettingsError(
            f"--slice {name}: no comparison carries a field {name!r}. Fix: name one of "
            f"{', '.join(['length', *there])} (pairwise records' other fields: short text, numbers, booleans)"
        )
    return [v for lab in labels for v in ((lab.fields or {}).get(name) or [None] * len(lab.pairs))]


def slice_metrics(d, w, values, len_w=None, len_l=None) -> dict:
    """Accuracy, log loss, the longer-wins baseline (given lengths) and votes per value of a per-comparison field,
    computed per comparison (a prompt's comparisons may carry different values). Comparisons without the field are
    the value "(none)"."""
    keys = np.array(["(none)" if v is None else str(v) for v in values], dtype=object)
    out = {}
    for key in sorted(set(keys)):
        sel = keys == key
        n = float(w[sel].sum())
        out[key] = {
            "accuracy": weighted_accuracy(d[sel], w[sel]),
            "log_loss": float((w[sel] * np.logaddexp(0.0, -d[sel])).sum() / n) if n else None,
            "longer_wins": None if len_w is None else weighted_accuracy(len_w[sel] - len_l[sel], w[sel]),
            "pairs": int(n),
        }
    return out
