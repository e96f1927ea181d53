"""The attributes head's loss against values worked out by hand, and (below) training one end to end."""

import json
import math

import pytest
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.batch import collate
from rankrm.training.attributes import attribute_loss

NLL1 = math.log1p(math.exp(-1))  # -log sigmoid(1)


def one_group():
    """One group of K = 2 (the first ranked best), two attributes; the second completion's first rating missing."""
    g = TokenizedGroup([[5, 6, 7], [5, 6, 8]], [0, 1], attributes={"a": [2.0, None], "b": [0.0, 1.0]})
    return g, collate([g], pad_id=0, layout="padded")


def test_joint_loss_by_hand():
    """Outputs (reward, a, b): (9, 1, 0) and (9, 0, 0); weights (1, 0): the reward is output a, (1, 0), d = 1:
    ranking NLL1. Squared errors: (1 - 2)^2 = 1, (0 - 0)^2 = 0, (0 - 1)^2 = 1 over 3 ratings: 2/3.
    Loss = 1 * NLL1 + 0.5 * 2/3; output 0 (9, untied here) is not read."""
    g, b = one_group()
    out = torch.tensor([[9.0, 1.0, 0.0], [9.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    step = attribute_loss(out, b, [g], ("a", "b"), (1.0, 0.0), 1.0, attribute_weight=0.5)
    loss, stats = step.loss, step.stats
    assert loss.item() == pytest.approx(NLL1 + 0.5 * 2 / 3, abs=1e-12)
    assert stats.loss.tolist() == pytest.approx([NLL1 + 0.5 * 2 / 3], abs=1e-12)
    assert stats.pairs.tolist() == [1.0] and stats.correct.tolist() == [1.0]
    loss.backward()
    s = 1 / (1 + math.exp(1))  # d(-log sigmoid(d))/dd = -sigmoid(-d)
    # d/d a_0: ranking -s, MSE 0.5 * 2 * (1 - 2) / 3; d/d a_1: ranking +s (a missing rating: no MSE)
    assert out.grad[:, 1].tolist() == pytest.approx([-s - 1 / 3, s], abs=1e-12)
    assert out.grad[:, 2].tolist() == pytest.approx([0.0, 0.5 * 2 * (0 - 1) / 3], abs=1e-12)  # weight 0: no ranking
    assert out.grad[:, 0].tolist() == [0.0, 0.0]


def test_without_weights_the_ranking_trains_output_0_and_off_it_trains_nothing():
    g, b = one_group()
    out = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = attribute_loss(out, b, [g], ("a", "b"), (), 1.0).loss
    assert loss.item() == pytest.approx(NLL1 + 2 / 3, abs=1e-12)  # output 0 is (1, 0): d = 1
    step = attribute_loss(out, b, [g], ("a", "b"), (), 1.0, ranking_weight=0.0)
    loss, stats = step.loss, step.stats
    assert loss.item() == pytest.approx(2 / 3, abs=1e-12)  # the regression alone
    assert stats.pairs.tolist() == [1.0]  # the reward's accuracy is still reported


# -- end to end: a tiny model learns the ratings, saved as a plain sequence-classification model -------------------


def rated_groups(n: int, seed: int):
    """synthetic_groups (the more 'good', the better ranked) with ratings: goodness = the count of 'good' / 4, and
    words = the completion's words / 6, given for every second completion only (the rest masked)."""
    from conftest import synthetic_groups

    rows = synthetic_groups(n, seed)
    for r in rows:
        r["attributes"] = [
            {"goodness": c.split().count("good") / 4, **({"words": len(c.split()) / 6} if i % 2 else {})}
            for i, c in enumerate(r["completions"])
        ]
    return rows


@pytest.fixture(scope="module")
def rated_run(model_dirs, tmp_path_factory):
    from conftest import write_jsonl

    from rankrm.training.config import TrainConfig
    from rankrm.training.run import train

    d = tmp_path_factory.mktemp("rated")
    cfg = TrainConfig(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(write_jsonl(d / "train.jsonl", rated_groups(120, 1)))],
        eval_data=[str(write_jsonl(d / "eval.jsonl", rated_groups(40, 2)))],
        output_dir=str(d / "run"),
        epochs=4,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        warmup_ratio=0.1,
        attributes="auto",
        attribute_weights="goodness=1",
        ranking_loss_weight=0.0,
        plots=False,
    )
    return train(cfg), d / "run", d


def test_a_tiny_model_learns_the_ratings_and_its_reward_is_their_weighted_sum(rated_run):
    res, out, _ = rated_run
    m = res["after"]["attributes"]
    assert m["goodness"]["ratings"] == 160 and m["words"]["ratings"] == 80  # every second completion: masked
    assert m["goodness"]["pearson"] > 0.8 and m["goodness"]["rmse"] < m["goodness"]["baseline_rmse"]
    assert res["after"]["accuracy"] > 0.9  # the reward is the goodness output, and goodness is the ranking's rule
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["after"]["attributes"]["goodness"]["spearman"] == m["goodness"]["spearman"]


def test_the_export_loads_in_plain_transformers_with_its_labels(rated_run):
    """config.json names the outputs; logits[..., 0] is the reward: exactly the weighted sum of the attributes
    (goodness=1, words=0) and what RewardModel scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rankrm.modeling.model import RewardModel

    _, out, _ = rated_run
    hf = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert hf.config.id2label == {0: "reward", 1: "goodness", 2: "words"}
    assert hf.config.label2id == {"reward": 0, "goodness": 1, "words": 2}
    tok = AutoTokenizer.from_pretrained(str(out))
    rm = RewardModel.from_pretrained(str(out))
    prompt = [{"role": "user", "content": "Say something good, please."}]
    text = rm.render(prompt, "good good fine")
    with torch.no_grad():
        logits = hf(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0]  # (3,)
    assert logits[0].item() == pytest.approx(logits[1].item(), abs=1e-5)
    fields = rm.score_outputs([prompt], ["good good fine"])
    assert fields["reward"][0] == pytest.approx(logits[0].item() + rm.reward_bias, abs=1e-4)
    assert fields["goodness"][0] == pytest.approx(logits[1].item(), abs=1e-4)
    assert set(fields) == {"reward", "goodness", "words"}


def test_rankrm_score_writes_the_attributes(rated_run, tmp_path):
    from conftest import write_jsonl

    from rankrm.cli import main

    _, out, _ = rated_run
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Say it", "completion": "good good good"}])
    assert main(["score", "--model", str(out), str(src), str(tmp_path / "out.jsonl")]) == 0
    (row,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {"reward", "goodness", "words"} <= set(row)
    assert row["reward"] == pytest.approx(row["goodness"], abs=1e-4)


def test_normalize_weights_sets_the_reward_to_another_weighted_sum(rated_run, tmp_path, capsys):
    """--weights words=1: the saved head says so, and the reward logit equals the words logit; an unknown
    attribute or a model without attributes is one line naming the setting, exit 2."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rankrm.cli import main
    from rankrm.modeling.model import RewardModel

    _, out, _ = rated_run
    dst = tmp_path / "words"
    assert main(["normalize", "--model", str(out), "--weights", "words=1", "--output-dir", str(dst)]) == 0
    rm = RewardModel.from_pretrained(str(dst))
    assert rm.head_spec.weights == (0.0, 1.0) and rm.reward_bias == 0.0
    hf = AutoModelForSequenceClassification.from_pretrained(str(dst))
    tok = AutoTokenizer.from_pretrained(str(dst))
    text = rm.render([{"role": "user", "content": "Hi"}], "good fine good fine")
    with torch.no_grad():
        logits = hf(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0]
    assert logits[0].item() == pytest.approx(logits[2].item(), abs=1e-5)
    capsys.readouterr()
    assert main(["normalize", "--model", str(out), "--weights", "humor=1", "--output-dir", str(dst)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--weights: unknown attribute 'humor'" in err[0] and "goodness, words" in err[0]


def test_rankrm_serve_returns_the_attributes(rated_run):
    """/score answers each attribute under "outputs", beside the rewards, equal to RewardModel.score_outputs."""
    from fastapi.testclient import TestClient

    from rankrm.modeling.model import RewardModel
    from rankrm.serving.app import ServeOptions, build_app

    _, out, _ = rated_run
    rm = RewardModel.from_pretrained(str(out))
    prompt = [{"role": "user", "content": "Say something good, please."}]
    want = rm.score_outputs([prompt, prompt], ["good good good", "fine"])
    with TestClient(build_app(rm, "rm", ServeOptions(), "test")) as tc:
        items = [{"prompt": prompt, "completion": c} for c in ("good good good", "fine")]
        got = tc.post("/score", json={"items": items}).json()
    assert set(got["outputs"]) == {"goodness", "words"}
    for name in ("goodness", "words"):
        assert got["outputs"][name] == pytest.approx(want[name], abs=1e-4)
    assert got["rewards"] == pytest.approx(want["reward"], abs=1e-4)
