"""Reading and checking settings beyond one field's range: a value as its field's type (coerce), and the settings
of the objective, the head and the rated attributes that must go together (head_and_loss_problems). Each problem
is a message naming the flag and the fix; TrainConfig raises the first."""

from __future__ import annotations

import math
import typing
from pathlib import Path

from rankrm.errors import SettingsError
from rankrm.modeling.ratings import parse_weights


def flag(name: str) -> str:
    """A setting's command-line spelling: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def coerce(name: str, value, tp, where: str):
    """A setting's value as its field's type: numbers written as text ('1e-5', "8") are read as numbers, a single
    path as a list of one; anything else of the wrong type is a ValueError naming where and the setting."""

    def bad(expected: str):
        return SettingsError(
            f"{where}: setting {name.replace('_', '-')!r}: expected {expected}, got {value!r}. Fix: "
            f"write {expected} (see rankrm train --help)"
        )

    if typing.get_origin(tp) is list:
        if isinstance(value, (str, Path)):
            return [str(value)]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, Path)) for v in value):
            raise bad("a list of strings")
        return [str(v) for v in value]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("an integer" if tp is int else "a number") from None
        if not isinstance(value, (int, float)):
            raise bad("an integer" if tp is int else "a number")
        if tp is int:
            if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
                raise bad("an integer")
            return int(value)
        return float(value)
    if tp is str and not isinstance(value, str):
        raise bad("a string")
    return value


def head_and_loss_problems(cfg) -> typing.Iterator[str]:
    """The objective's, the head's and the attributes' settings that do not go together (cfg: a TrainConfig)."""
    yield from objective_problems(cfg)
    if cfg.ensemble == 1 or cfg.ensemble < 0:
        yield f"--ensemble must be 0 (one head) or at least 2 members, got {cfg.ensemble}. Fix: e.g. --ensemble 4"
    if cfg.attributes and (cfg.ensemble or cfg.length_head):
        yield "--attributes is a head of its own, as --ensemble and --length-head are. Fix: give one of them"
    if cfg.ensemble and cfg.length_head:
        yield "--ensemble and --length-head are two different heads. Fix: give one of them"
    yield from attribute_problems(cfg)


def objective_problems(cfg) -> typing.Iterator[str]:
    """The objective settings that do not go together."""
    if cfg.objective == "pairwise" and cfg.listwise_top:
        yield (
            f"--listwise-top {cfg.listwise_top} is Plackett-Luce's truncation; the pairwise objective has no "
            "stages. Fix: add --objective plackett-luce, or leave --listwise-top at 0"
        )
    if cfg.objective == "plackett-luce" and cfg.margin_scale:
        yield (
            f"--margin-scale {cfg.margin_scale:g} shifts each pairwise comparison; Plackett-Luce has no "
            "comparisons to shift. Fix: use --objective pairwise with margins, or leave --margin-scale at 0"
        )
    if cfg.objective == "plackett-luce" and cfg.regime == "shuffled-pairs":
        yield (
            "--regime shuffled-pairs cuts each ranking into separate pairs; Plackett-Luce needs whole rankings. "
            "Fix: use --regime grouped with --objective plackett-luce, or --objective pairwise"
        )


def attribute_problems(cfg) -> typing.Iterator[str]:
    """The attribute settings' problems: weights' syntax, settings that need --attributes, negative weights."""
    for name in ("attribute_loss_weight", "ranking_loss_weight"):
        v = getattr(cfg, name)
        if not math.isfinite(v) or v < 0:
            yield f"{flag(name)} must be >= 0, got {v}. Fix: give a non-negative number"
    if not cfg.attributes:
        for name in ("attribute_weights", "attribute_loss_weight", "ranking_loss_weight"):
            if getattr(cfg, name) != getattr(type(cfg), name):
                yield f"{flag(name)} is for attribute models. Fix: pass --attributes NAME,... (or auto)"
        return
    if cfg.attribute_loss_weight == 0:
        yield "--attribute-loss-weight 0 trains no attribute. Fix: leave --attributes out, or give a weight > 0"
    try:
        parse_weights(cfg.attribute_weights)
    except SettingsError as e:
        yield str(e)
