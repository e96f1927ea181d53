"""Splitting ranked groups into training and held-out data by conversation, and the identity and writing of
groups (group_digest, write_native)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from rankrm.data.containers import write_jsonl
from rankrm.data.groups import RankedGroup, prompt_key
from rankrm.errors import DataError, SettingsError


def group_digest(g: RankedGroup) -> bytes:
    """A content hash of a group's prompt and completions (order-free), 20 bytes: what the readers keep per group
    to drop duplicates."""
    blob = json.dumps([g.prompt, sorted(g.completions)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode()).digest()


def write_native(groups, path: Path) -> None:
    """Write groups as native JSONL, atomically (a temporary file renamed into place)."""
    write_jsonl((g.to_json() for g in groups), path)


def split_by_prompt(groups, eval_fraction: float, seed: int):
    """Split groups into (train, eval) by split key, so a conversation never lands on both sides."""
    train, held = split_indices([g.split_key for g in groups], eval_fraction, seed)
    return [groups[i] for i in train], [groups[i] for i in held]


def split_indices(keys, eval_fraction: float, seed: int, source=None):
    """(train, held-out) index arrays of groups with these split keys, in their order; a key's groups stay on one
    side. The keys are sorted and shuffled by the seed, and the first eval_fraction of them held out."""
    import numpy as np

    if not 0.0 < eval_fraction < 1.0:
        raise SettingsError(f"--eval-fraction must be in (0, 1), got {eval_fraction}")
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise DataError(
            source or "the data",
            None,
            None,
            "has fewer than 2 prompts to split into training and held-out data",
            "give more ranked groups, or held-out data with --eval-data",
        )
    random.Random(seed).shuffle(unique)
    eval_keys = set(unique[: max(1, round(eval_fraction * len(unique)))])
    del unique
    held = np.fromiter((k in eval_keys for k in keys), dtype=bool, count=len(keys))
    if held.all():
        raise SettingsError(
            f"--eval-fraction {eval_fraction} leaves no training prompts ({len(eval_keys)} in all). Fix: lower "
            "it, or give held-out data with --eval-data"
        )
    return np.flatnonzero(~held), np.flatnonzero(held)


def overlap(train, held) -> int:
    """How many held-out groups share a split key with a training group (a leak, if > 0)."""
    return overlap_keys([g.split_key for g in train], [g.split_key for g in held])


def overlap_keys(train_keys, held_keys) -> int:
    """How many held-out keys are also training keys."""
    keys = set(train_keys)
    return sum(1 for k in held_keys if k in keys)


def identical_prompts(train, held) -> int:
    """How many held-out groups have exactly the prompt of a training group (overlap counts wider: same start)."""
    keys = {prompt_key(g.prompt) for g in train}
    return sum(1 for g in held if prompt_key(g.prompt) in keys)
