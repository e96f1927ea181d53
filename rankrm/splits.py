"""Splitting ranked groups into training and held-out data by conversation, and the identity and writing of
groups (group_hash, write_native)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .containers import write_jsonl
from .groups import Prompt, RankedGroup



def group_hash(g: RankedGroup) -> str:
    """A content hash of a group's prompt and completions (order-free)."""
    return group_digest(g).hex()


def group_digest(g: RankedGroup) -> bytes:
    """group_hash as 20 bytes (what the readers keep per group to drop duplicates)."""
    blob = json.dumps([g.prompt, sorted(g.completions)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode()).digest()


def write_native(groups, path: Path) -> None:
    """Write groups as native JSONL, atomically (a temporary file renamed into place)."""
    write_jsonl((g.to_json() for g in groups), path)


def split_by_prompt(groups, eval_fraction: float, seed: int):
    """Split groups into (train, eval) by split key, so a conversation never lands on both sides."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    keys = sorted({g.split_key for g in groups})
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(eval_fraction * len(keys)))
    eval_keys = set(keys[:n_eval])
    train = [g for g in groups if g.split_key not in eval_keys]
    held = [g for g in groups if g.split_key in eval_keys]
    if not train:
        raise ValueError(f"eval_fraction {eval_fraction} leaves no training prompts ({len(keys)} in all)")
    return train, held


def overlap(train, held) -> int:
    """How many held-out groups share a split key with a training group (a leak, if > 0)."""
    keys = {g.split_key for g in train}
    return sum(1 for g in held if g.split_key in keys)


def prompt_key(prompt: Prompt) -> str:
    """A prompt as one comparable string (messages included)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def identical_prompts(train, held) -> int:
    """How many held-out groups have exactly the prompt of a training group (overlap counts wider: same start)."""
    keys = {prompt_key(g.prompt) for g in train}
    return sum(1 for g in held if prompt_key(g.prompt) in keys)
