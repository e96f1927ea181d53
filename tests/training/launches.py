"""What the tests of several processes share (test_multiprocess.py: DDP; test_sharding.py: FSDP2;
test_deepspeed.py: DeepSpeed ZeRO): their data and settings, `accelerate launch` of a shipped recipe on 2 CPU
processes (gloo), each case trained by 2 launched processes and by 1 plain process here and compared, a sharded
checkpoint compared with the 1-process one and resumed in one process, a SIGTERM to the launcher then
`--resume latest` under the same recipe.

The 1-process references run on one thread, as each launched process does (accelerate sets OMP_NUM_THREADS=1): a
float sum split over other threads rounds differently (~1e-9), and the metrics before training are then equal to
the last bit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, write_jsonl
from safetensors.torch import load_file
from test_attributes import rated_groups

from rankrm.training.checkpoint import checkpoints, verify
from rankrm.training.config import TrainConfig
from rankrm.training.run import train

MULTI_RUNS = [str(ROOT / "tests" / "training" / "multi_runs.py")]
# 19 training groups in steps of 3: six full steps and a last step of 1 group, which leaves the second process a
# zero-weight stand-in; micro-batches of 200 tokens split each step; eval every 3 steps, spread over the processes
COMMON = dict(
    epochs=1,
    batch_size=3,
    max_length=64,
    learning_rate=3e-3,
    warmup_ratio=0.1,
    seed=0,
    micro_batch_tokens=200,
    eval_batch_tokens=300,
    eval_steps=3,
    keep_checkpoints=10,
    plots=False,  # the report's PNGs (matplotlib, ~4 s a run here) are tested in test_run.py, not under every engine
)


def settings(model_dirs, data, out, **kw) -> dict:
    return dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(data[0])],
        eval_data=[str(data[1])],
        output_dir=str(out),
        **COMMON,
        **kw,
    )


def flags(values: dict) -> list[str]:
    args = []
    for k, v in values.items():
        args += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: list[str], script: list[str], config: str = "ddp.yaml", port: int | None = None, machine: list[str] = ()
) -> subprocess.Popen:
    """`accelerate launch` with a shipped recipe (DDP by default), 2 processes on the CPU (gloo), a free rendezvous
    port; machine: the launcher flags of one machine of several."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "ACCELERATE_USE_CPU": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / config),
        "--num_processes",
        "2",
        "--main_process_port",
        str(port or free_port()),
        *machine,
        *script,
        *args,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


def write_data(d: Path) -> tuple[Path, Path]:
    """test_multiprocess's data (19 training groups: steps of 3, a last step of 1; 9 held out), rated as
    test_attributes.py rates it (goodness on every completion, words on every second) for the attributes head."""
    return write_jsonl(d / "train.jsonl", rated_groups(19, 1)), write_jsonl(d / "eval.jsonl", rated_groups(9, 2))


def case(model_dirs, data, out: Path, kw: dict) -> dict:
    """test_multiprocess's settings, with kw's in place of any of them."""
    return {**settings(model_dirs, data, out), **kw}


