"""benchmarks/layout_choice.py at the tiny shape: its table reports the cost model's pick and the measured fastest
layout of every batch, and counts the agreements it states."""

import json
import re
import subprocess
import sys

from conftest import ROOT

LAYOUTS = ("padded", "packed", "kv")


def test_layout_choice_table_agrees_with_its_figures(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.layout_choice", "--shape", "tiny", "--reps", "1", "--groups", "2"]
    r = subprocess.run([*cmd, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = json.loads((tmp_path / "layout_choice.json").read_text())["batches"]
    assert len(got) == 9 and {(b["k"], b["prompt"], b["completion"]) for b in got} >= {(9, 256, 32), (2, 16, 64)}
    for b in got:
        assert set(b["cost"]) == set(b["secs"]) == set(LAYOUTS) and all(s > 0 for s in b["secs"].values())
        assert b["pick"] == min(LAYOUTS, key=b["cost"].get)  # auto takes the cheapest predicted, first on a tie
        assert b["fastest"] == min(LAYOUTS, key=b["secs"].get)
        if b["prompt"] >= 4 * b["completion"]:  # a long shared prompt read once must be predicted cheaper
            assert b["cost"]["kv"] < b["cost"]["padded"] and b["cost"]["packed"] < b["cost"]["padded"]
    table = (tmp_path / "layout_choice.md").read_text()
    right = sum(b["pick"] == b["fastest"] for b in got)
    assert re.search(rf"auto picked the fastest layout in {right} of 9 batches", table)
    assert table.count("\n| ") == 2 + 27  # the header, its rule, and a row per (batch, layout)
