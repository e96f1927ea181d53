"""What a training run leaves for people to look at: the --report-to trackers (TensorBoard's event file, read back
with TensorBoard's own reader) and the training report (OUTPUT_DIR/report/: PNG plots and summary.md)."""

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
from conftest import synthetic_groups, write_jsonl

from rankrm.cli import build_parser, main
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.flags import config_from_args
from rankrm.training.run import train
from rankrm.training.signals import TrainingInterrupted
from rankrm.training.tracking import accelerator_kwargs, tracker_names

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("track")
    held = [{**g, "subset": ["easy", "hard"][i % 2]} for i, g in enumerate(synthetic_groups(40, 2))]
    return write_jsonl(d / "train.jsonl", synthetic_groups(96, 1)), write_jsonl(d / "eval.jsonl", held)


def cfg(model_dirs, data, out, **kw):
    base = dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(data[0])],
        eval_data=[str(data[1])],
        output_dir=str(out),
        max_steps=6,
        eval_steps=3,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        seed=0,
        train_layers=1,
        report_to="tensorboard",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def run(model_dirs, data, tmp_path_factory):
    """One short run with --report-to tensorboard and the report on: 6 steps, evaluated at steps 3 (and 0, 6)."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("run") / "rm"
    return out, train(cfg(model_dirs, data, out))


def scalars(logs) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in logs/rankrm, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logs / "rankrm"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def open_writers() -> int:
    """TensorBoard event writers still running (their thread stops when Accelerate's end_training closes them)."""
    return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())


def test_tensorboard_holds_the_losses_and_metrics_the_run_returned(run):
    out, res = run
    s = scalars(out / "logs")
    assert sorted(s["train/loss"]) == sorted(s["train/accuracy"]) == [1, 2, 3, 4, 5, 6]
    (h,) = res["history"]  # the evaluation at step 3
    assert h["step"] == 3
    # the history's training loss and accuracy are the means over steps 1-3 (8 groups of K=4: 48 pairs a step)
    assert np.mean([s["train/loss"][i] for i in (1, 2, 3)]) == pytest.approx(h["train_loss"], rel=1e-6)
    assert np.mean([s["train/accuracy"][i] for i in (1, 2, 3)]) == pytest.approx(h["train_accuracy"], rel=1e-6)
    assert len(set(s["train/loss"].values())) == 6  # six different steps, not one value repeated
    for step, m in ((0, res["before"]), (3, h), (6, res["after"])):
        for key in ("accuracy", "log_loss", "kendall_tau_b", "top1_accuracy", "subset_mean"):
            assert s[f"eval/{key}"][step] == pytest.approx(m[key], rel=1e-6), (key, step)
        assert s["eval/calibration/ece"][step] == pytest.approx(m["calibration"]["ece"], rel=1e-6)
        assert s["eval/subsets/hard/accuracy"][step] == pytest.approx(m["subsets"]["hard"]["accuracy"], rel=1e-6)
    assert s["train/learning_rate"][1] == pytest.approx(3e-3, rel=1e-6)  # no warmup step in 6 (5%): the peak
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["history"] == res["history"]
    assert open_writers() == 0


def test_training_writes_its_report_where_later_saves_keep_it(run):
    out, res = run
    report = out / "report"
    for name in ("curves", "reliability", "rewards", "subsets"):
        png = (report / f"{name}.png").read_bytes()
        assert png[:8] == PNG and len(png) > 5000, name
    summary = (report / "summary.md").read_text()
    assert summary.startswith("# Reward model training")
    assert "## after training" in summary and "**after training minus before training**" in summary
    assert "![curves](curves.png)" in summary and "subsets (mean accuracy" in summary
    assert f"accuracy {res['after']['accuracy']:.4f}" in summary
    assert not [p for p in out.iterdir() if p.name.startswith(".rankrm-tmp-")]
    # a later save into the same directory (rankrm normalize in place) replaces the model, keeps the run's files
    RewardModel.from_pretrained(str(out)).save_pretrained(out)
    assert (report / "curves.png").read_bytes()[:8] == PNG and (out / "logs" / "rankrm").is_dir()


