"""Resumable checkpoints that cannot run code and can be checked, and the lock that gives a run its directory.

A checkpoint is a directory `checkpoints/step-N/`: the trainable weights and the optimizer's tensors in safetensors,
everything else (optimizer hyper-parameters, schedule, run state, the run's identity) in JSON, and a manifest with
each file's size and SHA-256. It is written under a temporary name, fsynced and renamed (files.atomic_dir), so it
is whole or absent. Loading reads no pickle. Resuming verifies the manifest, falls back to the newest intact
checkpoint (saying which and why), and refuses a checkpoint of another run (model, data, trainable set, seed,
schedule)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rankrm.errors import CheckpointError
from rankrm.files import atomic_dir, pid_alive, tmp_name

MANIFEST, STATE, WEIGHTS, OPTIMIZER = "manifest.json", "state.json", "trainable.safetensors", "optimizer.safetensors"
LOCK = ".rankrm.lock"

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under root, oldest first."""
    found = [p for p in Path(root).glob("step-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=_step_of)


def _optimizer_tensors(state: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as (tensors by flat name, the rest as JSON-able data)."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, rest: dict) -> dict:
    state: dict = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    root: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler_state: dict,
    run_state: dict,
    identity: dict,
    keep: int,
) -> Path:
    """Write checkpoint step-N under root (whole or not at all) and delete all but the `keep` newest."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"step-{step}"
    opt_tensors, opt_rest = _optimizer_tensors(optimizer_state)
    with atomic_dir(path) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in trainable.items()}, tmp / WEIGHTS)
        save_file(opt_tensors, tmp / OPTIMIZER)
        state = {
            "step": step,
            "identity": identity,
            "run_state": run_state,
            "scheduler": scheduler_state,
            "optimizer": opt_rest,
        }
        (tmp / STATE).write_text(json.dumps(state, allow_nan=False) + "\n")
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
            for name in (WEIGHTS, OPTIMIZER, STATE)
        }
        (tmp / MANIFEST).write_text(
            json.dumps({"format": "rankrm-checkpoint-1", "step": step, "files": files}, indent=1) + "\n"
        )
    for old in checkpoints(root)[:-keep]:
        doomed = tmp_name(old)
        os.rename(old, doomed)  # out of sight in one step: a kill mid-delete leaves no half checkpoint
        shutil.rmtree(doomed)
    return path


def verify(path: Path) -> None:
    """Raise CheckpointError unless every file of the manifest is there with its size and hash."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: no readable manifest ({type(e).__name__})") from None
    for name in (WEIGHTS, OPTIMIZER, STATE):
        f = path / name
        want = files.get(name, {})
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != want.get("bytes") or _sha256(f) != want.get("sha256"):
            raise CheckpointError(f"{path}: {name} does not match its manifest (truncated or changed)")


def load_checkpoint(path: Path) -> dict:
    """A verified checkpoint: step, identity, run_state, scheduler, optimizer (a state_dict) and trainable."""
    verify(path)
    state = json.loads((path / STATE).read_text())
    state["optimizer"] = _optimizer_state(load_file(path / OPTIMIZER), state["optimizer"])
    state["trainable"] = load_file(path / WEIGHTS)
    return state


def find_checkpoint(resume: str, root: Path) -> Path | None:
    """The checkpoint to resume from: a given directory (verified), or for 'latest' the newest intact one under
    root, falling back past damaged ones with a message; None when resume is ''."""
    if not resume:
        return None
    if resume != "latest":
        path = Path(resume)
        if not (path / MANIFEST).is_file():
            raise CheckpointError(
                f"{path}: not a rankrm checkpoint (no {MANIFEST}). Fix: pass a directory from "
                f"{root}/, or --resume latest"
            )
        verify(path)
        return path
    found = checkpoints(root)
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointError as e:
            log.warning(f"warning: skipping damaged checkpoint: {e}; trying an older one")
            continue
        return path
    raise CheckpointError(
        f"--resume latest: no {'intact ' if found else ''}checkpoint in {root}. Fix: start "
        "without --resume, or point --output-dir at the run to continue"
    )


def check_identity(path: Path, saved: dict, current: dict) -> None:
    """Refuse a checkpoint whose run differs from this one in what decides the result."""
    differ = sorted(k for k in current if saved.get(k) != current[k])
    if differ:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, this run {current[k]!r}" for k in differ[:4])
        raise CheckpointError(
            f"{path}: checkpoint of another run ({detail}). Fix: resume with the same settings and "
            "data, or start a new run in another --output-dir"
        )


class RunLock:
    """One output directory, one run: a lock file holding the owner's host and PID; a dead owner's is taken over."""

    def __init__(self, directory: Path):
        self.path, self.held = Path(directory) / LOCK, False

    def __enter__(self):
        self.created = not self.path.parent.exists()  # removed again if the run leaves it empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and (owner.get("host") != me["host"] or pid_alive(int(owner.get("pid", 0)))):
                    raise CheckpointError(
                        f"{self.path.parent}: another run (PID {owner.get('pid')} on "
                        f"{owner.get('host')}) is writing here. Fix: wait for it to end, or choose "
                        "another --output-dir"
                    ) from None
                log.info(f"taking over the lock of a run that is no longer running ({owner})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return self
        raise CheckpointError(
            f"{self.path}: could not take the run lock. Fix: remove it if no run is using the directory"
        )

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
