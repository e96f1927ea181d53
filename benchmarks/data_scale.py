"""Data at scale: preparing 10 thousand to 1 million pairwise comparisons, and starting a training on them cold
(nothing prepared) and warm (the prepared store found by its fingerprint), with peak memory, in one run.

The files are built from the shipped HH-RLHF harmless-base test file (2,312 dialogue pairs), repeated with distinct
prompts (each copy's first human turn is numbered), as in the issue that asked for this. Each run is the rankrm
command a user types, in its own process tree, whose resident memory (all processes summed: the tokenizing workers
too; proportional set sizes, so pages the processes share count once) is sampled every 0.2 s:

- prepare: `rankrm data prepare FILE --model SmolLM2 --max-length 256 --out DIR`
- cold: `rankrm train --train-data FILE --eval-data small.jsonl --max-steps 1 --train-layers 0 --max-length 256`
  with an empty data cache (it prepares the store itself, then takes one optimizer step)
- warm: the same command again (the store is found in the cache)

"ready" is the time from launch to the line training prints when its data is ready and the model loaded (`tokens:
...`); "first step" the time to the line it prints just before its first optimizer step (after the held-out
evaluation of 16 groups before training); "1 step" is the whole command (the step, the evaluation after it and the
saved model included).

    python -m benchmarks.data_scale                  # 10k, 100k and 1M (about an hour on 2 CPU cores)
    python -m benchmarks.data_scale --sizes 10000    # one size
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks._results import save

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "rankrm" / "shipped" / "hh_harmless_base_test.jsonl.gz"
HUMAN = "\n\nHuman: "


def build(path: Path, n: int, offset: int = 0) -> Path:
    """n pairwise records: the shipped file's records over and over, copy c's first human turn starting "[c] "."""
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        base = [json.loads(line) for line in f]
    if path.is_file() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        for i in range(n):
            rec = base[i % len(base)]
            tag = f"{HUMAN}[{offset + i // len(base)}] "
            out.write(json.dumps({k: rec[k].replace(HUMAN, tag, 1) for k in ("chosen", "rejected")}) + "\n")
    tmp.rename(path)
    return path


def tree_pss(proc: psutil.Process) -> int:
    """Memory of a process tree: each process's proportional set size (shared pages split among the processes that
    share them, so the forked tokenizing workers' copy-on-write pages are not counted twice), summed."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run(cmd: list[str], env: dict, marks: tuple[str, ...] = (), log: Path | None = None) -> dict:
    """Run a command, sampling its process tree's memory; the times at which each mark first appears in its output."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak, seen, lines = [0], {}, []

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(ps))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        lines.append(line)
        for m in marks:
            if m not in seen and m in line:
                seen[m] = round(time.time() - t0, 1)
    proc.wait()
    wall = time.time() - t0
    if log:
        log.write_text("".join(lines))
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(lines[-30:])}")
    return {
        "seconds": round(wall, 1),
        "marks": seen,
        "peak_gb": round(peak[0] / 2**30, 2),
        "output": "".join(lines[-40:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rankrm-data-scale"), help="files and stores go here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--num-proc", type=int, default=0)
    args = ap.parse_args()

    from rankrm.modeling.hub import resolve

    model = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    args.work.mkdir(parents=True, exist_ok=True)
    small = build(args.work / "small.jsonl", 16, offset=10**7)  # held-out prompts no training copy has
    rankrm = [sys.executable, "-m", "rankrm"]
    common = ["--model", model, "--max-length", "256", "--num-proc", str(args.num_proc)]
    rows, payload = [], {"cpu_count": os.cpu_count(), "model": "SmolLM2-135M-Instruct", "sizes": {}}
    for n in args.sizes:
        data = build(args.work / f"pairs-{n}.jsonl", n)
        mb = data.stat().st_size / 2**20
        cache = args.work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "RANKRM_DATA_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
        print(f"== {n} comparisons ({mb:.0f} MB)", flush=True)
        prep = run(
            [*rankrm, "data", "prepare", str(data), *common, "--out", str(args.work / f"store-{n}")],
            env,
            log=args.work / f"prepare-{n}.log",
        )
        shutil.rmtree(args.work / f"store-{n}", ignore_errors=True)
        print(f"prepare: {prep['seconds']}s, peak {prep['peak_gb']} GB", flush=True)
        train = [
            *rankrm,
            "train",
            "--train-data",
            str(data),
            "--eval-data",
            str(small),
            "--max-steps",
            "1",
            "--train-layers",
            "0",
            *common,
            "--output-dir",
            str(args.work / f"run-{n}"),
        ]
        marks = ("tokens:", "before training:")
        cold = run(train, env, marks, log=args.work / f"cold-{n}.log")
        print(f"cold: {cold['marks']}, 1 step {cold['seconds']}s, peak {cold['peak_gb']} GB", flush=True)
        warm = run(train, env, marks, log=args.work / f"warm-{n}.log")
        print(f"warm: {warm['marks']}, 1 step {warm['seconds']}s, peak {warm['peak_gb']} GB", flush=True)
        store = next(
            m
            for m in (json.loads(f.read_text()) for f in cache.glob("*/rankrm-store.json"))
            if m["sources"] == [str(data)]
        )
        payload["sizes"][n] = {
            "file_mb": round(mb),
            "prepare": prep,
            "cold": cold,
            "warm": warm,
            "store_mb": round(sum(f["bytes"] for f in store["files"].values()) / 2**20),
            "groups": store["groups"],
            "tokens": store["tokens"],
            "prepare_seconds_read": store["seconds"]["read"],
        }
        c, w = cold["marks"], warm["marks"]
        rows.append(
            f"| {n:,} | {mb:,.0f} MB | {prep['seconds']:.0f} s | {prep['peak_gb']:.2f} GB | "
            f"{payload['sizes'][n]['store_mb']:,} MB | {c['tokens:']:.0f} / {c['before training:']:.0f} / "
            f"{cold['seconds']:.0f} s | {cold['peak_gb']:.2f} GB | {w['tokens:']:.1f} / "
            f"{w['before training:']:.1f} / {warm['seconds']:.0f} s | {warm['peak_gb']:.2f} GB |"
        )
        shutil.rmtree(cache, ignore_errors=True)
    head = (
        "| comparisons | JSONL | prepare | prepare peak | store | cold: ready / first step / 1 step | cold peak | "
        "warm: ready / first step / 1 step | warm peak |\n|---|---|---|---|---|---|---|---|---|"
    )
    save(args.out, "data_scale", head, rows, payload, "data_scale")


if __name__ == "__main__":
    main()