def test_a_sigterm_still_flushes_the_trackers(model_dirs, data, tmp_path):
    """TensorBoard's writer thread sends each event to the file as it comes; end_training closes the writer (for
    wandb and mlflow it also marks the run finished), on this way out too."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "rm"
    logs = out / "logs" / "rankrm"

    def stop_once_logging():  # the event file appears once the trackers started (signals are handled by then)
        for _ in range(600):
            if logs.is_dir() and any(p.name.startswith("events.out") for p in logs.iterdir()):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    t = threading.Thread(target=stop_once_logging)
    t.start()
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg(model_dirs, data, out, max_steps=500, eval_steps=0, plots=False))
    t.join()
    s = scalars(out / "logs")
    assert sorted(s["train/loss"]) == list(range(1, e.value.step + 1))  # every step up to the stop, flushed
    assert 0 in s["eval/accuracy"]
    assert open_writers() == 0


@pytest.mark.parametrize(
    "missing", [n for n in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(n) is None][:1]
)
def test_a_tracker_whose_package_is_missing_fails_at_start_naming_the_flag(model_dirs, data, tmp_path, capsys, missing):
    out = tmp_path / "rm"
    code = main(
        [
            "train",
            "--model",
            str(model_dirs["llama-chat"]),
            "--train-data",
            str(data[0]),
            "--output-dir",
            str(out),
            "--report-to",
            f"tensorboard,{missing}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"--report-to {missing}: the {missing} package is not installed. Fix: pip install {missing}" in err
    assert not out.exists()
    assert main(["train", "--train-data", str(data[0]), "--report-to", "tensorbord"]) == 2
    assert (
        "--report-to 'tensorbord' unknown. Fix: use none, all, or a comma list of tensorboard, wandb"
        in capsys.readouterr().err
    )


def test_a_tracker_that_cannot_start_is_a_settings_error(model_dirs, data, tmp_path, capsys):
    out = tmp_path / "rm"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "rankrm").write_text("a file where TensorBoard's directory goes")
    code = main(
        [
            "train",
            "--model",
            str(model_dirs["llama-chat"]),
            "--train-data",
            str(data[0]),
            "--output-dir",
            str(out),
            "--report-to",
            "tensorboard",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--report-to tensorboard: a tracker did not start (FileExistsError" in err and "Fix:" in err
    assert not (out / "config.json").exists()


def test_report_flags_parse(data):
    c = config_from_args(
        build_parser().parse_args(
            ["train", "--train-data", str(data[0]), "--no-plots", "--report-to", "tensorboard, tensorboard"]
        )
    )
    assert c.plots is False and c.report_to == "tensorboard, tensorboard"
    assert TrainConfig(train_data=["x"]).plots is True and TrainConfig(train_data=["x"]).report_to == "none"
    assert tracker_names(c.report_to) == ["tensorboard"] and tracker_names("none") == [] == tracker_names("")
    assert accelerator_kwargs("tensorboard", "runs/x") == {"log_with": ["tensorboard"], "project_dir": "runs/x/logs"}
    assert "tensorboard" in tracker_names("all")


def test_without_matplotlib_the_report_is_skipped_with_a_note(model_dirs, data, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as when not installed
    out = tmp_path / "rm"
    caplog.set_level(logging.INFO, logger="rankrm")
    res = train(cfg(model_dirs, data, out, max_steps=2, eval_steps=0, report_to="none"))
    said = caplog.text
    assert said.count("no training report") == 2 and "pip install 'rankrm[report]'" in said and "--no-plots" in said
    assert res["steps"] == 2 and (out / "model.safetensors").is_file()
    assert not (out / "report").exists() and not (out / "logs").exists()
