"""What a training run carries, typed: the state a checkpoint keeps (RunState), this process's counters, the
optimizer and its units (Run, made by plan_run, with the identity a resume is checked against), the prepared model
(Prepared), one step's statistics (StepStats), and what `train` returns (TrainResult)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from rankrm.data.encode import TokenizedGroup, shuffled_pairs
from rankrm.data.store import StoreView
from rankrm.loss import Objective
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.objective import HeadLoss

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    """One step's forward and backward on this process. loss: the summed group loss (a tensor, to avoid a sync);
    correct, pairs: pairs ordered right, pairs stated; tokens: what the model read (the batches' real tokens);
    per_completion_tokens: what one padded row per completion would read; layouts: each micro-batch's; center: the
    summed group centering term (--center-rewards), kept apart from loss."""

    loss: torch.Tensor
    correct: torch.Tensor | float = 0.0
    pairs: torch.Tensor | float = 0.0
    tokens: int = 0
    per_completion_tokens: int = 0
    completions: int = 0
    layouts: list[str] = field(default_factory=list)
    center: torch.Tensor | float = 0.0
    host_seconds: float = 0.0  # planning and collating on the critical path (waiting for them, when prefetched)


@dataclass
class RunState:
    """What a checkpoint keeps of the run besides weights, optimizer and schedule: its JSON is the checkpoint's
    `run_state` ({"history": [...], "skipped_nonfinite": n, "before": {...}}), the same shape as before it was typed."""

    history: list[dict] = field(default_factory=list)  # the evaluations during training, one dict per eval step
    skipped_nonfinite: int = 0  # updates dropped by --on-nonfinite skip
    before: dict | None = None  # the held-out EvalResult before training (EvalResult.to_json)

    def to_json(self) -> dict:
        out = {"history": self.history, "skipped_nonfinite": self.skipped_nonfinite}
        return out if self.before is None else {**out, "before": self.before}

    @classmethod
    def from_json(cls, d: dict) -> RunState:
        return cls(list(d.get("history", [])), int(d.get("skipped_nonfinite", 0)), d.get("before"))


@dataclass
class Counters:
    """What this process forwarded since the run (or its resume) started, and the time it took."""

    tokens: int = 0  # tokens the model read: a group's shared prompt once in the packed and kv layouts
    per_completion_tokens: int = 0  # tokens one padded row per completion (prompt repeated K times) would read
    completions: int = 0
    t0: float = 0.0  # when the loop started
    eval_seconds: float = 0.0  # evaluations during training (not training time)
    train_seconds: float = 0.0  # set when the loop ends

    def add(self, st: StepStats) -> None:
        self.tokens += st.tokens
        self.per_completion_tokens += st.per_completion_tokens
        self.completions += st.completions

    def seconds(self) -> float:
        """Training time so far (evaluations left out)."""
        return time.time() - self.t0 - self.eval_seconds


@dataclass
class Run:
    """What the loop carries: optimizer and schedule, the training units and steps, the state checkpoints keep and
    this process's counters."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    units: list[TokenizedGroup]
    step_size: int
    steps_per_epoch: int
    total_steps: int
    trainable: list[str]
    identity: dict
    start: int = 0
    state: RunState = field(default_factory=RunState)
    counters: Counters = field(default_factory=Counters)


@dataclass
class Prepared:
    """The pieces every step uses: the Accelerator, the model as it prepared it (DDP-wrapped under several
    processes: backward, no_sync), the unwrapped RewardModel (evaluation, checkpoints), the frozen-layer cache and
    the head's objective."""

    accelerator: object
    model: nn.Module
    core: RewardModel
    cache: FrozenLayerCache | None = None
    objective: HeadLoss = field(default_factory=HeadLoss)  # the run's loss (training/objective.py)


@dataclass
class TrainResult:
    """What `train` returns, as eval_results.json holds it (to_json); `result["after"]` reads a field as the file's
    key, for code written against the dict it was."""

    before: dict  # held-out metrics before training
    after: dict  # and after
    change: dict  # after minus before, with paired bootstrap 95% intervals
    steps: int
    train_groups: int
    eval_groups: int
    regime: str
    completions_forwarded: int
    skipped_nonfinite_steps: int
    train_seconds: float
    train_tokens_per_second: float  # tokens the model read per second of training
    train_tokens: int  # tokens the model read: a group's shared prompt once in the packed and kv layouts
    train_tokens_per_completion_layout: int  # what one padded row per completion would have read
    data: dict
    history: list[dict]
    config: dict

    def to_json(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)


# -- optimizer, schedule and the run's state --------------------------------------------------------------------


def plan_run(cfg: TrainConfig, model: RewardModel, trainable: list[str], tok_train) -> Run:
    """AdamW over the trainable parameters (the head at its own rate), the schedule, and the units of a step."""
    from transformers import get_scheduler

    head = {n for n, _ in model.named_parameters() if n.startswith("hf.score")}
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in trainable if n not in head], "lr": cfg.learning_rate},
        {"params": [params[n] for n in trainable if n in head], "lr": cfg.head_learning_rate or cfg.learning_rate},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    # the units of an optimizer step: whole groups, or (shuffled-pairs) single comparisons, as many per step as
    # batch_size groups hold on average, so both regimes take the same steps over the same comparisons
    if cfg.regime == "shuffled-pairs":
        units = shuffled_pairs(tok_train)
        step_size = max(1, round(cfg.batch_size * len(units) / len(tok_train)))
        log.info(f"regime shuffled-pairs: {len(units)} comparisons as separate examples, {step_size} per step")
    else:
        units, step_size = tok_train, cfg.batch_size
    steps_per_epoch = math.ceil(len(units) / step_size)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total)
    identity = run_identity(cfg, tok_train, trainable, total, steps_per_epoch)
    return Run(optimizer, scheduler, units, step_size, steps_per_epoch, total, trainable, identity)


