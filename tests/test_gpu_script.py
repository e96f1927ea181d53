"""benchmarks/gpu.sh on a CPU (SHAPE=tiny): its parity stage runs every layout with every attention function."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_script_checks_parity_on_a_cpu(tmp_path):
    """The tiny shape through the script's parity stage: six (layout, attention) rows, all equal to the padded SDPA
    layout in fp32 to 1e-4, rankrm_varlen through its CPU emulation computing fewer pairs than the dense masks."""
    env = {**os.environ, "SHAPE": "tiny", "STAGES": "attention", "PYTHON": sys.executable}
    env.update(OUT=str(tmp_path / "out"), MODEL_DIR=str(tmp_path / "model"), HF_HUB_OFFLINE="1")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = json.loads((tmp_path / "out" / "attention.json").read_text())
    rows = {(x["layout"], x["attention"]): x for x in got["rows"]}
    assert got["parity"] and len(rows) == 6 and all(x["parity"] == "ok" for x in rows.values())
    assert all(x["reward_err"] <= 1e-4 and x["grad_rel_err"] <= 1e-4 and x["tokens_per_s"] > 0 for x in rows.values())
    assert rows["packed", "rankrm_varlen"]["kernel"] == "sdpa_emulation"
    assert rows["packed", "rankrm_varlen"]["pairs"] < rows["packed", "sdpa"]["pairs"]
    assert "env.txt" in os.listdir(tmp_path / "out") and not (tmp_path / "out" / "throughput_sdpa.md").exists()
