"""training/checkpoint.py: a checkpoint holds the optimizer to the bit, keeps the newest few by step number, is
verified by its manifest, and belongs to one run; one output directory, one run."""

import json
import logging
import os
import socket

import pytest
import torch

from rankrm.errors import CheckpointError
from rankrm.training.checkpoint import (
    LOCK,
    STATE,
    RunLock,
    check_identity,
    checkpoints,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify,
)


def _stepped():
    """A real AdamW after one step (exp_avg, exp_avg_sq tensors and a step count) on a 2 -> 1 linear layer."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(3, 2)).sum().backward()
    opt.step()
    return lin, opt


def _save(root, step, lin, opt, keep=2):
    return save_checkpoint(
        root,
        step,
        dict(lin.named_parameters()),
        opt.state_dict(),
        {"last_epoch": step},
        {"history": []},
        {"seed": 0},
        keep,
    )


def test_a_checkpoint_round_trips_the_weights_and_the_optimizer_bit_for_bit(tmp_path):
    lin, opt = _stepped()
    path = _save(tmp_path, 7, lin, opt)
    back = load_checkpoint(path)
    assert back["step"] == 7 and back["scheduler"] == {"last_epoch": 7} and back["identity"] == {"seed": 0}
    assert all(torch.equal(back["trainable"][n], p) for n, p in lin.named_parameters())
    restored = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=0.5)
    restored.load_state_dict(back["optimizer"])
    want, got = opt.state_dict(), restored.state_dict()
    # the hyper-parameters travel as JSON (betas a list): lr 0.1 comes back over the new optimizer's 0.5
    assert got["param_groups"] == json.loads(json.dumps(want["param_groups"])) and got["param_groups"][0]["lr"] == 0.1
    for i in want["state"]:
        assert want["state"][i].keys() == got["state"][i].keys()
        assert all(torch.equal(want["state"][i][k], got["state"][i][k]) for k in want["state"][i])


def test_the_newest_are_kept_by_step_number_and_a_damaged_one_is_passed_over(tmp_path, caplog):
    """Steps 3, 9, 10 with keep 2: 9 and 10 remain (10 sorts after 9 as a number, not as text); a changed byte
    in step 10's state fails its manifest, and --resume latest falls back to step 9, saying why."""
    lin, opt = _stepped()
    for step in (3, 9, 10):
        _save(tmp_path, step, lin, opt)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-9", "step-10"]
    state = tmp_path / "step-10" / STATE
    state.write_bytes(state.read_bytes().replace(b'"step": 10', b'"step": 11'))
    with pytest.raises(CheckpointError, match=r"step-10: state.json does not match its manifest"):
        verify(tmp_path / "step-10")
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint("latest", tmp_path) == tmp_path / "step-9"
    assert "skipping damaged checkpoint" in caplog.text and "step-10" in caplog.text
    assert find_checkpoint("", tmp_path) is None
    with pytest.raises(CheckpointError, match=r"not a rankrm checkpoint \(no manifest.json\)"):
        find_checkpoint(str(tmp_path), tmp_path)
    with pytest.raises(CheckpointError, match=r"--resume latest: no checkpoint in .*Fix: start without --resume"):
        find_checkpoint("latest", tmp_path / "none")


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    check_identity(tmp_path, {"seed": 0, "model": "m"}, {"seed": 0, "model": "m"})
    with pytest.raises(CheckpointError, match=r"another run \(seed: checkpoint 0, this run 1\)\. Fix: resume with"):
        check_identity(tmp_path, {"seed": 0, "model": "m"}, {"seed": 1, "model": "m"})


def test_one_directory_one_run_and_a_dead_owners_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        assert json.loads((out / LOCK).read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
        with pytest.raises(CheckpointError, match=rf"another run \(PID {os.getpid()} on .*\) is writing here"):
            RunLock(out).__enter__()
    assert not out.exists()  # made for the run, left empty: removed
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 1}))  # above pid_max: dead
    with RunLock(out) as lock:
        assert lock.held and json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert out.is_dir() and not (out / LOCK).exists()
