"""The reward model's head: one nn.Linear(hidden, num_outputs) whose output 0 is always the reward.

Output 0 is what plain transformers users and RL tools read as `logits[..., 0]`; the other outputs depend on the kind:

- scalar: output 0 only (the InstructGPT head; every model saved before heads existed).
- ensemble: outputs 1..M are M members trained on their own bootstrap resamples; row 0 of the head (weight and bias)
  is kept equal to the members' mean, which for a linear head is exact: mean_m(w_m . h + b_m) = (mean w_m) . h +
  mean b_m. The members' spread (their standard deviation) is `reward_std`.
- odin: output 0 is the quality head (the reward), output 1 the length head (Chen et al. 2024); only output 0 is
  the reward a consumer reads.
- attributes: outputs 1..A predict named attributes; row 0 = sum_a w_a row_a unless a ranking objective trains it.

The spec is stored in rankrm.json under "head"; a model saved without one is scalar, so old models load unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rankrm.errors import ModelError, SettingsError

KINDS = ("scalar", "ensemble", "odin", "attributes")


@dataclass(frozen=True)
class HeadSpec:
    """What each output of the head means: kind, the names of outputs 1..E, and (attributes) the reward's weights."""

    kind: str = "scalar"
    names: tuple[str, ...] = ()
    weights: tuple[float, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        problem = self.problem()
        if problem:
            raise SettingsError(f"head {self.kind!r}: {problem}")

    def problem(self) -> str | None:
        """Why this spec cannot describe a head, or None."""
        if self.kind not in KINDS:
            return f"unknown kind; expected one of {', '.join(KINDS)}"
        if len(set(self.names)) != len(self.names) or "reward" in self.names or "reward_std" in self.names:
            return f"output names {list(self.names)} must be distinct and not 'reward' or 'reward_std'"
        if self.kind == "scalar" and self.names:
            return "a scalar head has no extra outputs"
        if self.kind == "ensemble" and len(self.names) < 2:
            return f"an ensemble needs at least 2 members, got {len(self.names)}. Fix: --ensemble 2 or more"
        if self.kind == "odin" and self.names != ("length",):
            return "an ODIN head has exactly one extra output, 'length'"
        if self.kind == "attributes" and (not self.names or len(self.weights) not in (0, len(self.names))):
            return f"{len(self.names)} attributes need as many reward weights (or none), got {len(self.weights)}"
        if self.kind != "attributes" and self.weights:
            return "only an attributes head has reward weights"
        return None

    @property
    def num_outputs(self) -> int:
        return 1 + len(self.names)

    @classmethod
    def ensemble(cls, members: int) -> HeadSpec:
        """An ensemble of `members` scalar heads, outputs member_1..member_M."""
        return cls("ensemble", tuple(f"member_{m}" for m in range(1, members + 1)))

    @classmethod
    def odin(cls) -> HeadSpec:
        """ODIN's two heads: quality (output 0, the reward) and length (output 1)."""
        return cls("odin", ("length",))

    def to_json(self) -> dict:
        return {"kind": self.kind, "names": list(self.names), "weights": list(self.weights)}

    @classmethod
    def from_json(cls, obj: dict | None, where: str = "rankrm.json") -> HeadSpec:
        """The spec saved in rankrm.json; None (a model saved before heads existed) is the scalar head."""
        if obj is None:
            return cls()
        try:
            return cls(obj["kind"], tuple(obj.get("names", ())), tuple(obj.get("weights", ())))
        except (KeyError, TypeError, SettingsError) as e:
            raise ModelError(f"{where}: field 'head' is not a head description ({e}). Fix: save the model again") from e

    @property
    def id2label(self) -> dict[int, str]:
        """config.json's labels: 0 is the reward, then each extra output by name."""
        return {i: name for i, name in enumerate(("reward", *self.names))}


def label_config(config, spec: HeadSpec) -> None:
    """Write the spec's labels into a transformers config (id2label, label2id; num_labels follows id2label)."""
    config.id2label = spec.id2label
    config.label2id = {name: i for i, name in spec.id2label.items()}


def add_reward_bias(out: torch.Tensor, bias: float, spec: HeadSpec) -> torch.Tensor:
    """(N, O) head outputs with config.reward_bias added to the reward (output 0) and, for an ensemble, to every
    member, so that output 0 stays the members' mean."""
    if out.shape[-1] == 1 or spec.kind == "ensemble":
        return out + bias
    return torch.cat([out[:, :1] + bias, out[:, 1:]], dim=1)


def reward_rows(spec: HeadSpec) -> slice:
    """The head rows a change of the reward's scale or offset applies to: for an ensemble its mean and every
    member (they are the reward's samples), else the reward's row alone."""
    return slice(None) if spec.kind == "ensemble" else slice(0, 1)


def reward_mix(spec: HeadSpec) -> torch.Tensor | None:
    """(E,) float64: row 0 as a mix of rows 1..E (the ensemble's mean, the attributes' reward weights); None where
    row 0 is a row of its own."""
    if spec.kind == "ensemble":
        return torch.full((len(spec.names),), 1.0 / len(spec.names), dtype=torch.float64)
    if spec.kind == "attributes" and spec.weights:
        return torch.tensor(spec.weights, dtype=torch.float64)
    return None


@torch.no_grad()
def tie_row(t: torch.Tensor, mix: torch.Tensor) -> None:
    """t[0] = mix @ t[1:] in float64, in place: a head's (O, H) weight or (O,) bias, held whole."""
    t[0] = (mix.to(t.device) @ t[1:].double()).to(t.dtype)  # (E,) @ (E, H) -> (H,); a bias row: ()


@torch.no_grad()
def tie_reward_row(head: nn.Linear, spec: HeadSpec) -> None:
    """Re-set row 0 from the rows it is defined by: the ensemble's mean, or the attributes' weighted sum (with
    weights). Called after each optimizer step and before a trained model is saved; a no-op for other heads.
    A sharded head: training/sharding.tie_reward_row."""
    mix = reward_mix(spec)
    if mix is None:
        return
    for t in (head.weight, head.bias):
        if t is not None:
            tie_row(t, mix)


def output_fields(out: torch.Tensor, spec: HeadSpec) -> dict[str, list[float]]:
    """Named columns of (N, O) outputs: "reward" (output 0), "reward_std" for an ensemble (the members' population
    standard deviation), and each extra output under its name."""
    fields = {"reward": out[:, 0].tolist()}
    if spec.kind == "ensemble":
        fields["reward_std"] = out[:, 1:].double().std(dim=1, correction=0).tolist()
    for i, name in enumerate(spec.names, start=1):
        fields[name] = out[:, i].tolist()
    return fields
