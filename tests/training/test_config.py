"""Settings: flags and YAML through one parser, values checked where they enter (before any model loads)."""

import math

import pytest
import torch

from rankrm.cli import main
from rankrm.training.config import TrainConfig


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "yaml_line, flag",
    [
        ("epochs: two", "'epochs': expected a number, got 'two'"),
        ("batch-size: [8]", "'batch-size': expected an integer"),
        ("batch-size: 2.5", "'batch-size': expected an integer"),
        ("bf16: maybe", "'bf16': expected true or false"),
        ("learning-rate: -1e-3", "--learning-rate must be > 0"),
        ("epochs: 0", "--epochs must be > 0"),
        ("max-length: 1", "--max-length 1 leaves no room"),
        ("layout: diagonal", "--layout 'diagonal' unknown"),
        ("warmup-ratio: 1.5", "--warmup-ratio must be in [0, 1)"),
        ("learning-rate: .nan", "--learning-rate must be > 0"),
    ],
)
def test_bad_yaml_settings_give_one_line_errors_before_the_model_loads(tmp_path, capsys, yaml_line, flag):
    """The model path does not exist: had the setting passed, loading it would have failed with another message."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tmp_path / 'no-such-model'}\ntrain-data: x.jsonl\n{yaml_line}\n")
    code, err = run_cli(["train", "--config", str(cfg)], capsys)
    assert code == 2 and flag in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "Fix:" in err or "must be" in err


@pytest.mark.parametrize(
    "args, text",
    [
        (["--learning-rate=-1e-3"], "--learning-rate must be > 0"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--max-length", "3"], "--max-length 3 leaves no room"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, capsys, args, text):
    code, err = run_cli(["train", "--train-data", "x.jsonl", "--model", str(tmp_path)] + args, capsys)
    assert code == 2 and text in err and "Traceback" not in err


def test_yaml_numbers_written_as_text_are_numbers(tmp_path, capsys):
    """PyYAML reads 1e-5 (no dot) and "8" as strings: they are the numbers they say."""
    from rankrm.training.flags import read_yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text('train-data: a.jsonl\nlearning-rate: 1e-5\nbatch-size: "8"\nlength-buckets: 3\nbf16: "yes"\n')
    values = read_yaml(cfg)
    assert values == {
        "train_data": ["a.jsonl"],
        "learning_rate": 1e-5,
        "batch_size": 8,
        "length_sort_window": 3,
        "bf16": True,
    }
    assert isinstance(values["batch_size"], int)


def test_flags_win_over_yaml_and_unknown_keys_are_named(tmp_path, capsys):
    import argparse

    from rankrm.training.flags import config_from_args, train_flags

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train-data: a.jsonl\nseed: 1\nepochs: 3\n")
    p = argparse.ArgumentParser(parents=[train_flags()])
    c = config_from_args(p.parse_args(["--config", str(cfg), "--seed", "5", "--no-cache-frozen"]))
    assert (c.seed, c.epochs, c.cache_frozen, c.train_data) == (5, 3.0, False, ["a.jsonl"])
    cfg.write_text("train-data: a.jsonl\nlearning_rat: 1\n")
    code, err = run_cli(["train", "--config", str(cfg)], capsys)
    assert code == 2 and "unknown setting 'learning_rat'" in err


def test_the_schedule_is_transformers_warmup_then_cosine():
    """10 steps, 20% warmup (2 steps), peak 1.0: warmup 0, 1/2; then cosine over the 8 remaining steps,
    0.5 (1 + cos(pi k / 8)) for k = 0..7."""
    from rankrm.training.state import plan_run

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = torch.nn.Module()
            self.hf.score = torch.nn.Linear(2, 1)
            self.w = torch.nn.Linear(2, 2)

    model = Tiny()
    cfg = TrainConfig(
        train_data=["x"], learning_rate=1.0, head_learning_rate=1.0, warmup_ratio=0.2, max_steps=10, batch_size=1
    )
    from rankrm.data.encode import TokenizedGroup

    units = [TokenizedGroup([[1, 2], [1, 3]], [0, 1])]
    run = plan_run(cfg, model, [n for n, _ in model.named_parameters()], units)
    lrs = []
    for _ in range(10):
        lrs.append(run.scheduler.get_last_lr()[0])
        run.optimizer.step()
        run.scheduler.step()
    want = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs == pytest.approx(want, abs=1e-12)


def test_data_with_nothing_to_learn_or_evaluate_is_refused_before_the_model_loads(tmp_path, capsys, model_dirs):
    """Only the tokenizer is read before the data (to tokenize it): a model directory without weights shows that
    the weights are never loaded for data that has nothing to learn."""
    import shutil

    from conftest import write_jsonl

    ties = write_jsonl(
        tmp_path / "ties.jsonl", [{"prompt": f"p{i}", "completions": ["a", "b"], "ranks": [0, 0]} for i in range(4)]
    )
    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dirs["llama-chat"], no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    code, err = run_cli(["train", "--train-data", str(ties), "--model", str(no_weights)], capsys)
    assert code == 2 and "ties.jsonl" in err and "gives no comparison to train or evaluate on" in err and "Fix:" in err


def test_a_directory_that_is_not_a_model_is_named(tmp_path, capsys):
    from conftest import synthetic_groups, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", synthetic_groups(8, 1))
    (tmp_path / "notamodel").mkdir()
    code, err = run_cli(
        [
            "train",
            "--train-data",
            str(data),
            "--model",
            str(tmp_path / "notamodel"),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 2 and "not a Hugging Face model (no config.json)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
