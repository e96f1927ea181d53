"""`rankrm score` on files of 10 thousand to a million short lines: peak memory (RSS) and throughput.

The scorer streams: it holds one chunk of records (--chunk-lines) at a time, so its peak memory should not grow
with the file. Each size runs `rankrm score` in its own process; the peak RSS is that process's own (wait4).
The reward model is a tiny Llama (2 layers, hidden 64, random weights) with SmolLM2's real tokenizer: memory
boundedness is a property of the streaming, and a 135M model would need hours of CPU for a million lines.

    python -m benchmarks.score_memory               # writes benchmarks/results/score_memory.{json,md}
    python -m benchmarks.score_memory --sizes 1000 --out /tmp/check   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._models import tiny_reward_model
from benchmarks._results import save

ROOT = Path(__file__).resolve().parents[1]
SIZES = [10_000, 100_000, 1_000_000]


def write_lines(path: Path, n: int) -> None:
    words = "the a sky blue is red green cat dog sun moon tree rock fish bird good bad yes no".split()
    with open(path, "w") as f:
        for i in range(n):
            w = [words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)]
            f.write(json.dumps({"id": i, "prompt": f"Q{i % 97}: say something. A:", "completion": " ".join(w)}) + "\n")


def run(model: Path, src: Path, dst: Path) -> dict:
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankrm", "score", "--model", str(model), str(src), str(dst), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(proc.stderr.read().decode()[-2000:])
    secs = time.time() - t0
    n = sum(1 for _ in open(dst))
    return {
        "lines": n,
        "seconds": round(secs, 1),
        "lines_per_second": round(n / secs),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "input_mib": round(src.stat().st_size / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="lines per file, one run each")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_reward_model(tmp, hidden=64, intermediate=128, layers=2, max_positions=256, max_length=64)
        for n in args.sizes:
            src = tmp / f"in-{n}.jsonl"
            write_lines(src, n)
            rows.append(run(tmp / "rm", src, tmp / "out.jsonl"))
            print(rows[-1], flush=True)
            src.unlink()
    head = (
        "# `rankrm score`: peak memory against file size\n\nDefault --chunk-lines 4096; tiny Llama (2 layers, "
        "hidden 64) with SmolLM2's tokenizer.\n\n| lines | input (MiB) | peak RSS (MiB) | seconds | lines/s |\n"
        "| --- | --- | --- | --- | --- |"
    )
    lines = [
        f"| {r['lines']:,} | {r['input_mib']} | {r['peak_rss_mib']} | {r['seconds']} | {r['lines_per_second']:,} |"
        for r in rows
    ]
    save(args.out, "score_memory", head, lines, rows, "score_memory")


if __name__ == "__main__":
    main()
