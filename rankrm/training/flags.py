"""The command line and YAML face of TrainConfig: one flag per setting, a --config file, and their merge
(dataclass defaults < YAML < command-line flags), each value read as its setting's type (checks.coerce)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

from rankrm.errors import SettingsError
from rankrm.training.checks import coerce
from rankrm.training.config import ALIASES, TrainConfig, field_types


def train_flags() -> argparse.ArgumentParser:
    """A parent parser (argparse parents=) with --config and one flag per TrainConfig field, via HfArgumentParser."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(TrainConfig, add_help=False)
    parser.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})  # None: not on the command line
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file whose keys mirror the flags (train-data or train_data); flags given on the command line win",
    )
    return parser


def read_yaml(path: Path) -> dict:
    """The settings of a YAML config file, by field name, typed; unknown keys are named."""
    if not path.is_file():
        raise SettingsError(f"{path}: no such config file. Fix: check the --config path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SettingsError(
            f"{path}: not valid YAML ({str(e).splitlines()[0]}). Fix: write 'key: value' lines"
        ) from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings. Fix: write 'key: value' lines")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in names:
            raise SettingsError(
                f"{path}: unknown setting {key!r}. Fix: use one of "
                f"{', '.join(sorted(n.replace('_', '-') for n in names))}"
            )
        values[name] = coerce(name, value, field_types()[name], str(path))
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge dataclass defaults < YAML config < command-line flags into a TrainConfig."""
    values = read_yaml(args.config) if getattr(args, "config", None) is not None else {}
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return TrainConfig(**values)
