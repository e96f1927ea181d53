"""modeling/frozen.py: the frozen-layer cache replays the frozen layers' output and keeps to its budget."""

from __future__ import annotations

import torch
from conftest import OASST_TREES

from rankrm.data.encode import tokenize_groups
from rankrm.data.readers import read_groups
from rankrm.modeling.batch import collate
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.model import RewardModel


def test_frozen_cache_keeps_to_its_budget(model_dirs, caplog):
    model = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=64)
    groups = read_groups([OASST_TREES])[:12]
    tok, _ = tokenize_groups(model, groups)
    unbounded = FrozenLayerCache(model.backbone, 1)
    for g in tok:
        b = collate([g], model.tokenizer.pad_token_id)
        with torch.no_grad():
            unbounded.outputs(model, b)
    full = sum(t.numel() * t.element_size() for t in unbounded.store.values())
    budget = full // 3
    cache = FrozenLayerCache(model.backbone, 1, budget)
    for _ in range(2):
        for g in tok:
            b = collate([g], model.tokenizer.pad_token_id)
            with torch.no_grad():
                r = cache.outputs(model, b)
                torch.testing.assert_close(r, model(b), rtol=1e-4, atol=1e-5)
    held = sum(t.numel() * t.element_size() for t in cache.store.values())
    assert 0 < held <= budget and cache.held == held
    assert len(cache.store) < len(unbounded.store)
    said = [r.getMessage() for r in caplog.records if r.name == "rankrm.modeling.frozen"]
    assert len(said) == 1 and "budget" in said[0]
