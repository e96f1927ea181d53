"""Fault injection: kills at random moments of training and of every save, signals, damaged and forged
checkpoints, a mismatched checkpoint, two runs on one directory, a full disk, a diverging learning rate.

After each fault the output is the old state or the new one, never a mix; resuming ends bit-identical to an
uninterrupted run; no code from a checkpoint runs; no NaN is written."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, synthetic_groups, write_jsonl

from rankrm.errors import WriteError
from rankrm.files import TMP_PREFIX, leftovers, remove_leftovers
from rankrm.modeling.model import RewardModel
from rankrm.training.checkpoint import checkpoints, save_checkpoint, verify
from rankrm.training.config import TrainConfig
from rankrm.training.run import train

KW = dict(
    max_steps=10,
    save_steps=1,
    keep_checkpoints=3,
    train_layers=-1,
    batch_size=4,
    max_length=64,
    seed=0,
    learning_rate=3e-3,
    eval_fraction=0.25,
    plots=False,  # the report is tested in test_run.py
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("rel") / "d.jsonl", synthetic_groups(40, 4))


def cfg(model_dirs, data, out, **kw):
    return TrainConfig(model=str(model_dirs["llama-chat"]), train_data=[str(data)], output_dir=str(out), **{**KW, **kw})


def cli_args(model_dirs, data, out, **kw) -> list[str]:
    args = ["--model", str(model_dirs["llama-chat"]), "--train-data", str(data), "--output-dir", str(out)]
    for k, v in {**KW, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def weights(path) -> dict:
    m = RewardModel.from_pretrained(str(path))
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture(scope="module")
def uninterrupted(model_dirs, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    train(cfg(model_dirs, data, out))
    return weights(out)


def start(model_dirs, data, out, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "rankrm", "train"] + cli_args(model_dirs, data, out, **kw),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_checkpoint(proc, out: Path, timeout: float = 120) -> None:
    t0 = time.time()
    while not checkpoints(out / "checkpoints"):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout, "no checkpoint in time"
        time.sleep(0.05)


def test_sigkill_at_random_moments_of_training_then_resume_is_bit_identical(model_dirs, data, tmp_path, uninterrupted):
    """3 runs killed (SIGKILL) at random moments after their first checkpoint: every checkpoint left is intact or a
    dead writer's temporary, the model directory is absent or whole, and --resume latest ends bit-identical."""
    rng = random.Random(0)
    for trial in range(3):
        out = tmp_path / f"k{trial}"
        proc = start(model_dirs, data, out)
        try:
            wait_for_checkpoint(proc, out)
            time.sleep(rng.uniform(0, 1.5))
        finally:
            proc.kill()
            proc.communicate(timeout=60)
        for ck in checkpoints(out / "checkpoints"):
            verify(ck)  # whole, or it would not carry its final name
        assert not (out / "config.json").exists() or RewardModel.from_pretrained(str(out))
        train(cfg(model_dirs, data, out, resume="latest"))  # the dead run's lock is taken over
        assert same_weights(weights(out), uninterrupted), f"trial {trial}"
        assert not leftovers(out) and not leftovers(out / "checkpoints")


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(model_dirs, data, tmp_path, uninterrupted):
    out = tmp_path / "t"
    proc = start(model_dirs, data, out)
    try:
        wait_for_checkpoint(proc, out)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume latest" in err and "Traceback" not in err
    last = checkpoints(out / "checkpoints")[-1]
    verify(last)
    assert int(last.name.split("-")[1]) < KW["max_steps"]
    assert not (out / "config.json").exists()  # no model: the run did not finish
    train(cfg(model_dirs, data, out, resume="latest"))
    assert same_weights(weights(out), uninterrupted)


