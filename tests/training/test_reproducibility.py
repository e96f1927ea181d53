"""Same command, same model: training runs side by side with a CPU-hogging neighbour, a run alone, and a run
stopped by SIGTERM and resumed all end with bit-identical weights and metrics (docs/reproducibility.md).

The runs use the kv layout with prompts long enough (about 250 tokens, 5 groups of 4 a step) that the prompt
gather's backward is big enough for torch to spread it over threads: before select_rows, that backward added a
group's rows with float atomics, and these runs differed from one another from the first steps."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.training.checkpoint import checkpoints

PREAMBLE = " Here is a long preamble about the weather, the sea and the stars." * 8
ARGS = dict(
    layout="kv",
    batch_size=5,
    max_steps=6,
    save_steps=1,
    eval_fraction=0.2,
    learning_rate=3e-3,
    seed=0,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = synthetic_groups(25, 3)
    for r in rows:
        r["prompt"][0]["content"] += PREAMBLE
    return write_jsonl(tmp_path_factory.mktemp("repro") / "long.jsonl", rows)


def start(model_dirs, data, out: Path, **kw) -> subprocess.Popen:
    args = ["--model", str(model_dirs["llama-chat"]), "--train-data", str(data), "--output-dir", str(out)]
    for k, v in {**ARGS, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "rankrm", "train", "--no-plots", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen, code: int = 0) -> None:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == code, err[-3000:]


def neighbour(seconds: float = 120) -> subprocess.Popen:
    """A CPU hog that stops by itself: one busy process per core."""
    loop = f"import time\nt = time.time() + {seconds}\nwhile time.time() < t:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]


def stop(hogs) -> None:
    for h in hogs:
        h.kill()
        h.wait()


def result(out: Path) -> tuple[dict, dict]:
    metrics = json.loads((out / "eval_results.json").read_text())
    return load_file(out / "model.safetensors"), {k: metrics[k] for k in ("before", "after", "history")}


def assert_identical(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (wa, ma), (wb, mb) = a, b
    assert wa.keys() == wb.keys()
    diff = {n: float((wa[n] - wb[n]).abs().max()) for n in wa if not torch.equal(wa[n], wb[n])}
    assert not diff, f"weights differ: {diff}"
    assert ma == mb


@pytest.fixture(scope="module")
def alone(model_dirs, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("alone") / "run"
    finish(start(model_dirs, data, out))
    return result(out)


def test_two_runs_side_by_side_with_a_busy_neighbour_equal_a_run_alone(model_dirs, data, tmp_path, alone):
    hogs = neighbour()
    try:
        procs = [start(model_dirs, data, tmp_path / f"r{i}") for i in range(2)]
        for p in procs:
            finish(p)
    finally:
        stop(hogs)
    for i in range(2):
        assert_identical(result(tmp_path / f"r{i}"), alone)


def test_sigterm_under_load_then_resume_equals_a_run_alone(model_dirs, data, tmp_path, alone):
    out = tmp_path / "t"
    hogs = neighbour()
    try:
        proc = start(model_dirs, data, out)
        t0 = time.time()
        while not checkpoints(out / "checkpoints"):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() - t0 < 600, "no checkpoint in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        finish(proc, 143)
        step = int(checkpoints(out / "checkpoints")[-1].name.split("-")[1])
        assert step < ARGS["max_steps"]
        finish(start(model_dirs, data, out, resume="latest"))
    finally:
        stop(hogs)
    assert_identical(result(out), alone)
