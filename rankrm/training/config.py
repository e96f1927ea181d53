"""TrainConfig: every training setting with its help text; the same names serve flags and YAML keys.

The flags and the YAML file (training/flags.py) come from the dataclass through HfArgumentParser; a YAML
file given with --config fills what the command line leaves out; every value is checked where it enters, before
any model loads, and a bad one is a ValueError naming the setting and the fix."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field

from rankrm.data.encode import tokenize_processes
from rankrm.data.judgments import CONFLICTS
from rankrm.data.readers import CONFLICTS_HELP, FORMAT_HELP, FORMAT_NAMES, SKIP_INVALID_HELP
from rankrm.errors import SettingsError
from rankrm.loss import OBJECTIVES, Objective
from rankrm.modeling.attention import layout_problem
from rankrm.modeling.batch import LAYOUTS
from rankrm.modeling.heads import HeadSpec
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.training.checks import coerce, flag, head_and_loss_problems
from rankrm.training.tracking import tracker_names

FORMATS = ("auto", *FORMAT_NAMES)
ALIASES = {"length_buckets": "length_sort_window"}  # earlier names of settings, still read


def opt(default, help: str, aliases: list[str] | None = None):
    """A config field with its help text (shown by --help)."""
    meta = {"help": f"{help} (default: {default})"}
    if aliases:
        meta["aliases"] = aliases
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Settings of one reward-model training run."""

    model: str = opt(
        DEFAULT_MODEL, "backbone: a hub id or a local Hugging Face directory (a saved rankrm model continues training)"
    )
    train_data: list[str] = opt(
        [],
        "training file(s) of ranked groups: JSONL, JSON, CSV, Parquet (gzip allowed), a "
        "datasets directory or hf:OWNER/NAME[:SPLIT]; any format of --format",
    )
    eval_data: list[str] = opt([], "held-out file(s); without them --eval-fraction of the prompts is held out")
    eval_fraction: float = opt(0.1, "share of prompts (conversation trees) held out when no --eval-data is given")
    format: str = opt("auto", FORMAT_HELP)
    skip_invalid: bool = opt(False, SKIP_INVALID_HELP)
    conflicts: str = opt("keep", CONFLICTS_HELP)
    data_cache: str = opt(
        "",
        "where the data, read and tokenized once, is kept as prepared stores, found again by a "
        "fingerprint of the files, format options, tokenizer and max length (empty: "
        "$RANKRM_DATA_CACHE, else ~/.cache/rankrm/data); --train-data may name a store itself "
        "(rankrm data prepare)",
    )
    num_proc: int = opt(0, "processes that tokenize the data when it is prepared (0: up to 8, one per CPU core)")
    output_dir: str = opt("runs/rm", "where the model, metrics and checkpoints are written")
    epochs: float = opt(1.0, "passes over the training groups (fractions allowed)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run the epochs)")
    learning_rate: float = opt(1e-5, "peak AdamW learning rate")
    head_learning_rate: float = opt(0.0, "learning rate of the fresh scalar head (0: same as --learning-rate)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_schedule: str = opt("cosine", "decay after warmup: cosine, linear or constant")
    warmup_ratio: float = opt(0.05, "share of the steps spent warming the learning rate up from 0")
    regime: str = opt(
        "grouped",
        "grouped: one batch element = one prompt with all its C(K,2) comparisons, each "
        "completion forwarded once (InstructGPT); shuffled-pairs: every comparison a separate "
        "example, shuffled across the data set, with the same number of comparisons per step",
    )
    objective: str = opt(
        "pairwise",
        "the ranking loss: pairwise (each group's mean of -log sigmoid(r_w - r_l) over its comparisons, vote-weighted; "
        "InstructGPT) or plackett-luce (the likelihood of each group's whole ranking: the best of K, then the best "
        "of the rest, ...; ties as Breslow's blocks; docs/objectives.md)",
    )
    listwise_top: int = opt(
        0, "plackett-luce: the likelihood of the first N stages only (1: pick the best of K; 0: the whole ranking)"
    )
    margin_scale: float = opt(
        0.0,
        "use each comparison's margin (pairwise `margin`, native `margins`) as -log sigmoid(r_w - r_l - s * "
        "margin) with s this scale (0: margins unused, as before; TRL's margin loss is 1)",
    )
    center_rewards: float = opt(
        0.0,
        "add C * mean((r_w + r_l)^2) over each group's comparisons to the loss, keeping rewards near 0 (TRL's "
        "center_rewards_coefficient, e.g. 0.01); logged apart as center_loss (0: off)",
    )
    batch_size: int = opt(16, "groups (prompts, each with all its completions) per optimizer step")
    micro_batch_tokens: int = opt(
        4096,
        "padded tokens per forward pass; a step accumulates gradients over as "
        "many as it needs, weighted so the update is the mean over its groups",
    )
    layout: str = opt(
        "auto",
        "batch layout: padded (one row per completion), packed (the prompt forwarded once: "
        "[prompt | c1 | ... | cK] rows, several groups per row, a 4D mask keeping completions "
        "apart), kv (the prompt forwarded once, its keys and values shared by its completions' "
        "rows) or auto (the cheapest per batch by tokens and attention area)",
    )
    length_sort_window: int = opt(
        16,
        "compose steps of groups of similar length, to cut padding: the shuffled epoch "
        "is cut into windows of N steps, each sorted by length, and the steps shuffled "
        "(0: steps are plain slices of the shuffled epoch)",
        aliases=["--length-buckets"],
    )
    gradient_checkpointing: bool = opt(
        False,
        "recompute each trained layer's activations in the backward pass: less memory, about a third more compute",
    )
    attn_implementation: str = opt(
        "sdpa",
        "attention kernel: sdpa (PyTorch's fused attention with the layout's mask; the reference), "
        "eager, rankrm_varlen (computes only the query-key pairs the layout allows: flash varlen "
        "on GPUs in bf16, an exact SDPA emulation on CPUs), or another name transformers knows "
        "(flash_attention_2, flex_attention, ...: --layout padded only, as they take no 4D mask)",
    )
    max_length: int = opt(512, "tokens per prompt + completion; longer ones lose the start of the prompt")
    max_train_groups: int = opt(0, "use only this many training groups, chosen at random by --seed (0: all)")
    train_layers: int = opt(
        -1,
        "train only the top N transformer layers plus the final norm and head "
        "(-1: the whole model; 0: the final norm and head)",
    )
    lora_r: int = opt(
        0,
        "LoRA rank for the backbone's linear layers (0: no LoRA); adapters merge into the saved "
        "model, which stays a plain Hugging Face model",
    )
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (the update is alpha / r * B A)")
    lora_targets: list[str] = opt(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "names of the linear layers that get LoRA adapters (GPT-2: c_attn c_proj c_fc)",
    )
    cache_frozen: bool = opt(
        True,
        "with --train-layers N >= 0, run the frozen layers below the top N once per "
        "sequence and reuse their output in later epochs and evaluations",
    )
    frozen_cache_gb: float = opt(
        2.0,
        "memory the frozen-layer cache may hold, in GB; beyond it new sequences run "
        "through the frozen layers each time (reported), those cached stay",
    )
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)")
    bf16: bool = opt(False, "bf16 autocast (fast on GPUs and CPUs with AMX/AVX512-BF16; slow on plain AVX2)")
    dtype: str = opt(
        "fp32",
        "precision the backbone's weights load in: fp32, or bf16 (half the memory of the frozen "
        "weights; the trained parameters are kept in fp32 for the optimizer and the forward runs "
        "under bf16 autocast, as Accelerate's and FSDP's mixed precision do)",
    )
    ensemble: int = opt(
        0,
        "train M >= 2 scalar heads (outputs 1..M) on the shared backbone, each with its own initialisation and its "
        "own bootstrap resample of the prompts (Poisson(1) weights from --seed); the reward (output 0) is their "
        "mean and `reward_std` their spread (0: one head; docs/training.md)",
    )
    length_head: bool = opt(
        False,
        "ODIN (Chen et al. 2024): a second, length head (output 1); the ranking loss trains quality + length, "
        "a correlation loss moves length into the length head; the saved reward is the quality head alone "
        "(docs/training.md)",
    )
    length_loss_weight: float = opt(1.0, "--length-head: weight of the loss |rho(r_quality, L)| - rho(r_length, L)")
    orthogonal_loss_weight: float = opt(1.0, "--length-head: weight of the |w_quality . w_length| penalty")
    seed: int = opt(0, "seed of the head's initialisation, the split and the data order")
    threads: int = opt(
        0,
        "CPU threads of torch's kernels (0: torch's default, one per core); the float sums depend on it, so give "
        "the same number to compare runs across machines or launchers (docs/reproducibility.md)",
    )
    full_determinism: bool = opt(
        False,
        "deterministic kernels everywhere, as transformers' enable_full_determinism: "
        "torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8, cudnn deterministic; needed for "
        "bit-identical runs on GPUs, slower there (CPU runs repeat without it; docs/reproducibility.md)",
    )
    attributes: str = opt(
        "",
        "rated attributes to predict, NAME,NAME,... or auto (every one the training data rates): an attributes "
        "head with one output per attribute, trained by a masked MSE on the ratings (missing ones masked); output "
        "0 stays the reward (docs/attributes.md). Empty: a plain reward model",
    )
    attribute_weights: str = opt(
        "",
        "the reward (output 0) as a weighted sum of the attributes, name=w,...: an attribute left out weighs 0 "
        "(empty: the mean of the attributes, or, with the ranking loss on, output 0 trained by it on its own)",
    )
    attribute_loss_weight: float = opt(1.0, "weight of the attributes' masked MSE in the loss (with --attributes)")
    ranking_loss_weight: float = opt(
        1.0, "weight of the ranking loss with --attributes (0: the attributes' regression alone)"
    )
    eval_steps: int = opt(0, "evaluate every N steps (0: only before and after training)")
    save_steps: int = opt(0, "write a resumable checkpoint every N steps (0: only at the end)")
    save_minutes: float = opt(
        0.0,
        "also write a checkpoint when this many minutes have passed since the last one (0: off); preemptible clusters",
    )
    on_nonfinite: str = opt(
        "stop",
        "a NaN or infinite loss or gradient norm: stop (the run ends with an error naming "
        "the step; no model is saved) or skip (that step's update is dropped and counted)",
    )
    keep_checkpoints: int = opt(2, "how many of the latest checkpoints to keep")
    resume: str = opt("", "resume from a checkpoint directory, or 'latest' for the newest in --output-dir")
    eval_batch_tokens: int = opt(
        4096, "padded tokens per forward pass when evaluating (on CPUs, small batches run faster per token)"
    )
    report_to: str = opt(
        "none",
        "send the training loss and accuracy of every step and the held-out metrics of "
        "every evaluation to experiment trackers, through Accelerate: none, all (every "
        "installed one), or a comma list of tensorboard, wandb, trackio, mlflow, comet_ml, "
        "aim, clearml, dvclive, swanlab; local logs go to OUTPUT_DIR/logs (tensorboard "
        "--logdir OUTPUT_DIR/logs)",
    )
    plots: bool = opt(
        True,
        "at the end, write OUTPUT_DIR/report/: PNG plots (training and validation curves, "
        "reliability diagram, rewards of preferred vs rejected completions, accuracy per subset) "
        "and summary.md; needs matplotlib (pip install 'rankrm[report]'), skipped with a note "
        "without it",
    )

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), field_types()[f.name], "TrainConfig"))
        for problem in self.problems():
            raise SettingsError(problem)

    def problems(self) -> typing.Iterator[str]:
        """Each bad setting as a message naming the flag and the fix (the first one is raised)."""
        if not self.train_data:
            yield "no training data. Fix: pass --train-data FILE (or train-data: in the YAML config)"
        for name, choices in (
            ("lr_schedule", ("cosine", "linear", "constant")),
            ("layout", LAYOUTS),
            ("regime", ("grouped", "shuffled-pairs")),
            ("format", FORMATS),
            ("on_nonfinite", ("stop", "skip")),
            ("dtype", ("fp32", "bf16")),
            ("conflicts", CONFLICTS),
            ("objective", OBJECTIVES),
        ):
            if getattr(self, name) not in choices:
                yield f"{flag(name)} {getattr(self, name)!r} unknown. Fix: use one of {', '.join(choices)}"
        positive = (
            "learning_rate",
            "batch_size",
            "micro_batch_tokens",
            "eval_batch_tokens",
            "lora_alpha",
            "keep_checkpoints",
        )
        at_least_zero = (
            "head_learning_rate",
            "weight_decay",
            "max_steps",
            "length_sort_window",
            "max_train_groups",
            "lora_r",
            "max_grad_norm",
            "eval_steps",
            "save_steps",
            "save_minutes",
            "num_proc",
            "frozen_cache_gb",
            "threads",
            "listwise_top",
            "margin_scale",
            "center_rewards",
            "length_loss_weight",
            "orthogonal_loss_weight",
        )
        for name in positive + at_least_zero:
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (name in positive and v == 0):
                yield (
                    f"{flag(name)} must be {'> 0' if name in positive else '>= 0'}, got {v}. Fix: give a "
                    f"{'positive' if name in positive else 'non-negative'} number"
                )
        if not (math.isfinite(self.epochs) and self.epochs > 0) and not self.max_steps:
            yield f"--epochs must be > 0, got {self.epochs}. Fix: give a positive number of epochs (or --max-steps N)"
        if not 0 <= self.warmup_ratio < 1:
            yield f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}. Fix: e.g. 0.05"
        if not 0 < self.eval_fraction < 1:
            yield f"--eval-fraction must be in (0, 1), got {self.eval_fraction}. Fix: e.g. 0.1"
        if self.max_length < MIN_LENGTH:
            yield (
                f"--max-length {self.max_length} leaves no room for a prompt and a completion. Fix: give at least "
                f"{MIN_LENGTH} (prompts are cut from the left; a completion needs its own tokens and its EOS)"
            )
        if self.train_layers < -1:
            yield f"--train-layers must be -1 (the whole model) or >= 0, got {self.train_layers}"
        if self.layout == "kv" and self.gradient_checkpointing:
            yield (
                "the kv layout keeps the prompt's keys and values, which gradient checkpointing drops. Fix: use "
                "--layout auto (it then chooses between padded and packed) or no checkpointing"
            )
        if problem := layout_problem(self.attn_implementation, self.layout):
            yield problem
        yield from head_and_loss_problems(self)
        if self.lora_r and self.train_layers >= 0:
            yield "--lora-r and --train-layers both choose what trains. Fix: give one of them"
        try:
            tracker_names(self.report_to)
        except ValueError as e:
            yield str(e)

    @property
    def loss_objective(self) -> Objective:
        """The objective the training step minimises (loss.objective_loss)."""
        return Objective(self.objective, self.listwise_top, self.margin_scale, self.center_rewards)

    @property
    def autocast_bf16(self) -> bool:
        """Whether the forward runs under bf16 autocast (--bf16, or weights loaded in bf16)."""
        return self.bf16 or self.dtype == "bf16"

    @property
    def head_spec(self) -> HeadSpec:
        """The head this run trains: scalar, an ensemble (--ensemble M) or ODIN's two (--length-head)."""
        if self.ensemble:
            return HeadSpec.ensemble(self.ensemble)
        return HeadSpec.odin() if self.length_head else HeadSpec()

    @property
    def tokenize_processes(self) -> int:
        return tokenize_processes(self.num_proc)

    @property
    def frozen_cache_on(self) -> bool:
        """Whether the frozen layers run once per sequence (top layers trained, the cache on, not LoRA)."""
        return self.cache_frozen and self.train_layers >= 0 and not self.lora_r


MIN_LENGTH = 8


@functools.cache
def field_types() -> dict:
    return typing.get_type_hints(TrainConfig)