def _kill_during(fn, delay: float | None) -> float:
    """Run fn in a forked child and SIGKILL it after delay seconds (None: let it finish); returns the seconds
    until the child ended."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:  # the child: do the save, then leave without running the parent's cleanup
        try:
            import threading

            from tqdm import tqdm
            from transformers.utils import logging as hf_logging

            # tqdm's default lock is a semaphore shared across fork: a child killed while holding it would leave
            # the parent waiting forever, so the child takes a lock of its own and shows no progress bars
            tqdm.set_lock(threading.RLock())
            hf_logging.disable_progress_bar()
            fn()
        finally:
            os._exit(0)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return time.time() - t0


def test_sigkill_during_model_and_checkpoint_saves_leaves_old_or_new(model_dirs, tmp_path):
    """12 kills during a model save over an existing model (new weights and a new reward_bias in config.json) and 12
    during a checkpoint save: a reader finds the old model or the new one, with matching config and weights; the
    checkpoints present all verify; the dead writers' temporaries are found and removed."""
    rng = random.Random(1)
    old_model = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    with torch.no_grad():
        m.head.weight.mul_(3)
    m.reward_bias = 1.5
    probe = ([[{"role": "user", "content": "Hi"}]], ["Hello there"])
    old, new = old_model.score(*probe)[0], m.score(*probe)[0]
    target = tmp_path / "rm"
    took = _kill_during(lambda: m.save_pretrained(tmp_path / "timing"), None)  # as long as a save takes a child
    seen = set()
    for trial in range(12):
        old_model.save_pretrained(target)  # the old model, with a run's other files next to it
        (target / "checkpoints").mkdir(exist_ok=True)
        _kill_during(lambda: m.save_pretrained(target), rng.uniform(0, 1.3 * took))
        got = RewardModel.from_pretrained(str(target)).score(*probe)[0]
        assert got == pytest.approx(old, abs=1e-5) or got == pytest.approx(new, abs=1e-5), (trial, got, old, new)
        seen.add("new" if got == pytest.approx(new, abs=1e-5) else "old")
        assert (target / "checkpoints").is_dir()  # what is not the model stays
        remove_leftovers(tmp_path)
        assert not list(tmp_path.glob(TMP_PREFIX + "*"))
    assert seen == {"old", "new"}  # the kills fell both before and after the switch
    root = tmp_path / "ck"
    params = {n: p.detach() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(list(m.parameters()))
    save_checkpoint(root, 1, params, opt.state_dict(), {}, {}, {}, keep=5)
    took = _kill_during(lambda: save_checkpoint(root, 2, params, opt.state_dict(), {}, {}, {}, keep=5), None)
    for trial in range(12):
        _kill_during(
            lambda: save_checkpoint(root, 3 + trial, params, opt.state_dict(), {}, {}, {}, keep=5),
            rng.uniform(0, 1.3 * took),
        )
        for ck in checkpoints(root):
            verify(ck)
        remove_leftovers(root)
        assert not list(root.glob(TMP_PREFIX + "*"))


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(model_dirs, data, tmp_path, uninterrupted, caplog):
    out = tmp_path / "d"
    train(cfg(model_dirs, data, out, max_steps=KW["max_steps"]))
    cks = checkpoints(out / "checkpoints")
    for ck in cks[1:]:  # keep step 8 intact; truncate 9, empty 10
        shutil.rmtree(ck)
    newer = [out / "checkpoints" / "step-9", out / "checkpoints" / "step-10"]
    shutil.copytree(cks[0], newer[0])
    shutil.copytree(cks[0], newer[1])
    w = newer[0] / "trainable.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    (newer[1] / "optimizer.safetensors").write_bytes(b"")
    caplog.set_level(logging.INFO, logger="rankrm")
    train(cfg(model_dirs, data, out, resume="latest"))  # its lines come through logging
    said = caplog.text
    assert "skipping damaged checkpoint" in said and "step-10" in said and "step-9" in said
    assert f"resumed from {cks[0]}" in said
    assert same_weights(weights(out), uninterrupted)


def test_forged_pickle_never_runs_and_other_runs_are_refused(model_dirs, data, tmp_path, capsys, caplog):
    """A pickle that would create a file when loaded, put where old rankrm kept checkpoints and as a checkpoint's
    weights: nothing loads it. A checkpoint of a run with another learning rate is refused, naming it."""
    from rankrm.cli import main

    out = tmp_path / "f"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    forged = out / "checkpoints" / "step-99"
    forged.mkdir(parents=True)
    (forged / "checkpoint.pt").write_bytes(pickle.dumps(Evil()))
    (forged / "trainable.safetensors").write_bytes(pickle.dumps(Evil()))
    (forged / "manifest.json").write_text(json.dumps({"files": {}}))
    assert main(["train"] + cli_args(model_dirs, data, out, resume="latest")) == 2
    err = capsys.readouterr()
    assert "no intact checkpoint" in err.err and "skipping damaged checkpoint" in caplog.text
    assert not marker.exists()
    shutil.rmtree(forged)
    assert main(["train"] + cli_args(model_dirs, data, out, max_steps=2)) == 0
    capsys.readouterr()
    assert main(["train"] + cli_args(model_dirs, data, out, max_steps=2, learning_rate=1e-3, resume="latest")) == 2
    err = capsys.readouterr().err
    assert "checkpoint of another run" in err and "learning_rate" in err and "Fix:" in err
    assert main(["train"] + cli_args(model_dirs, data, tmp_path / "none", resume="latest")) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_one_directory_one_run(model_dirs, data, tmp_path, capsys, caplog):
    """A live owner (this test's own `sleep`) keeps the directory; a dead one's lock is taken over."""
    from rankrm.cli import main

    out = tmp_path / "l"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".rankrm.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        assert main(["train"] + cli_args(model_dirs, data, out, max_steps=1)) == 2
        assert f"another run (PID {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    caplog.set_level(logging.INFO, logger="rankrm")
    assert main(["train"] + cli_args(model_dirs, data, out, max_steps=1)) == 0
    assert "taking over the lock" in caplog.text
    assert not (out / ".rankrm.lock").exists()


def test_diverging_learning_rate_stops_without_saving_or_skips_and_counts(model_dirs, data, tmp_path, capsys):
    from rankrm.cli import main

    out = tmp_path / "n"
    args = cli_args(model_dirs, data, out, learning_rate=1e6, train_layers=-1, save_steps=0, max_steps=6)
    assert main(["train"] + args + ["--max-grad-norm", "0"]) == 2
    err = capsys.readouterr().err
    assert "gradient norm nan" in err and "no model saved" in err and "Fix:" in err
    assert not (out / "config.json").exists()
    res = train(
        cfg(
            model_dirs,
            data,
            tmp_path / "s",
            learning_rate=1e6,
            train_layers=-1,
            save_steps=0,
            max_steps=6,
            max_grad_norm=0,
            on_nonfinite="skip",
        )
    )
    assert res["skipped_nonfinite_steps"] >= 1
    for t in weights(tmp_path / "s").values():
        assert torch.isfinite(t).all()


def test_full_disk_is_reported_with_the_real_path_and_the_old_model_kept(model_dirs, tmp_path):
    """A 1 MiB tmpfs: saving a model there fails naming the directory and 'the disk is full'; the model saved
    before is untouched. (CI runs as root; elsewhere the mount is refused and the test is skipped.)"""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
        (mnt / "rm").mkdir()
        (mnt / "rm" / "keep.txt").write_text("x")
        with pytest.raises(WriteError, match=rf"cannot write {mnt / 'rm'}: the disk is full"):
            big = RewardModel.from_pretrained(str(model_dirs["gpt2-chat"]))
            with torch.no_grad():  # ~1.5 MiB of weights: more than the disk holds
                big.hf.resize_token_embeddings(12_000)
            big.save_pretrained(mnt / "rm")
        assert sorted(p.name for p in (mnt / "rm").iterdir()) == ["keep.txt"]
        assert not list(mnt.glob(TMP_PREFIX + "*"))
        del m
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