@contextlib.contextmanager
def one_thread():
    """torch on one thread within the block, as a launched process runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_launched_and_alone(
    model_dirs, data, root: Path, cases: dict, recipes: dict, extra: dict | None = None, timeout: int = 900
) -> str:
    """Each case (name -> (recipe key, settings)) trained into root/two-NAME by one launch per recipe (recipe key
    -> yaml; the launches run at the same time, each its cases in sequence, then extra[key]'s argument lists) and
    into root/one-NAME by one plain process here; the launches' stderr (rankrm's lines), joined."""
    procs = []
    for key, config in recipes.items():
        arglists = [flags(case(model_dirs, data, root / f"two-{n}", kw)) for n, (k, kw) in cases.items() if k == key]
        arglists += (extra or {}).get(key, [])
        (root / f"{key}.json").write_text(json.dumps(arglists))
        procs.append(launch([str(root / f"{key}.json")], MULTI_RUNS, config))
    try:
        with one_thread():
            for name, (_, kw) in cases.items():
                train(TrainConfig(**case(model_dirs, data, root / f"one-{name}", kw)))
    finally:
        logs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    return "".join(err for _, err in logs)


def resumes_in_one_process(root: Path, name: str, kw: dict, model_dirs, data, tmp_path: Path) -> None:
    """The step-3 checkpoint of 2 sharded processes (root/two-NAME) holds the tensors of the 1-process run's step-3
    checkpoint (weights and AdamW moments within 1e-5, the same names); resumed by one plain process it ends where
    the uninterrupted 1-process run ends."""
    mine, theirs = (root / f"{w}-{name}" / "checkpoints" / "step-3" for w in ("two", "one"))
    verify(mine)
    for f in ("trainable.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(theirs / f)), load_file(str(mine / f))
        assert a.keys() == b.keys(), f
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=f"{f}: {n}")
    out = tmp_path / "resumed"
    shutil.copytree(mine, out / "checkpoints" / "step-3")
    with one_thread():
        train(TrainConfig(**case(model_dirs, data, out, {**kw, "resume": "latest"})))
    a, b = weights(root / f"one-{name}"), weights(out)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)


def sigterm_then_resume(root: Path, name: str, kw: dict, recipe: str, model_dirs, data, tmp_path: Path) -> None:
    """SIGTERM to the launcher of case NAME under recipe (with a checkpoint due every step): both processes stop
    after the same step, the main process writes one checkpoint (the gathered state) and no model; `--resume
    latest` by 2 processes under the same recipe ends bit-identical to the uninterrupted launched run
    (root/two-NAME), its held-out metrics equal."""
    out = tmp_path / "stopped"
    args = flags(case(model_dirs, data, out, {**kw, "save_steps": 1}))
    proc = launch(args, ["-m", "rankrm", "train"], recipe)
    try:
        line = ""
        for line in proc.stderr:  # logged after both processes met in the first evaluation: both handle signals
            if line.startswith("before training"):
                proc.send_signal(signal.SIGTERM)
                break
        err = line + proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    assert proc.returncode != 0  # torchrun's agent re-raises the signal as its own failure
    assert err.count("stopped by SIGTERM after step 1") == 2, err[-3000:]  # both processes, at the same step
    assert [c.name for c in checkpoints(out / "checkpoints")] == ["step-1"]
    verify(out / "checkpoints" / "step-1")
    assert not (out / "model.safetensors").exists()  # the run did not finish
    proc = launch(args + ["--resume", "latest"], ["-m", "rankrm", "train"], recipe)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in err and "at step 1" in err
    a, b = weights(root / f"two-{name}"), weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), f"{name}: resumed run differs from the uninterrupted one"
    assert results(out)["after"] == results(root / f"two-{name}")["after"]


def two_train_as_one(root: Path, name: str, model_dirs) -> None:
    """Case NAME trained by 2 launched processes (root/two-NAME) and by 1 (root/one-NAME): every tensor in the
    precision it trained in and within 1e-5; every backbone tensor trained ("top-layer" cases: the top layer's 9 and
    the final norm; the LM head a reward model drops is not compared); the metrics before training bit-equal,
    after within 1e-6, the history's steps and train loss, 7 steps."""
    start = load_file(str(model_dirs["llama-chat"] / "model.safetensors"))
    one, two = root / f"one-{name}", root / f"two-{name}"
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for n in a:
        assert b[n].dtype == a[n].dtype, n
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-5, msg=n)
    backbone = [n for n in start if n in b]
    trained = [n for n in backbone if not torch.equal(b[n], start[n])]
    assert len(trained) == (10 if "top-layer" in name else len(backbone))
    ra, rb = results(one), results(two)
    assert rb["before"] == ra["before"]  # exact: each reward of the spread evaluation is the one process's
    assert rb["after"]["accuracy"] == ra["after"]["accuracy"]
    assert rb["after"]["log_loss"] == pytest.approx(ra["after"]["log_loss"], abs=1e-6)
    assert [h["step"] for h in rb["history"]] == [h["step"] for h in ra["history"]] == [3, 6]
    for ha, hb in zip(ra["history"], rb["history"]):
        assert hb["accuracy"] == ha["accuracy"]
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], abs=1e-6)
    assert rb["steps"] == ra["steps"] == 7


def scores_as_reward_model(path: Path):
    """The saved model, loaded by plain transformers, gives RewardModel.score's rewards (to 1e-5) on a few texts;
    returns the RewardModel."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rankrm.modeling.model import RewardModel

    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rm = RewardModel.from_pretrained(str(path))
    prompts = [[{"role": "user", "content": "Say something good, please."}]] * 3
    completions = ["good good good", "bad red cat", "good dog"]
    ours = rm.score(prompts, completions)
    for p, c, r in zip(prompts, completions, ours):
        enc = tok(rm.render(p, c), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert hf(**enc).logits[0, 0].item() == pytest.approx(r, abs=1e-5)
    return rm