def run_identity(cfg: TrainConfig, train, trainable: list[str], total: int, steps_per_epoch: int) -> dict:
    """What decides a run's result, compared on resume: model, data (a prepared store's fingerprint, which covers
    the files, options and tokenizer, and which of its groups train; groups given in memory: their tokens),
    trainable set, seed, schedule."""
    if isinstance(train, StoreView):
        h = hashlib.sha256(train.store.fingerprint.encode())
        h.update(np.ascontiguousarray(train.indices, dtype=np.int64).tobytes())
    else:
        h = hashlib.sha256()
        for u in train:
            h.update(json.dumps([u.ids, u.ranks, u.stated_pairs, u.counts]).encode())
    schedule = {
        k: getattr(cfg, k)
        for k in (
            "learning_rate",
            "head_learning_rate",
            "weight_decay",
            "lr_schedule",
            "warmup_ratio",
            "batch_size",
            "regime",
            "length_sort_window",
        )
    }
    objective = cfg.loss_objective
    if objective != Objective():  # only when not the default: checkpoints of earlier runs keep their identity
        schedule["objective"] = asdict(objective)
    out = {
        "model": cfg.model,
        "data_sha256": h.hexdigest(),
        "seed": cfg.seed,
        "trainable": hashlib.sha256("\n".join(trainable).encode()).hexdigest()[:16],
        "schedule": {**schedule, "total_steps": total, "steps_per_epoch": steps_per_epoch},
    }
    spec = cfg.head_spec
    if spec.kind != "scalar":  # a scalar run's identity stays what it was before heads existed (its checkpoints resume)
        out["head"] = {
            **spec.to_json(),
            "length_weight": cfg.length_loss_weight,
            "orthogonal_weight": cfg.orthogonal_loss_weight,
        }
    if cfg.attributes:  # the attributes asked and the loss's weights: a resume must train the same head
        out["attributes"] = {
            "asked": cfg.attributes,
            "weights": cfg.attribute_weights,
            "attribute_loss_weight": cfg.attribute_loss_weight,
            "ranking_loss_weight": cfg.ranking_loss_weight,
        }
    return out
