"""Every layout with every attention function that runs it: parity against the padded SDPA layout first, then time.

    python -m benchmarks.attention --model DIR [--ks 4 9 --prompt 512 --completion 128 --groups 4] --out DIR

For each K, random groups (a prompt of P tokens shared by K completions of C tokens), and each (layout, attention)
of padded/packed/kv x sdpa/rankrm_varlen:
1. parity: the rewards and the gradient of one K-wise loss in the run's dtype (bf16 on a GPU, fp32 on a CPU) against
   the padded SDPA layout in fp32. Tolerance: fp32, |reward difference| <= 1e-4 and gradient relative error <= 1e-4;
   bf16, at most twice the padded SDPA layout's own bf16 error plus 1e-3 (bf16 rounding is the floor, so a
   function passes when it adds no error of its own). Any failure: the table says FAIL and the script exits 1
   before timing anything.
2. time: a forward and backward pass, best of --reps after a warm-up; tokens/s over real tokens; peak memory; the
   kernel rankrm_varlen ran (flash_attn, torch_varlen or sdpa_emulation) and the attention pairs each computes.
Writes attention.json and attention.md under --out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks._results import save
from benchmarks.throughput import synthetic_groups
from rankrm.loss import group_stats
from rankrm.modeling.attention import kernel_name
from rankrm.modeling.batch import collate
from rankrm.modeling.model import RewardModel, batch_rewards

CASES = [(lay, attn) for attn in ("sdpa", "rankrm_varlen") for lay in ("padded", "packed", "kv")]


def load(path: str, attn: str, dtype, device) -> RewardModel:
    """The model with a fixed head (seed 0), dropout off, in dtype on device."""
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(path, attn_implementation=attn, dtype=dtype)
    torch.manual_seed(0)
    torch.nn.init.normal_(m.head.weight, std=0.02)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    return m.to(device).train()


def step(model: RewardModel, groups, layout: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """One forward and backward pass: (rewards, the flat gradient, the batch)."""
    device = next(model.parameters()).device
    b = collate(groups, model.tokenizer.pad_token_id, layout, dense_mask=not model.segment_aware).to(device)
    model.zero_grad(set_to_none=True)
    r = batch_rewards(model, b)
    group_stats(r, b.ranks, b.group_index, b.num_groups).loss.mean().backward()
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return r.detach().float(), grad, b


def errors(r, g, ref_r, ref_g) -> tuple[float, float]:
    """Max |reward difference| and the gradient's relative L2 error against the reference."""
    return (r - ref_r).abs().max().item(), ((g - ref_g).norm() / ref_g.norm()).item()


def timed(model, groups, layout, reps: int, device) -> float:
    """Seconds of the best forward + backward pass of reps, after one warm-up."""
    best = float("inf")
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, groups, layout)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def run_k(args, k: int, device, dtype) -> tuple[list[dict], bool]:
    """The parity rows, then (when all pass) the timings, of one K."""
    ref = load(args.model, "sdpa", torch.float32, device)
    special = set(ref.tokenizer.all_special_ids)
    vocab = [i for i in range(len(ref.tokenizer)) if i not in special]
    groups = synthetic_groups(k, args.prompt, args.completion, args.groups, vocab, ref.tokenizer.eos_token_id, 0)
    ref_r, ref_g, _ = step(ref, groups, "padded")
    del ref
    models = {attn: load(args.model, attn, dtype, device) for attn in ("sdpa", "rankrm_varlen")}
    floor = errors(*step(models["sdpa"], groups, "padded")[:2], ref_r, ref_g)
    rows, ok = [], True
    for layout, attn in CASES:
        r, g, b = step(models[attn], groups, layout)
        err = errors(r, g, ref_r, ref_g)
        tol = (1e-4, 1e-4) if dtype == torch.float32 else (2 * floor[0] + 1e-3, 2 * floor[1] + 1e-3)
        passed = err[0] <= tol[0] and err[1] <= tol[1]
        ok &= passed
        pairs = b.segments.pairs + (b.prompt.segments.pairs if b.prompt is not None else 0)
        dense = b.input_ids.shape[0] * b.input_ids.shape[1] ** 2
        if b.prompt is not None:
            dense = b.input_ids.numel() * (b.prompt.input_ids.shape[1] + b.input_ids.shape[1])
            dense += b.prompt.input_ids.shape[0] * b.prompt.input_ids.shape[1] ** 2
        kernel = kernel_name(torch.empty(0, device=device, dtype=dtype)) if attn == "rankrm_varlen" else "sdpa"
        rows.append(
            dict(k=k, layout=layout, attention=attn, kernel=kernel, reward_err=err[0], grad_rel_err=err[1],
                 reward_tol=tol[0], grad_tol=tol[1], parity="ok" if passed else "FAIL", tokens=b.real_tokens,
                 slots=b.slots, pairs=pairs if attn == "rankrm_varlen" else dense)
        )  # fmt: skip
    if ok:
        for row in rows:
            model = models[row["attention"]]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sec = timed(model, groups, row["layout"], args.reps, device)
            row.update(ms=1000 * sec, tokens_per_s=row["tokens"] / sec)
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return rows, ok


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--ks", type=int, nargs="+", default=[4, 9])
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--completion", type=int, default=128)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows, ok = [], True
    for k in args.ks:
        got, passed = run_k(args, k, device, dtype)
        rows += got
        ok &= passed
    head = (
        f"Attention per layout on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {dtype}, "
        f"P = {args.prompt}, C = {args.completion}, {args.groups} groups; parity against padded SDPA in fp32\n\n"
        "| K | layout | attention | kernel | reward err (tol) | grad rel err (tol) | parity | pairs | ms | tokens/s | "
        "peak MiB |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['k']} | {r['layout']} | {r['attention']} | {r['kernel']} | {r['reward_err']:.2e} ({r['reward_tol']:.0e})"
        f" | {r['grad_rel_err']:.2e} ({r['grad_tol']:.0e}) | {r['parity']} | {r['pairs']} | "
        f"{r.get('ms', float('nan')):.1f} | {r.get('tokens_per_s', float('nan')):.0f} | {mib(r.get('peak_mib'))} |"
        for r in rows
    ]
    save(args.out, "attention", head, lines, {"rows": rows, "parity": ok}, "attention")
    if not ok:
        print("parity FAILED: nothing was timed for that K", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
