"""The cost model of `--layout auto`, batch by batch: for batches of several shapes (K completions, prompt P and
completion C tokens), each layout's predicted cost (planning.batch_cost, token slots plus weighted attention) next to
its measured forward + backward time on this machine, the layout auto picks, and whether it was the fastest.

    python -m benchmarks.layout_choice [--shape Qwen2.5-0.5B --layers 1 --reps 5]

Random weights in a real backbone's shape (benchmarks/gpu_model.py, no download), fp32 on a CPU, one step's groups
in one pass (the micro-batch budget set above the batch), the median of --reps timed passes after a warm-up."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._results import save
from benchmarks._throughput_runs import synthetic_groups
from rankrm.modeling.model import RewardModel
from rankrm.modeling.planning import batch_cost, choose_layout
from rankrm.training.build import disable_dropout
from rankrm.training.loop import backward_step

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("padded", "packed", "kv")
SHAPES = [(k, p, c) for k in (2, 4, 9) for p, c in ((16, 64), (64, 64), (256, 32))]  # (K, P, C)


def timed(model: RewardModel, groups, layout: str, reps: int) -> float:
    """Median seconds of one forward + backward over the groups in one pass of this layout."""
    kw = dict(
        micro_batch_tokens=10**7,
        layout=layout,
        attention_per_token=model.attention_per_token,
        pad_id=model.tokenizer.pad_token_id,
    )
    backward_step(model, groups, 1 / len(groups), **kw)  # warm-up
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        backward_step(model, groups, 1 / len(groups), **kw)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="Qwen2.5-0.5B")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--groups", type=int, default=4, help="groups per batch")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.gpu_model", "--shape", args.shape, "--out", tmp]
        subprocess.run([*cmd, "--layers", str(args.layers)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        model = RewardModel.from_pretrained(tmp)
    disable_dropout(model)
    model.hf.get_input_embeddings().requires_grad_(False)
    model.train()
    eos, apt = model.tokenizer.eos_token_id, model.attention_per_token
    rows, payload, right = [], [], 0
    for k, prompt, completion in SHAPES:
        groups = synthetic_groups(k, prompt, completion, args.groups, list(range(10, 390)), eos, seed=k + prompt)
        pick = choose_layout(groups, "auto", apt)
        cost = {how: batch_cost(groups, how, apt) for how in LAYOUTS}
        secs = {how: timed(model, groups, how, args.reps) for how in LAYOUTS}
        fastest = min(secs, key=secs.get)
        right += pick == fastest
        for how in LAYOUTS:
            rows.append(
                f"| {k} | {prompt} | {completion} | {how} | {cost[how] / cost['padded']:.2f} | {secs[how] * 1e3:.1f} "
                f"| {secs[how] / secs['padded']:.2f} | {'**' + pick + '**' if how == pick else ''} "
                f"| {'yes' if how == fastest else ''} |"
            )
        payload.append(
            dict(k=k, prompt=prompt, completion=completion, pick=pick, fastest=fastest, cost=cost, secs=secs)
        )
        print(f"K={k} P={prompt} C={completion}: auto picks {pick}, fastest {fastest}", flush=True)
    load = os.getloadavg()[0]
    head = (
        "# The cost model's layout choice per batch (`--layout auto`), predicted against measured\n\n"
        f"{args.shape} shape, first {args.layers} layer(s), random weights, fp32 on a CPU ({torch.get_num_threads()} "
        f"threads), {args.groups} groups per batch in one pass, forward + backward, median of {args.reps} after a "
        f"warm-up; load average {load:.1f} at the end. Predicted: planning.batch_cost relative to padded; measured: "
        f"milliseconds and relative to padded. auto picked the fastest layout in {right} of {len(SHAPES)} batches.\n\n"
        "| K | P | C | layout | predicted (vs padded) | measured ms | measured (vs padded) | auto's pick | fastest |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    save(args.out, "layout_choice", head, rows, {"batches": payload, "load": load}, "layout_choice")


if __name__ == "__main__":
    main()
