"""Training the multi-output heads end to end on a tiny model: --ensemble M and --length-head (ODIN)."""

import json
import random

import pytest
import torch
from conftest import synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.errors import SettingsError
from rankrm.modeling.heads import HeadSpec
from rankrm.modeling.model import RewardModel
from rankrm.modeling.normalize import normalize
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("heads")
    return write_jsonl(d / "train.jsonl", synthetic_groups(48, 1)), write_jsonl(
        d / "eval.jsonl", synthetic_groups(16, 2)
    )


def cfg(model_dirs, data, out, **kw):
    base = dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(data[0])],
        eval_data=[str(data[1])],
        output_dir=str(out),
        epochs=2,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        plots=False,
    )
    return TrainConfig(**{**base, **kw})


def test_ensemble_repeats_saves_its_mean_and_reports_its_spread(model_dirs, small, tmp_path):
    """Same command, same model (to the bit); row 0 is the members' mean; the spread is in eval_results.json with
    every held-out pair in one of its bins; the saved model's first logit (plain transformers) is the mean."""
    from transformers import AutoModelForSequenceClassification

    res = train(cfg(model_dirs, small, tmp_path / "a", ensemble=3))
    train(cfg(model_dirs, small, tmp_path / "b", ensemble=3))
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    w = a["score.weight"]  # (4, H)
    torch.testing.assert_close(w[0], w[1:].mean(0), rtol=0, atol=1e-6)
    assert min(float((w[i] - w[j]).norm()) for i, j in ((1, 2), (1, 3), (2, 3))) > 1e-3  # members differ
    spread = res["after"]["ensemble"]
    assert spread["members"] == 3 and sum(x["pairs"] for x in spread["spread_bins"]) == res["after"]["pairs"]
    saved = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    assert saved["after"]["ensemble"] == spread

    m = RewardModel.from_pretrained(str(tmp_path / "a"))
    prompts, comps = ["Say something good."] * 3, ["good good good", "bad rock", "good fish tree"]
    f = m.score_outputs(prompts, comps)
    members = torch.tensor([f[f"member_{i}"] for i in (1, 2, 3)], dtype=torch.float64)  # (3, n)
    torch.testing.assert_close(torch.tensor(f["reward"], dtype=torch.float64), members.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(f["reward_std"], dtype=torch.float64), members.std(0, correction=0), rtol=1e-5, atol=1e-6
    )
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a").eval()
    ids, _ = m.tokenize(prompts, comps)
    with torch.no_grad():
        first = [float(hf(input_ids=torch.tensor([r])).logits[0, 0]) for r in ids]
    assert first == pytest.approx(f["reward"], rel=1e-4, abs=1e-5)

    # normalize: mean 0 and std 2 on the demonstrations, the members moved alike (mean and spread consistent)
    stats = normalize(m, prompts, comps, target_std=2.0)
    g = m.score_outputs(prompts, comps)
    assert sum(g["reward"]) / 3 == pytest.approx(0.0, abs=1e-5)
    assert g["reward_std"] == pytest.approx([stats["gain"] * s for s in f["reward_std"]], rel=1e-4)
    after = torch.tensor([g[f"member_{i}"] for i in (1, 2, 3)], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(g["reward"], dtype=torch.float64), after.mean(0), rtol=1e-5, atol=1e-5)


def varied_lengths(n: int, seed: int):
    """synthetic_groups' rule ('good' counts) with each completion padded by 0..8 filler words, so that length
    varies and says nothing of the rank."""
    rng = random.Random(seed)
    rows = synthetic_groups(n, seed)
    for r in rows:
        r["completions"] = [c + " rock" * rng.randrange(9) for c in r["completions"]]
    return rows


def test_length_head_trains_saves_quality_as_the_reward(model_dirs, tmp_path):
    """ODIN on a tiny model: the saved head is odin, its first logit (what plain transformers and RL tools read)
    is the quality reward alone, score_outputs names the length output, and after training the length head
    follows completion length more than the quality head does."""
    from transformers import AutoModelForSequenceClassification

    data = (
        write_jsonl(tmp_path / "t.jsonl", varied_lengths(48, 3)),
        write_jsonl(tmp_path / "e.jsonl", varied_lengths(16, 4)),
    )
    train(cfg(model_dirs, data, tmp_path / "o", length_head=True, length_loss_weight=2.0))
    m = RewardModel.from_pretrained(str(tmp_path / "o"))
    assert m.head_spec == HeadSpec.odin() and m.hf.config.id2label == {0: "reward", 1: "length"}
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows for _ in r["completions"]]
    comps = [c for r in rows for c in r["completions"]]
    f = m.score_outputs(prompts, comps)
    assert set(f) == {"reward", "length"} and f["reward"] == m.score(prompts, comps)
    ids, _ = m.tokenize(prompts, comps)
    lengths = torch.tensor([float(len(c.split())) for c in comps])
    rho = {k: float(torch.corrcoef(torch.stack([torch.tensor(f[k]), lengths]))[0, 1]) for k in ("reward", "length")}
    assert rho["length"] > 0.5 and abs(rho["reward"]) < rho["length"], rho
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "o").eval()
    with torch.no_grad():
        first = [float(hf(input_ids=torch.tensor([r])).logits[0, 0]) for r in ids[:4]]
    assert first == pytest.approx(f["reward"][:4], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"ensemble": 1}, "at least 2 members"),
        ({"ensemble": 2, "length_head": True}, "give one of them"),
        ({"length_loss_weight": -1.0}, "--length-loss-weight must be >= 0"),
    ],
)
def test_bad_head_settings_are_refused(model_dirs, small, tmp_path, kw, match):
    with pytest.raises(SettingsError, match=match):
        cfg(model_dirs, small, tmp_path, **kw)


def test_a_saved_scalar_model_cannot_continue_as_an_ensemble(model_dirs, small, tmp_path):
    train(cfg(model_dirs, small, tmp_path / "s", epochs=0.2))
    with pytest.raises(SettingsError, match="holds a trained scalar head"):
        train(cfg(model_dirs, small, tmp_path / "e", model=str(tmp_path / "s"), ensemble=2, epochs=0.2))


def test_sharding_refuses_only_odin_under_zero3_at_start_with_the_fix():
    """Every head trains under FSDP2 and ZeRO-2 (tests/training/test_sharding.py, test_deepspeed.py); ODIN's
    orthogonality term reads the head's rows outside the forward, where ZeRO-3 has partitioned them again."""
    from rankrm.training.sharding import check_supported

    for what in ("FSDP", "DeepSpeed ZeRO-2", "DeepSpeed ZeRO-3"):
        for kind in ("scalar", "ensemble", "attributes", "odin"):
            if (kind, what) != ("odin", "DeepSpeed ZeRO-3"):
                check_supported(0, "auto", what, kind)
    with pytest.raises(SettingsError, match="--length-head with DeepSpeed ZeRO-3: .*Fix: .*deepspeed_zero2.yaml"):
        check_supported(0, "auto", "DeepSpeed ZeRO-3", "odin")
