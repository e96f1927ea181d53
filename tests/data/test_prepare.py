"""data/prepare.py: a store prepared once and found again, and nothing trusted of a prepare killed while it writes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import synthetic_groups, write_jsonl
from samples import _encoder

from rankrm.data.prepare import open_data
from rankrm.data.store import Store, is_store
from rankrm.errors import DataError


def test_open_data_prepares_once_then_finds_it(tmp_path, model_dirs, caplog):
    caplog.set_level(logging.INFO, logger="rankrm")
    data = write_jsonl(tmp_path / "a.jsonl", synthetic_groups(20, seed=1))
    enc = _encoder(model_dirs)
    first = open_data([data], enc, tmp_path / "cache")
    said = caplog.messages
    assert any("preparing" in s for s in said) and any("MB" in s and "rm -r" in s for s in said)
    caplog.clear()
    again = open_data([data], enc, tmp_path / "cache")
    assert again.path == first.path and any("prepared before" in s for s in caplog.messages)
    data.write_text(data.read_text() + json.dumps(synthetic_groups(1, seed=9)[0]) + "\n")
    changed = open_data([data], enc, tmp_path / "cache")
    assert changed.path != first.path and changed.manifest["groups"] == 21
    with pytest.raises(DataError, match="another tokenizer"):  # a store given directly, for another max length
        open_data([first.path], _encoder(model_dirs, max_length=64), tmp_path / "cache")


def test_interrupted_prepare_leaves_no_store(tmp_path, model_dirs):
    """A prepare killed while it writes leaves nothing a later run trusts, and the later run cleans up and
    prepares."""
    rows = synthetic_groups(3000, seed=2)
    data = write_jsonl(tmp_path / "big.jsonl", rows)
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "rankrm",
        "data",
        "prepare",
        str(data),
        "--model",
        str(model_dirs["llama-chat"]),
        "--out",
        str(out),
        "--num-proc",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.parent.glob(".rankrm-tmp*")) and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "prepare ended before it could be killed: give it more data"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not is_store(out) and not out.exists()
    leftovers = list(out.parent.glob(".rankrm-tmp*"))
    assert leftovers  # the dead writer's temporary directory
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert is_store(out) and Store(out).manifest["groups"] == 3000
