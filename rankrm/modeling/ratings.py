"""What an attributes head trains on and how its reward is made: the (N, A) rating targets of a batch with their
mask, the attribute names a run trains (given, or every one the data rates), and the reward's weights over them
(`--attribute-weights` / `rankrm normalize --weights name=w,...`), each bad value an error naming the setting."""

from __future__ import annotations

import math

import torch

from rankrm.errors import SettingsError


def attribute_targets(groups, names) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), each (N, A), for the completions of `groups` (TokenizedGroups) in group order, as collate
    lays them out; a rating not given is masked (its target 0, never read)."""
    rows = []
    for g in groups:
        cols = g.attributes or {}
        for i in range(len(g.ids)):
            rows.append([cols[n][i] if n in cols and cols[n][i] is not None else math.nan for n in names])
    t = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(names))  # (N, A)
    mask = ~torch.isnan(t)
    return torch.nan_to_num(t, nan=0.0), mask


def choose_attributes(asked: str, rated: dict[str, int], setting: str = "--attributes") -> tuple[str, ...]:
    """The attributes to train: `asked` ("NAME,NAME,..." or "auto": every attribute the data rates, sorted),
    each checked against what the data rates (`rated`: name -> ratings)."""
    if not rated:
        raise SettingsError(
            f"{setting} {asked!r}: the training data has no rated attributes. Fix: give data with ratings (native "
            '"attributes", a "scores" object, HelpSteer2 columns, UltraFeedback annotations or OpenAssistant '
            "labels; docs/attributes.md), or leave the setting out"
        )
    if asked.strip() == "auto":
        return tuple(sorted(rated))
    names = tuple(n.strip() for n in asked.split(",") if n.strip())
    if not names or len(set(names)) != len(names):
        raise SettingsError(f"{setting} {asked!r}: expected distinct names, NAME,NAME,... Fix: e.g. {setting} auto")
    unknown = [n for n in names if n not in rated]
    if unknown:
        raise SettingsError(
            f"{setting}: attribute {unknown[0]!r} is not rated in the training data. Fix: use some of "
            f"{', '.join(sorted(rated))} (or auto)"
        )
    return names


def parse_weights(text: str, setting: str = "--attribute-weights") -> dict[str, float]:
    """'name=w,name=w' as {name: w}, each w a finite number; an error naming the setting and the entry."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not eq or not name or not math.isfinite(w):
            raise SettingsError(
                f"{setting}: {part!r} is not name=number. Fix: write e.g. {setting} helpfulness=1,verbosity=-0.5"
            )
        if name in out:
            raise SettingsError(f"{setting}: attribute {name!r} given twice. Fix: give each attribute once")
        out[name] = w
    return out


def reward_weights(names, given: dict[str, float] | None, setting: str = "--attribute-weights") -> tuple[float, ...]:
    """The reward's weight of each attribute of `names`: the given ones (an attribute left out weighs 0), or, given
    none, the mean (1/A each). An attribute the model does not predict is an error naming it."""
    if not given:
        return tuple(1.0 / len(names) for _ in names)
    unknown = [n for n in given if n not in names]
    if unknown:
        raise SettingsError(
            f"{setting}: unknown attribute {unknown[0]!r}. Fix: weigh some of the model's attributes: "
            f"{', '.join(names)}"
        )
    return tuple(given.get(n, 0.0) for n in names)


@torch.no_grad()
def set_reward_weights(model, given: dict[str, float], setting: str = "--weights") -> tuple[float, ...]:
    """Make an attributes model's reward (output 0) sum_a w_a * attribute_a: the weights into its head description
    and row 0 of its head re-set from the attribute rows. The reward changes, so a normalization or calibration
    made for the old one is dropped (reward_bias 0): normalize again after (`rankrm normalize` does, when given
    --demonstrations with --weights)."""
    from rankrm.modeling.heads import HeadSpec, tie_reward_row

    spec = model.head_spec
    if spec.kind != "attributes":
        raise SettingsError(
            f"{setting}: the model has a {spec.kind} head, not rated attributes. Fix: give a model trained with "
            "--attributes, or leave the setting out"
        )
    weights = reward_weights(spec.names, given, setting)
    model.head_spec = HeadSpec("attributes", spec.names, weights)
    tie_reward_row(model.head, model.head_spec)
    model.reward_bias, model.normalization, model.calibration = 0.0, None, None
    return weights
