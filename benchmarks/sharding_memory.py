"""Each process's memory under DDP, FSDP2 full shard, FSDP2 shard-grad-op, DeepSpeed ZeRO-2 and ZeRO-3: 2 CPU
processes (gloo) train a random Llama of ~116M parameters for a few steps, against the formula of
docs/several-gpus.md (weights + gradients + AdamW state per recipe, fp32 here).

Each recipe is one `accelerate launch` of `rankrm train` (through this module's --worker, which calls rankrm's own
`train`). In each process a thread samples its resident memory (VmRSS, every 10 ms); the figure is the highest
sample while the optimizer steps run (from the loop's start to its final checkpoint, excluded: loading, where every
process holds the whole backbone before sharding, and the save, where rank 0 gathers the full state, are other
phases, reported separately as the process's overall peak), minus the process's memory just before the model was
built (Python, torch, the libraries, the data). glibc returns freed large blocks at once
(MALLOC_MMAP_THRESHOLD_=131072), so the loaded-then-sharded weights do not linger in the figure.

    python -m benchmarks.sharding_memory                  # writes benchmarks/results/sharding_memory.{json,md}
    python -m benchmarks.sharding_memory --layers 2 --hidden 256 --out /tmp/check   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # name: (Accelerate recipe, bytes per parameter per process as a function of N processes)
    "DDP": ("ddp.yaml", "4 + 4 + 8 = 16 P", lambda n: 16.0),
    "FSDP2 full shard": ("fsdp_full_shard.yaml", "16 P / N", lambda n: 16.0 / n),
    "FSDP2 shard-grad-op": ("fsdp_shard_grad_op.yaml", "4 P + 16 P / N", lambda n: 4 + 16.0 / n),
    "DeepSpeed ZeRO-2": ("deepspeed_zero2.yaml", "4 P + 16 P / N", lambda n: 4 + 16.0 / n),
    "DeepSpeed ZeRO-3": ("deepspeed_zero3.yaml", "16 P / N", lambda n: 16.0 / n),
}


def rss() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args_file: str) -> None:
    """Under accelerate launch: rankrm's train on the given settings, with the memory probes around its phases."""
    import resource

    import torch

    import rankrm.training.loop as loop_module
    import rankrm.training.run as run_module
    from rankrm.training.config import TrainConfig

    spec = json.loads(Path(args_file).read_text())
    probe = {"phase": "start", "baseline": 0, "train_peak": 0}

    def sample() -> None:
        while True:
            if probe["phase"] == "train":
                probe["train_peak"] = max(probe["train_peak"], rss())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    build, loop, checkpoint = run_module.build_model, run_module.loop, loop_module.checkpoint

    def build_model(*a, **kw):
        probe["baseline"] = rss()
        return build(*a, **kw)

    cuda = torch.cuda.is_available()

    def run_loop(*a, **kw):
        probe["phase"] = "train"
        if cuda:  # the GPU's figure: what the allocator held at most while the steps ran (benchmarks/sharding_gpu.py)
            probe["cuda_before"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return loop(*a, **kw)

    def final_checkpoint(*a, **kw):
        if cuda and probe["phase"] == "train":
            probe["cuda_train_peak"] = torch.cuda.max_memory_allocated()
        probe["phase"] = "save"
        return checkpoint(*a, **kw)

    run_module.build_model, run_module.loop, loop_module.checkpoint = build_model, run_loop, final_checkpoint
    run_module.train(TrainConfig(**spec["settings"]))
    rank = int(os.environ.get("RANK", "0"))
    figures = {
        "rank": rank,
        "baseline_mib": probe["baseline"] / 2**20,
        "train_peak_mib": probe["train_peak"] / 2**20,
        "overall_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        figures["cuda_train_peak_mib"] = probe.get("cuda_train_peak", 0) / 2**20
        figures["cuda_before_train_mib"] = probe.get("cuda_before", 0) / 2**20
    Path(spec["out"], f"rank{rank}.json").write_text(json.dumps(figures))


def write_data(d: Path, n: int, seed: int) -> Path:
    """n groups of 2 short completions (the one with more 'good' ranks first)."""
    rng = random.Random(seed)
    words = "the a sky blue is red green cat dog sun moon tree rock fish bird yes no".split()
    path = d / f"groups-{seed}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            comps = [" ".join(["good"] * g + rng.sample(words, 5 - g)) for g in (3, 1)]
            row = {"prompt": [{"role": "user", "content": f"Say something good ({i})."}], "completions": comps}
            f.write(json.dumps({**row, "ranks": [0, 1]}) + "\n")
    return path


def launch(recipe: str, settings: dict, work: Path, n: int, cpu: bool = True) -> list[dict]:
    """One `accelerate launch` of the worker with a shipped recipe on n processes (cpu: CPU processes, gloo; else
    one GPU each, nccl); each process's figures."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({"settings": settings, "out": str(work)}))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **({"ACCELERATE_USE_CPU": "1"} if cpu else {}),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    cmd += [str(ROOT / "configs" / "accelerate" / recipe), "--num_processes", str(n)]
    cmd += ["-m", "benchmarks.sharding_memory", "--worker", str(work / "args.json")]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{recipe} failed:\n{proc.stderr[-3000:]}")
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker)
    from benchmarks._models import tiny_reward_model
    from benchmarks._results import save

    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_reward_model(tmp, a.hidden, a.hidden * 8 // 3, a.layers, 256, 64)
        from safetensors import safe_open

        with safe_open(str(model / "model.safetensors"), "pt") as f:
            params = sum(numel(f.get_slice(k).get_shape()) for k in f.keys())
        train, held = write_data(tmp, 2 * a.steps, 0), write_data(tmp, 2, 1)
        rows, payload = [], {"parameters": params, "processes": a.processes, "steps": a.steps, "recipes": {}}
        n = a.processes
        for name in a.recipes:
            recipe, formula, per_param = RECIPES[name]
            settings = dict(
                model=str(model),
                train_data=[str(train)],
                eval_data=[str(held)],
                output_dir=str(tmp / name),
                max_steps=a.steps,
                batch_size=n,
                max_length=64,
                micro_batch_tokens=128,
                eval_batch_tokens=256,
                eval_steps=0,
                save_steps=0,
                plots=False,
                seed=0,
            )
            t0 = time.time()
            figures = launch(recipe, settings, tmp / f"work-{name}", n)
            shutil.rmtree(tmp / name)  # the model and the final checkpoint: ~2 GB at the default shape
            expected = per_param(n) * params / 2**20
            payload["recipes"][name] = {
                "recipe": recipe,
                "formula": formula,
                "formula_mib": expected,
                "seconds": round(time.time() - t0, 1),
                "processes": figures,
            }
            for f in figures:
                above = f["train_peak_mib"] - f["baseline_mib"]
                rows.append(
                    f"| {name} | {f['rank']} | {formula} = {expected:.0f} | {above:.0f} | {above / expected:.2f} | "
                    f"{f['baseline_mib']:.0f} | {f['overall_peak_mib']:.0f} |"
                )
    payload["seconds"] = round(time.time() - t_all, 1)
    head = (
        f"Peak resident memory per process while training ({params / 1e6:.1f}M parameters, fp32, AdamW, {n} CPU "
        f"processes, {a.steps} steps of {n} groups, micro-batches of 128 tokens; {payload['seconds']:.0f} s in all, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end)\n\n"
        "| recipe | rank | formula (MiB) | measured: training peak above baseline (MiB) | measured / formula | "
        "baseline (MiB) | whole-run peak incl. load and save (MiB) |\n|---|---|---|---|---|---|---|"
    )
    save(a.out, "sharding_memory", head, rows, payload, "sharding_memory")


def numel(shape) -> int:
    """The number of elements of a tensor of this shape (read from a safetensors header, without loading it)."""
    out = 1
    for s in shape:
        out *= s
    return out


if __name__ == "__main__":
    main()
