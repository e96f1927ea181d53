"""Sharded training on GPUs (benchmarks/gpu.sh's `sharding` stage), random weights in real shapes, no download.

- parity (where the machine has 2 or more GPUs; on a CPU, 2 gloo processes): FSDP2 full shard and DeepSpeed ZeRO-3,
  each `accelerate launch` of the shipped recipe on 2 processes (nccl), train a few steps; their weights are
  compared with one plain process's on the same data and seed, in fp32 and with --dtype bf16. Stated tolerances
  (TOLERANCE): the largest weight difference, and the difference as a fraction of what training changed
  (|w_2 - w_1| / |w_1 - w_0| over all tensors). The run fails past them.
- memory (one GPU): each recipe (DDP, FSDP2 full shard and shard-grad-op, ZeRO-2, ZeRO-3) at 1 process trains the
  model (the 1.5B shape) 2 steps in fp32; MEASURED: the GPU's peak allocated memory while the steps run
  (torch.cuda.max_memory_allocated: all the GPU holds, weights included), next to PREDICTED: the formula of docs/several-gpus.md (weights + gradients + AdamW state per
  recipe: 16 bytes per parameter, some of it / N) at N = 1, 2 and 8. On a CPU the figure is the process's
  resident memory above its baseline (benchmarks/sharding_memory.py), for checking the logic only.

    python -m benchmarks.sharding_gpu --stages parity memory --parity-model DIR --memory-model DIR --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.sharding_memory import RECIPES, launch, numel, write_data

PARITY = {"FSDP2 full shard": "fsdp_full_shard.yaml", "DeepSpeed ZeRO-3": "deepspeed_zero3.yaml"}
# (largest |w_2 - w_1|, |w_2 - w_1| / |w_1 - w_0|): fp32 as the CPU tests hold it (1e-5 after 7 steps), with room
# for nccl's reduction order (SHAPE=tiny on CPU processes measured 2.5e-7 and 6e-6). bf16: the sharded runs
# compute in bf16 from their own gathers (FSDP2: bf16 parameters; ZeRO-3: autocast around fp32 weights, as the one
# process does), so each rounds differently; SHAPE=tiny measured 3.5e-4 and a relative 0.105 (FSDP2) and 0.049
# (ZeRO-3) after 3 steps at a learning rate of 1e-4: the bound is ~2.5 times that, set on a CPU, not yet on a GPU.
# Still caught: a gradient scaled by N (relative ~1), a lost update (1), a process training alone
TOLERANCE = {"fp32": (1e-4, 1e-3), "bf16": (2e-2, 0.25)}


def skipped(name: str) -> bool:
    """A DeepSpeed recipe where deepspeed is not installed (said so, not failed)."""
    if name.startswith("DeepSpeed") and importlib.util.find_spec("deepspeed") is None:
        print(f"{name}: skipped, deepspeed is not installed (pip install deepspeed)")
        return True
    return False


def settings(model: Path, train: Path, held: Path, out: Path, steps: int, batch: int, tokens: int) -> dict:
    """rankrm train's settings for a few steps of the whole model: no evaluation during training, no checkpoint,
    the save at the end."""
    return dict(
        model=str(model),
        train_data=[str(train)],
        eval_data=[str(held)],
        output_dir=str(out),
        max_steps=steps,
        batch_size=batch,
        max_length=tokens,
        micro_batch_tokens=2 * tokens,
        eval_batch_tokens=4 * tokens,
        eval_steps=0,
        save_steps=0,
        learning_rate=1e-4,
        plots=False,
        seed=0,
    )


def compare(start: dict, one: dict, two: dict) -> tuple[float, float]:
    """(the largest |two - one| of any weight, |two - one| / |one - start| over all the trained tensors)."""
    worst, diff, moved = 0.0, 0.0, 0.0
    for n, a in one.items():
        a, b = a.double(), two[n].double()
        worst = max(worst, float((a - b).abs().max()))
        diff += float((a - b).pow(2).sum())
        if n in start and start[n].shape == a.shape:
            moved += float((a - start[n].double()).pow(2).sum())
    return worst, (diff / moved) ** 0.5 if moved else float("inf")


def parity(model: Path, tmp: Path, steps: int, cpu: bool, dtypes: list[str]) -> tuple[list[str], dict, bool]:
    """Each parity recipe on 2 processes against 1 plain process, per dtype; rows, payload, whether all passed."""
    from safetensors.torch import load_file

    train, held = write_data(tmp, 4 * steps, 0), write_data(tmp, 2, 1)
    start = load_file(str(model / "model.safetensors"))
    rows, payload, ok = [], {}, True
    for dtype in dtypes:
        extra = {"dtype": "bf16"} if dtype == "bf16" else {}
        ref = {**settings(model, train, held, tmp / f"one-{dtype}", steps, 4, 64), **extra}
        launch("ddp.yaml", ref, tmp / f"work-one-{dtype}", 1, cpu)
        one = load_file(str(tmp / f"one-{dtype}" / "model.safetensors"))
        for name, recipe in PARITY.items():
            if skipped(name):
                continue
            out = tmp / f"two-{recipe}-{dtype}"
            t0 = time.time()
            launch(recipe, {**ref, "output_dir": str(out)}, tmp / f"work-{recipe}-{dtype}", 2, cpu)
            worst, rel = compare(start, one, load_file(str(out / "model.safetensors")))
            max_abs, max_rel = TOLERANCE[dtype]
            passed = worst <= max_abs and rel <= max_rel
            ok = ok and passed
            payload[f"{name} {dtype}"] = {"max_abs": worst, "relative": rel, "tolerance": [max_abs, max_rel]}
            rows.append(
                f"| {name} | {dtype} | {worst:.2e} (<= {max_abs:g}) | {rel:.2e} (<= {max_rel:g}) | "
                f"{'ok' if passed else 'FAILED'} | {time.time() - t0:.0f} |"
            )
            shutil.rmtree(out)
    return rows, payload, ok


def memory(model: Path, tmp: Path, steps: int, cpu: bool, tokens: int) -> tuple[list[str], dict]:
    """Each recipe at 1 process: the measured per-GPU peak against the formula at N = 1, 2, 8."""
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        params = sum(numel(f.get_slice(k).get_shape()) for k in f.keys())
    train, held = write_data(tmp, steps, 0), write_data(tmp, 2, 1)
    rows, payload = [], {"parameters": params}
    for name, (recipe, formula, per_param) in RECIPES.items():
        if skipped(name):
            continue
        out = tmp / f"mem-{recipe}"
        figures = launch(
            recipe, settings(model, train, held, out, steps, 1, tokens), tmp / f"work-mem-{recipe}", 1, cpu
        )
        f = figures[0]
        measured = f["cuda_train_peak_mib"] if not cpu else f["train_peak_mib"] - f["baseline_mib"]
        predicted = {n: per_param(n) * params / 2**20 for n in (1, 2, 8)}
        payload[name] = {"recipe": recipe, "formula": formula, "measured_mib": measured, "predicted_mib": predicted}
        rows.append(
            f"| {name} | {measured:.1f} | {formula} | "
            + " | ".join(f"{predicted[n]:.1f}" for n in (1, 2, 8))
            + f" | {measured / predicted[1]:.2f} |"
        )
        shutil.rmtree(out, ignore_errors=True)
    return rows, payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="*", default=["parity", "memory"], choices=["parity", "memory"])
    ap.add_argument("--parity-model", type=Path)
    ap.add_argument("--memory-model", type=Path)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(TOLERANCE))
    ap.add_argument("--memory-tokens", type=int, default=256, help="max length of the memory stage's rows")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from benchmarks._results import save

    cpu, gpus = not torch.cuda.is_available(), torch.cuda.device_count()
    where = "CPU processes (gloo): checks the logic only" if cpu else f"{gpus} x {torch.cuda.get_device_name()}"
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "parity" in a.stages and (cpu or gpus >= 2):
            rows, payload, ok = parity(a.parity_model, tmp, a.steps, cpu, a.dtypes)
            head = (
                f"2 processes against 1 on {where}: {a.parity_model.name}, {a.steps} steps of 4 groups, the whole "
                f"model trained; MEASURED\n\n| recipe | dtype | max abs weight difference | difference / training "
                "change | parity | seconds |\n|---|---|---|---|---|---|"
            )
            save(a.out, "sharding_parity", head, rows, payload, "sharding_gpu")
        elif "parity" in a.stages:
            print(f"sharding parity: skipped, it needs 2 GPUs ({gpus} here)")
        if "memory" in a.stages:
            rows, payload = memory(a.memory_model, tmp, 2, cpu, a.memory_tokens)
            n = payload["parameters"]
            what = "resident memory above the baseline (CPU)" if cpu else "torch.cuda.max_memory_allocated"
            head = (
                f"Per-process peak memory while training, 1 process per recipe on {where}: {n / 1e6:.1f}M "
                f"parameters, fp32, AdamW, 2 steps of 1 group. MEASURED: {what} at N = 1; PREDICTED: the formula "
                "(weights + gradients + AdamW state, docs/several-gpus.md) at N = 1, 2, 8, not measured\n\n"
                "| recipe | measured at N=1 (MiB) | formula | predicted N=1 (MiB) | predicted N=2 | predicted N=8 | "
                "measured / predicted N=1 |\n|---|---|---|---|---|---|---|"
            )
            save(a.out, "sharding_memory_gpu", head, rows, payload, "sharding_gpu")
    if not ok:
        raise SystemExit(f"sharding parity failed: see {a.out / 'sharding_parity.md'}")


if __name__ == "__main__":
    main()
