"""Normalizing a reward model: a bias (and optionally a gain) so that labeler demonstrations score a mean of 0.

The loss only sees reward differences, so a trained model's reward has an arbitrary offset. InstructGPT sets a bias
so that demonstrations (prompt, human-written response) score a mean of 0 before RL; OpenAI's lm-human-preferences
also sets a gain for a target standard deviation. Both are folded into the saved weights:

- the gain multiplies the head's weight, which every loader applies;
- the bias goes into the head's bias where the head has one; otherwise into the bias of the final norm (LayerNorm
  backbones such as GPT-2): adding b * w / |w|^2 to that bias adds exactly b to w . h for every input;
- backbones whose head and final norm both lack a bias (Llama, Qwen2, Mistral, SmolLM2: RMSNorm and a bias-free
  `score`) cannot express a constant offset in their stock Hugging Face class: every path to the head passes
  through the final RMSNorm, whose output does not change when its input is scaled, so no weight setting adds a
  constant to every reward. For them the offset is stored as `reward_bias` in config.json: rankrm's API and CLI
  add it; plain transformers returns `logits + config.reward_bias` only if the caller adds it (docs/serving.md: "rankrm normalize"
  and "Serving the saved directory"). The gain, folded into the weights, is exact everywhere.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from rankrm.data.containers import iter_json_lines
from rankrm.data.validate import check_prompt
from rankrm.errors import DataError, SettingsError
from rankrm.modeling.heads import reward_rows


def read_demonstrations(path) -> tuple[list, list[str]]:
    """Read (prompt, response) demonstrations from JSONL: {"prompt": str | messages, "response": str}."""
    prompts, responses = [], []
    for line, obj in iter_json_lines(Path(path)):
        prompts.append(check_prompt(obj.get("prompt"), path, line))
        r = obj.get("response")
        if not isinstance(r, str) or not r.strip():
            raise DataError(
                path,
                line,
                "response",
                "is missing or empty" if not isinstance(r, str) or not r else "is blank",
                'give the human-written response as {"response": "..."}',
            )
        responses.append(r)
    if len(responses) < 2:
        raise DataError(
            path,
            None,
            None,
            f"has {len(responses)} demonstration(s)",
            "give at least 2 demonstrations (a standard deviation needs two)",
        )
    return prompts, responses


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def final_norm(model):
    """The module between the last transformer block and the head (Llama: norm, GPT-2: ln_f), or None."""
    from rankrm.modeling.frozen import after_layers

    return next((m for m in after_layers(model.backbone) if sum(p.numel() for p in m.parameters()) > 0), None)


@torch.no_grad()
def set_normalization(model, mean: float, gain: float = 1.0) -> str:
    """Make the model's reward gain * (r - mean): gain into the head weight, offset where the architecture holds it.

    Returns where the offset went: "head bias", "final norm bias" or "config reward_bias". A multi-output head
    (heads.py) changes only the reward's rows (an ensemble: its mean and every member, so that mean and spread stay
    consistent; ODIN: the quality row); the final norm's bias, which every row reads, is then left alone."""
    head, rows = model.head, reward_rows(model.head_spec)
    head.weight[rows] *= gain
    offset = -gain * mean
    if head.bias is not None:
        head.bias[rows] = head.bias[rows] * gain + offset
        return "head bias"
    norm = final_norm(model) if head.out_features == 1 else None
    if norm is not None and isinstance(getattr(norm, "bias", None), torch.Tensor):
        w = head.weight[0]  # (H,)
        norm.bias.add_(offset * w / (w @ w))  # w . (h + offset * w / |w|^2) = w . h + offset, for every h
        return "final norm bias"
    model.reward_bias = gain * model.reward_bias + offset
    return "config reward_bias"


def normalize(
    model, prompts, responses, target_std: float | None = None, batch_tokens: int = 4096, progress: bool = False
) -> dict:
    """Score demonstrations and set bias (and gain, with target_std) so they score mean 0 (and std target_std)."""
    rewards = torch.tensor(
        model.score(prompts, responses, batch_tokens=batch_tokens, progress=progress), dtype=torch.float64
    )
    mean, std = float(rewards.mean()), float(rewards.std())
    if target_std is not None and not (math.isfinite(target_std) and target_std > 0):
        raise SettingsError(f"--target-std must be a positive number, got {target_std}. Fix: give a number > 0")
    if target_std is not None and std == 0:
        raise SettingsError(
            "the demonstrations all score the same; --target-std cannot set their standard deviation. Fix: leave "
            "--target-std out, or give varied demonstrations"
        )
    gain = 1.0 if target_std is None else target_std / std
    where = set_normalization(model, mean, gain)
    return {
        "count": len(responses),
        "mean": mean,
        "std": std,
        "gain": gain,
        "offset": -gain * mean,
        "target_std": target_std,
        "offset_in": where,
    }


def demonstrations(path, fmt: str = "auto") -> tuple[list, list[str], str]:
    """Demonstrations from a {prompt, response} JSONL file, or the rank-0 completions of a ranked-data file."""
    from rankrm.data.readers import read_groups

    path = Path(path)
    first = next(iter_json_lines(path), (None, {}))[1] if path.is_file() else {}
    if "response" in first:
        prompts, responses = read_demonstrations(path)
        return prompts, responses, "prompt/response records"
    groups = read_groups(path, fmt)
    pairs = [(g.prompt, c) for g in groups for c, r in zip(g.completions, g.ranks) if r == min(g.ranks)]
    if len(pairs) < 2:
        raise DataError(path, None, None, f"gives {len(pairs)} demonstration(s)", "give at least 2")
    return [p for p, _ in pairs], [c for _, c in pairs], "rank-0 completions of ranked groups"
