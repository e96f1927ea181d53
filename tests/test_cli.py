"""`rankrm` (cli.main): bad input or settings exit 2 with one line that names the file or the setting and the fix; a
bug exits 1 with its traceback; bad input stops before any weights load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

from rankrm.cli import main

ROOT = Path(__file__).resolve().parents[1]
GROUP = {"prompt": "Name a colour.", "completions": ["blue", "rock"], "ranks": [0, 1]}

# A user's script around main(): it replaces a library function with one that fails as a bug would.
BUG_SCRIPT = """
import sys

import rankrm.data.inspect


def broken(*args, **kwargs):
    raise {exc}("simulated bug in describe_data")


rankrm.data.inspect.describe_data = broken
from rankrm.cli import main

sys.exit(main(sys.argv[1:]))
"""


def run(capsys, *argv) -> tuple[int, list[str]]:
    """main()'s exit code and its stderr lines."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.splitlines()


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    """A ValueError (not a RankrmError) from inside a command: the CLI used to turn every ValueError and OSError,
    a bug's included, into 'error: ...', exit 2."""
    exc = "ValueError"
    data = write_jsonl(tmp_path / "d.jsonl", [GROUP])
    script = tmp_path / "wrapper.py"
    script.write_text(BUG_SCRIPT.format(exc=exc))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, str(script), "data", "inspect", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last):" in done.stderr
    assert done.stderr.rstrip().endswith(f"{exc}: simulated bug in describe_data")
    assert "error:" not in done.stderr.split("Traceback")[0]  # no one-line "rankrm data: error: ..." before it


def test_bad_data_exits_2_with_one_line_naming_the_file_line_and_field(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [GROUP, {**GROUP, "ranks": [0]}])
    code, err = run(capsys, "data", "inspect", data)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"rankrm data: error: {data}:2: field 'ranks':"), err
    assert "Fix:" in err[0]


@pytest.mark.parametrize(
    "yaml_text, argv, says",
    [
        ("lr: [1, 2\n", [], "not valid YAML"),
        ("learning_rat: 1e-5\n", [], "unknown setting 'learning_rat'"),
        ("epochs: 0\n", [], "--epochs must be > 0, got 0"),
        ("", ["--eval-fraction", "1.5"], "--eval-fraction must be in (0, 1), got 1.5"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_setting(tmp_path, capsys, yaml_text, argv, says):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    data = write_jsonl(tmp_path / "d.jsonl", [GROUP])
    code, err = run(capsys, "train", "--config", cfg, "--train-data", data, "--output-dir", tmp_path / "out", *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("rankrm train: error: ") and says in err[0], err
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_argparse_errors_stay_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", "x.jsonl"])  # no --model
    assert e.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_a_missing_data_file_stops_eval_score_normalize_and_train_before_any_weights_load(model_dirs, tmp_path, capsys):
    """The model's weights file is made garbage (same name, not safetensors): a command that loaded the weights would
    fail on it. The control: with the data file there, eval does fail on the weights; without it, each command names
    the missing file and exits 2, so it stopped before loading them."""
    model = tmp_path / "model"
    shutil.copytree(model_dirs["llama-chat"], model)
    (model / "model.safetensors").write_bytes(b"not safetensors" * 64)
    data = write_jsonl(tmp_path / "d.jsonl", [GROUP, {**GROUP, "prompt": "Name a stone."}])
    try:  # the control: the weights are read, and fail (an error exit, or safetensors' own exception)
        failed = run(capsys, "eval", "--model", model, "--data", data, "--data-cache", tmp_path / "cache")[0] != 0
    except Exception:
        failed = True
    assert failed
    missing = tmp_path / "missing.jsonl"
    for argv in (
        ["eval", "--model", model, "--data", missing, "--data-cache", tmp_path / "cache"],
        ["score", "--model", model, missing, tmp_path / "scored.jsonl"],
        ["normalize", "--model", model, "--demonstrations", missing],
        ["train", "--model", model, "--train-data", data, "--eval-data", missing, "--output-dir", tmp_path / "out"],
    ):
        code, err = run(capsys, *argv)
        assert code == 2 and len(err) == 1, (argv, err)
        assert err[0] == f"rankrm {argv[0]}: error: {missing}: does not exist. Fix: check the path" + (
            "" if argv[0] == "score" else "; hub datasets are named hf:OWNER/NAME[:SPLIT]"
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "scored.jsonl").exists()


def test_a_directory_that_is_not_a_model_exits_2(model_dirs, tmp_path, capsys):
    """No config.json: not a model; config.json without tokenizer files: the tokenizer cannot load."""
    data = write_jsonl(tmp_path / "d.jsonl", [GROUP])
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run(capsys, "data", "inspect", data, "--model", empty)
    assert code == 2 and len(err) == 1 and f"{empty}: a directory, but not a Hugging Face model" in err[0], err
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(Path(model_dirs["llama-chat"]) / "config.json", half)
    (half / "tokenizer.json").write_text("{not json")
    code, err = run(capsys, "data", "inspect", data, "--model", half)
    assert code == 2 and len(err) == 1 and f"{half}: the tokenizer does not load" in err[0], err


def test_a_store_given_to_score_is_refused_by_name(tmp_path, capsys, model_dirs):
    """A directory where score wants a JSONL file."""
    code, err = run(capsys, "score", "--model", model_dirs["llama-chat"], tmp_path, tmp_path / "o.jsonl")
    assert code == 2 and err == [f"rankrm score: error: {tmp_path}: is a directory, not a file. Fix: check the path"]


@pytest.mark.parametrize(
    "command", [["train"], ["eval"], ["data", "prepare"], ["data", "inspect"], ["data", "convert"], ["normalize"]]
)
def test_every_command_that_reads_data_offers_the_formats_of_the_one_table(command, capsys):
    """The --format names and their help come from readers.FORMATS; --skip-invalid and --conflicts from one
    declaration (train's from TrainConfig, the others' from shared_flags())."""
    from rankrm.data.readers import FORMATS

    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone
    for f in FORMATS:
        assert f"{f.name}: {f.fields}" in out, f.name
    if command != ["normalize"]:
        assert all(flag in out.replace("_", "-") for flag in ("--skip-invalid", "--conflicts"))
        assert "keep (every vote counts in the loss and metrics; default)" in out
