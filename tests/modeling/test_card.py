"""The model card every saved reward model carries: README.md with YAML front matter (Hugging Face's convention)
holding the metrics eval_results.json has, the length baseline among them; kept up to date by later saves."""

import json

import yaml
from conftest import synthetic_groups, write_jsonl

from rankrm.cli import main
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.run import train


def read_card(path):
    """(front matter, body) of a README.md: the YAML between the first two '---' lines, then the Markdown."""
    text = path.read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_a_trained_model_has_a_card_with_its_held_out_metrics(model_dirs, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", synthetic_groups(24, 1))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", synthetic_groups(12, 2))
    out = tmp_path / "run"
    cfg = TrainConfig(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(train_file)],
        eval_data=[str(eval_file)],
        output_dir=str(out),
        max_steps=2,
        batch_size=8,
        max_length=64,
        learning_rate=3e-3,
        plots=False,
    )
    train(cfg)
    results = json.loads((out / "eval_results.json").read_text())
    meta, body = read_card(out / "README.md")
    assert meta["base_model"] == str(model_dirs["llama-chat"]) and meta["library_name"] == "rankrm"
    assert meta["tags"] == ["reward-model", "rlhf"] and "datasets" not in meta  # local files are no hub datasets
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    after, length = results["after"], results["after"]["length"]
    assert metrics["Pairwise accuracy (held-out)"] == round(after["accuracy"], 4)
    assert metrics["Pairwise log loss (held-out)"] == round(after["log_loss"], 4)
    assert metrics["Longer-wins baseline, tokens (no model)"] == round(length["longer_wins_tokens"], 4)
    assert metrics["Longer-wins baseline, characters (no model)"] == round(length["longer_wins_chars"], 4)
    assert f"| pairwise log loss | {after['log_loss']:.4f} |" in body
    assert f"by characters | {length['longer_wins_chars']:.4f} |" in body
    assert f"On {after['groups']} held-out prompts ({after['pairs']} comparisons)" in body
    assert "learning_rate: 0.003" in body and "## Use" in body  # the saved TrainConfig

    # normalizing in place saves again: the card keeps the run's metrics and says the rewards are shifted
    demos = write_jsonl(
        tmp_path / "demos.jsonl", [{"prompt": "Hi", "response": "good good"}, {"prompt": "Yo", "response": "red"}]
    )
    assert main(["normalize", "--model", str(out), "--demonstrations", str(demos)]) == 0
    meta2, body2 = read_card(out / "README.md")
    assert meta2["model-index"] == meta["model-index"] and "Normalized: rewards are offset by" in body2


def test_a_model_saved_without_metrics_says_so(model_dirs, tmp_path):
    RewardModel.from_pretrained(str(model_dirs["qwen2-chat"])).save_pretrained(tmp_path / "m")
    meta, body = read_card(tmp_path / "m" / "README.md")
    assert "model-index" not in meta and meta["base_model"] == str(model_dirs["qwen2-chat"])
    assert "Not evaluated here (no eval_results.json)" in body
