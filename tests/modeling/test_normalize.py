"""Normalization: demonstrations score a mean of 0 (and a set std) through the API, the CLI and plain transformers."""

import json

import pytest
import torch
from conftest import write_jsonl

from rankrm.cli import main
from rankrm.errors import DataError
from rankrm.modeling.model import RewardModel
from rankrm.modeling.normalize import normalize, read_demonstrations

DEMOS = [
    {
        "prompt": [{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}],
        "response": f"It is {2 * i}." + " Really." * (i % 4),
    }
    for i in range(12)
]


def trained_like(model_dirs, name, tmp_path) -> str:
    """A saved reward model whose head is far from zero, so the demonstrations' mean reward is far from 0."""
    torch.manual_seed(1)
    m = RewardModel.from_pretrained(str(model_dirs[name]), max_length=128)
    with torch.no_grad():
        m.head.weight.normal_(0.5, 1.0)
    m.save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def plain_hf_rewards(path, prompts, responses):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    m = RewardModel.from_pretrained(path)
    enc = tok(
        [m.render(p, r) for p, r in zip(prompts, responses)],
        add_special_tokens=False,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = hf(**enc).logits[:, 0]
    # the documented way for backbones without any bias term (docs/serving.md): add config.reward_bias
    return (logits + getattr(hf.config, "reward_bias", 0.0)).tolist(), hf.config


@pytest.mark.parametrize(
    "name, where",
    [("gpt2-chat", "final norm bias"), ("llama-pad_eos", "config reward_bias"), ("qwen2-chat", "config reward_bias")],
)
def test_demonstrations_score_mean_zero_everywhere(model_dirs, tmp_path, name, where):
    path = trained_like(model_dirs, name, tmp_path)
    demo_file = write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    prompts, responses = read_demonstrations(demo_file)
    before = torch.tensor(RewardModel.from_pretrained(path).score(prompts, responses))
    assert abs(before.mean()) > 0.5 * before.std()  # far from normalized to begin with

    assert (
        main(["normalize", "--model", path, "--demonstrations", str(demo_file), "--output-dir", str(tmp_path / "norm")])
        == 0
    )
    norm = str(tmp_path / "norm")
    api = torch.tensor(RewardModel.from_pretrained(norm).score(prompts, responses))
    assert abs(api.mean()) <= 0.01 * api.std()
    torch.testing.assert_close(api - api.mean(), before - before.mean(), rtol=1e-4, atol=1e-4)  # a pure shift

    plain, config = plain_hf_rewards(norm, prompts, responses)
    assert plain == pytest.approx(api.tolist(), abs=1e-4)
    if where == "final norm bias":  # exact in plain transformers with no help at all
        assert getattr(config, "reward_bias", 0.0) == 0.0
    else:
        assert config.reward_bias != 0.0

    # the CLI's scores agree
    rows = [{"prompt": p, "completion": r} for p, r in zip(prompts, responses)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["score", "--model", norm, str(src), str(tmp_path / "out.jsonl"), "--quiet"]) == 0
    cli = [json.loads(x)["reward"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert cli == pytest.approx(api.tolist(), abs=1e-5)

    meta = json.loads((tmp_path / "norm" / "rankrm.json").read_text())["normalization"]
    assert meta["count"] == 12 and meta["mean"] == pytest.approx(float(before.mean()), abs=1e-4)
    assert meta["std"] == pytest.approx(float(before.std()), abs=1e-4) and len(meta["sha256"]) == 64
    assert meta["offset_in"] == where


def test_target_std_sets_a_gain(model_dirs, tmp_path):
    m = RewardModel.from_pretrained(trained_like(model_dirs, "llama-chat", tmp_path))
    prompts, responses = [d["prompt"] for d in DEMOS], [d["response"] for d in DEMOS]
    stats = normalize(m, prompts, responses, target_std=2.0)
    after = torch.tensor(m.score(prompts, responses), dtype=torch.float64)
    assert abs(after.mean()) <= 0.01 * after.std()
    assert float(after.std()) == pytest.approx(2.0, rel=1e-4)
    assert stats["gain"] == pytest.approx(2.0 / stats["std"])


def test_ranked_data_serves_its_rank0_completions_as_demonstrations(model_dirs, tmp_path):
    from rankrm.modeling.normalize import demonstrations

    f = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"prompt": "p1", "completions": ["a", "b"], "ranks": [1, 0]},
            {"prompt": "p2", "completions": ["c", "d", "e"], "ranks": [0, 0, 2]},
        ],
    )
    prompts, responses, source = demonstrations(f)
    assert list(zip(prompts, responses)) == [("p1", "b"), ("p2", "c"), ("p2", "d")]
    assert "rank-0" in source


@pytest.mark.parametrize(
    "row, field",
    [({"prompt": "x"}, "response"), ({"prompt": "x", "response": ""}, "response"), ({"response": "y"}, "prompt")],
)
def test_bad_demonstrations_name_line_and_field(tmp_path, row, field):
    f = write_jsonl(tmp_path / "d.jsonl", [DEMOS[0], row])
    with pytest.raises(DataError, match=rf"d.jsonl:2: field '{field}'"):
        read_demonstrations(f)
