"""LoRA training through PEFT, merged on save: a plain Hugging Face model that scores as rankrm does."""

import json

import pytest
import torch
from conftest import synthetic_groups, write_jsonl

from rankrm.errors import SettingsError
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


@pytest.mark.parametrize("arch, targets", [("llama", ["q_proj", "v_proj", "down_proj"]), ("gpt2", ["c_attn", "c_fc"])])
def test_lora_trains_merges_and_loads_in_plain_transformers(model_dirs, tmp_path, arch, targets):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = write_jsonl(tmp_path / "d.jsonl", synthetic_groups(40, 7))
    out = tmp_path / "run"
    res = train(
        TrainConfig(
            model=str(model_dirs[f"{arch}-chat"]),
            train_data=[str(data)],
            eval_fraction=0.25,
            output_dir=str(out),
            max_steps=4,
            batch_size=4,
            learning_rate=1e-2,
            max_length=64,
            lora_r=4,
            lora_alpha=8,
            lora_targets=targets,
        )
    )
    assert res["after"]["log_loss"] < res["before"]["log_loss"]  # it trained: the held-out loss fell
    safetensors_keys = set()
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        safetensors_keys = set(f.keys())
    assert not any("lora" in k for k in safetensors_keys)  # merged: plain weights only

    base = RewardModel.from_pretrained(str(model_dirs[f"{arch}-chat"]))
    m = RewardModel.from_pretrained(str(out))
    changed = [
        n
        for (n, p), (_, q) in zip(m.backbone.named_parameters(), base.backbone.named_parameters())
        if p.shape == q.shape and not torch.equal(p, q)
    ]
    adapted = {n for n, _ in base.backbone.named_parameters() if n.endswith("weight") and any(t in n for t in targets)}
    assert set(changed) == adapted  # every adapted matrix moved (merged), and nothing else

    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(x) for x in data.read_text().splitlines()][:3]
    for g in rows:
        ours = m.score([g["prompt"]] * len(g["completions"]), g["completions"])
        enc = tok(
            [m.render(g["prompt"], c) for c in g["completions"]],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            plain = hf(**enc).logits[:, 0].tolist()
        assert plain == pytest.approx(ours, abs=1e-4)


def test_lora_and_train_layers_are_exclusive():
    with pytest.raises(SettingsError, match="--lora-r and --train-layers"):
        TrainConfig(train_data=["x"], lora_r=4, train_layers=2)
