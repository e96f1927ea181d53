"""TrainConfig: every training setting with its help text; the same names serve flags and YAML keys."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .batching import LAYOUTS
from .model import DEFAULT_MODEL


def opt(default, help: str, **kw):
    """A config field with its help text (shown by --help)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Settings of one reward-model training run."""

    model: str = opt(DEFAULT_MODEL, "backbone: a hub id or a local Hugging Face directory (a saved rankrm model "
                                    "continues training)")
    train_data: list[str] = opt([], "training file(s) of ranked groups: JSONL, JSON, CSV, Parquet (gzip allowed), a "
                                    "datasets directory or hf:OWNER/NAME[:SPLIT]; any format of --format")
    eval_data: list[str] = opt([], "held-out file(s); without them --eval-fraction of the prompts is held out")
    eval_fraction: float = opt(0.1, "share of prompts (conversation trees) held out when no --eval-data is given")
    format: str = opt("auto", "data format: auto (from the fields), native, pairwise, implicit, scored or oasst")
    skip_invalid: bool = opt(False, "skip invalid records (counted by reason in the data report) instead of "
                                    "stopping at the first with an error")
    output_dir: str = opt("runs/rm", "where the model, metrics and checkpoints are written")
    epochs: float = opt(1.0, "passes over the training groups (fractions allowed)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run the epochs)")
    learning_rate: float = opt(1e-5, "peak AdamW learning rate")
    head_learning_rate: float = opt(0.0, "learning rate of the fresh scalar head (0: same as --learning-rate)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_schedule: str = opt("cosine", "decay after warmup: cosine, linear or constant")
    warmup_ratio: float = opt(0.05, "share of the steps spent warming the learning rate up from 0")
    regime: str = opt("grouped", "grouped: one batch element = one prompt with all its C(K,2) comparisons, each "
                                 "completion forwarded once (InstructGPT); shuffled-pairs: every comparison a separate "
                                 "example, shuffled across the data set, with the same number of comparisons per step")
    batch_size: int = opt(16, "groups (prompts, each with all its completions) per optimizer step")
    micro_batch_tokens: int = opt(4096, "padded tokens per forward pass; a step accumulates gradients over as "
                                        "many as it needs, weighted so the update is the mean over its groups")
    layout: str = opt("auto", "batch layout: padded (one row per completion), packed (the prompt forwarded once: "
                                "[prompt | c1 | ... | cK] rows, several groups per row, a 4D mask keeping completions "
                                "apart), kv (the prompt forwarded once, its keys and values shared by its completions' "
                                "rows) or auto (the cheapest per batch by tokens and attention area)")
    length_buckets: int = opt(16, "compose steps of groups of similar length, to cut padding: the shuffled epoch is "
                                  "cut into chunks of N steps, each sorted by length, and the steps shuffled (0: "
                                  "steps are plain slices of the shuffled epoch)")
    gradient_checkpointing: bool = opt(False, "recompute each trained layer's activations in the backward pass: "
                                              "less memory, about a third more compute")
    attn_implementation: str = opt("sdpa", "attention kernel: sdpa (PyTorch's fused attention, which picks flash or "
                                           "memory-efficient kernels on GPUs), eager, or another name transformers "
                                           "knows (flash_attention_2 and flex_attention on GPUs; padded layout only "
                                           "for flash_attention_2, which takes no 4D mask)")
    max_length: int = opt(512, "tokens per prompt + completion; longer ones lose the start of the prompt")
    max_train_groups: int = opt(0, "use only this many training groups, chosen at random by --seed (0: all)")
    train_layers: int = opt(-1, "train only the top N transformer layers plus the final norm and head "
                                "(-1: the whole model; 0: the final norm and head)")
    lora_r: int = opt(0, "LoRA rank for the backbone's linear layers (0: no LoRA); adapters merge into the saved "
                         "model, which stays a plain Hugging Face model")
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (the update is alpha / r * B A)")
    lora_targets: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                  "names of the linear layers that get LoRA adapters (GPT-2: c_attn c_proj c_fc)")
    cache_frozen: bool = opt(True, "with --train-layers N >= 0, run the frozen layers below the top N once per "
                                   "sequence and reuse their output in later epochs and evaluations")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)")
    bf16: bool = opt(False, "bf16 autocast (fast on GPUs and CPUs with AMX/AVX512-BF16; slow on plain AVX2)")
    seed: int = opt(0, "seed of the head's initialisation, the split and the data order")
    eval_steps: int = opt(0, "evaluate every N steps (0: only before and after training)")
    save_steps: int = opt(0, "write a resumable checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "how many of the latest checkpoints to keep")
    resume: str = opt("", "resume from a checkpoint directory, or 'latest' for the newest in --output-dir")
    eval_batch_tokens: int = opt(4096, "padded tokens per forward pass when evaluating (on CPUs, small batches "
                                       "run faster per token)")

    def __post_init__(self):
        if not self.train_data:
            raise ValueError("no training data. Fix: pass --train-data FILE (or train-data: in the YAML config)")
        if self.lr_schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r} unknown. Fix: use cosine, linear or constant")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} unknown. Fix: use padded, packed, kv or auto")
        if self.layout == "kv" and self.gradient_checkpointing:
            raise ValueError("the kv layout keeps the prompt's keys and values, which gradient checkpointing drops. "
                             "Fix: use --layout auto (it then chooses between padded and packed) or no checkpointing")
        if self.length_buckets < 0:
            raise ValueError(f"length_buckets must be >= 0, got {self.length_buckets}")
        if self.attn_implementation == "flash_attention_2" and self.layout != "padded":
            raise ValueError("flash_attention_2 takes no 4D attention mask, which the packed layout needs. Fix: use "
                             "--layout padded with it, or --attn-implementation sdpa")
        if self.regime not in ("grouped", "shuffled-pairs"):
            raise ValueError(f"regime {self.regime!r} unknown. Fix: use grouped or shuffled-pairs")
        if self.lora_r and self.train_layers >= 0:
            raise ValueError("--lora-r and --train-layers both choose what trains. Fix: give one of them")
        for name in ("batch_size", "micro_batch_tokens", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One flag per field (--train-data for train_data), defaulting to None so YAML values can fill in."""
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", type=Path, help="YAML file whose keys mirror the flags (train-data or "
                                                    "train_data); flags given on the command line win")
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = {"help": f"{f.metadata['help']} (default: {default})", "default": None, "dest": f.name}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kw.update(nargs="+", type=typing.get_args(tp)[0])
        else:
            kw["type"] = tp
        parser.add_argument(_flag(f.name), **kw)


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    """Merge dataclass defaults < YAML config < command-line flags into a config object."""
    values = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if args.config is not None:
        if not args.config.is_file():
            raise ValueError(f"{args.config}: no such config file. Fix: check the --config path")
        raw = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings. Fix: write 'key: value' lines")
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ValueError(f"{args.config}: unknown setting {key!r}. Fix: use one of "
                                 f"{', '.join(sorted(n.replace('_', '-') for n in names))}")
            if name in ("train_data", "eval_data") and isinstance(value, str):
                value = [value]
            values[name] = value
    for name in names:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return cls(**values)
