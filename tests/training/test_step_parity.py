"""The faster training step (issue 22 item 6: kv passes sized by the slots they take, grouped key/value heads left
unrepeated in rankrm's sdpa passes on a CPU) trains the model the code before it trained: to the last bit of
model.safetensors where the arithmetic is the same (no grouped heads; padded and packed plans), within float
rounding where it adds the same numbers in another order (docs/benchmarks.md, "Host work per step")."""

import hashlib

import pytest
import torch
from conftest import synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling import attention, kvcache, model, planning
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


class IndexSelect:
    """The kv prompt gather as it was: index_select, its own backward."""

    @staticmethod
    def apply(x, index, adds):
        return x.index_select(0, index)


def the_code_before(monkeypatch) -> None:
    """transformers' own sdpa function for every pass (RewardModel registers attention.sdpa_attention at load), the
    bool mask handed to every layer (no sdpa_mask), the prompt gathered by index_select, and kv passes sized as
    padded rows (refill_kv left out)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setattr(attention, "sdpa_attention", sdpa_attention_forward)
    monkeypatch.setattr(model, "sdpa_mask", lambda mask, dtype: mask)
    monkeypatch.setattr(kvcache, "GroupRows", IndexSelect)
    monkeypatch.setattr(planning, "refill_kv", lambda groups, plan, budget: plan)


def run(model_dirs, tmp_path, name: str, arch: str, layout: str, monkeypatch, before: bool, budget=200) -> dict:
    """8 steps of 8 groups of 4 completions (micro-batches of `budget` slots: 200, several per step), the whole
    model trained; the weights, their file's SHA-256 and the held-out figures."""
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_jsonl(data / "train.jsonl", synthetic_groups(64, 1))
        write_jsonl(data / "eval.jsonl", synthetic_groups(16, 2))
    out = tmp_path / name
    with monkeypatch.context() as m:
        if before:
            the_code_before(m)
        result = train(
            TrainConfig(
                model=str(model_dirs[f"{arch}-chat"]),
                train_data=[str(data / "train.jsonl")],
                eval_data=[str(data / "eval.jsonl")],
                output_dir=str(out),
                max_steps=8,
                batch_size=8,
                micro_batch_tokens=budget,
                layout=layout,
                learning_rate=3e-3,
                max_length=64,
                seed=0,
                plots=False,
            )
        )
    file = out / "model.safetensors"
    return {
        "sha": hashlib.sha256(file.read_bytes()).hexdigest(),
        "weights": load_file(str(file)),
        "after": result.after,
    }


@pytest.mark.parametrize("layout, budget", [("padded", 200), ("packed", 200), ("kv", 4096)])
def test_same_model_to_the_last_bit_where_the_arithmetic_is_unchanged(
    model_dirs, tmp_path, monkeypatch, layout, budget
):
    """GPT-2 (a key/value head per query head: nothing to leave unrepeated) in the padded and packed layouts (plans
    unchanged; the packed mask made additive once per pass) and the kv layout with a step in one pass either way
    (the prompt gathered by GroupRows, its masks additive): the same model.safetensors, byte for byte, as the code
    before."""
    now = run(model_dirs, tmp_path, "now", "gpt2", layout, monkeypatch, before=False, budget=budget)
    old = run(model_dirs, tmp_path, "before", "gpt2", layout, monkeypatch, before=True, budget=budget)
    assert now["sha"] == old["sha"]
    assert now["after"] == old["after"] and now["after"]["pairs"] > 0


def test_kv_and_grouped_heads_train_the_same_model_within_rounding(model_dirs, tmp_path, monkeypatch):
    """Llama (4 query heads on 2 key/value heads), kv layout: each step now runs fewer, larger kv passes (the
    gradients summed over other micro-batches) and SDPA sums each key/value head's gradient itself (the mask and
    the prompt gather change no bit, as the GPT-2 test shows). After 8 steps
    the held-out log loss agrees to 1e-6 (measured 2.4e-7) and the weights to 1e-5 (measured 1.7e-6: AdamW moves a
    weight whose gradient is near 0 by up to the learning rate whatever its size, so a last-bit difference in a
    gradient shows larger in the weights, as in test_run.py's varlen against sdpa)."""
    groups = [TokenizedGroup([[1] * 8 + [i, i, i, 2] for i in range(3, 6)], [0, 1, 2]) for _ in range(4)]
    assert len(planning.plan_batches(groups, 60, "kv", 1e-3)) == 2  # 20 kv slots a group: 3 a pass, not 1
    now = run(model_dirs, tmp_path, "now", "llama", "kv", monkeypatch, before=False)
    old = run(model_dirs, tmp_path, "before", "llama", "kv", monkeypatch, before=True)
    assert now["sha"] != old["sha"]  # not the same arithmetic: the test compares two different paths
    for n, w in old["weights"].items():
        torch.testing.assert_close(now["weights"][n], w, rtol=0, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    assert now["after"]["pairs"] == old["after"]["pairs"] > 0
    assert now["after"]["log_loss"] == pytest.approx(old["after"]["log_loss"], abs=1e-6)
