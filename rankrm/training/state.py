"""What a training run carries, typed: the state a checkpoint keeps (RunState), this process's counters, the
optimizer and its units (Run), the prepared model (Prepared), one step's statistics (StepStats), and what `train`
returns (TrainResult)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.model import RewardModel


@dataclass
class StepStats:
    """One step's forward and backward on this process. loss: the summed group loss (a tensor, to avoid a sync);
    correct, pairs: pairs ordered right, pairs stated; tokens: what the model read (the batches' real tokens);
    per_completion_tokens: what one padded row per completion would read; layouts: each micro-batch's."""

    loss: torch.Tensor
    correct: torch.Tensor | float = 0.0
    pairs: torch.Tensor | float = 0.0
    tokens: int = 0
    per_completion_tokens: int = 0
    completions: int = 0
    layouts: list[str] = field(default_factory=list)


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
    processes: backward, no_sync), the unwrapped RewardModel (evaluation, checkpoints) and the frozen-layer cache."""

    accelerator: object
    model: nn.Module
    core: RewardModel
    cache: FrozenLayerCache | None = None


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
