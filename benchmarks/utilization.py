"""Utilization: the model FLOP/s of a SmolLM2-135M reward-model training step against this machine's matmul peak,
both measured in the same run, in fp32 and in bf16 autocast.

Peak: the best FLOP/s of square matrix products (2 n^3 FLOPs each) over a few sizes, per dtype. Training step:
rankrm.training.loop.backward_step (the trainer's step: K-wise loss, padded layout, the whole model trained) plus the AdamW
update, on synthetic groups of K completions, timed after a warm-up step. Model FLOPs, as in the PaLM/Chinchilla
convention: 6 x non-embedding parameters x tokens, plus attention 12 x layers x hidden x T^2 per row of T tokens
(forward 4 T^2 d per layer for the scores and the weighted sum, backward twice that). The step's FLOPs are also
counted by torch.utils.flop_counter on one untimed step, as a check of the formula.

    python -m benchmarks.utilization    # 7.6 min measured on 2 CPU cores (bf16 is slow on CPUs without bf16 units)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._results import save
from benchmarks.throughput import MICRO_BATCH_TOKENS, sync, synthetic_groups
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.training.build import disable_dropout
from rankrm.training.loop import backward_step

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(dtype, device, sizes=(512, 1024, 2048), seconds: float = 2.0) -> tuple[float, str]:
    """Best FLOP/s of an n x n x n matrix product over sizes and over the two ways the model's layers can reach
    it (torch.mm, and F.linear, which on CPUs takes oneDNN's path: for bf16 the faster one by far here): (FLOP/s,
    what reached it)."""
    import torch.nn.functional as F

    best = (0.0, "")
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for name, op in (("mm", lambda: a @ b), ("linear", lambda: F.linear(a, b))):
            op()  # warm-up
            sync(device)
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                op()
                reps += 1
            sync(device)
            best = max(best, (2 * n**3 * reps / (time.perf_counter() - t0), f"{name}, n={n}"))
    return best


def model_flops(model: RewardModel, rows: int, length: int) -> float:
    cfg = model.hf.config
    non_embedding = sum(p.numel() for p in model.parameters()) - model.hf.get_input_embeddings().weight.numel()
    return 6 * non_embedding * rows * length + 12 * cfg.num_hidden_layers * cfg.hidden_size * length**2 * rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--tokens", type=int, default=128, help="tokens per completion row (prompt + completion)")
    p.add_argument("--groups", type=int, default=2, help="groups per step")
    p.add_argument("--steps", type=int, default=2, help="timed fp32 steps (after one warm-up step)")
    p.add_argument("--bf16-steps", type=int, default=1, help="timed bf16 steps (slow on CPUs without bf16 units)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model).to(device)
    disable_dropout(model)
    model.train()
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    vocab = [i for i in range(100, min(len(tok), 40000)) if i not in special]
    half = args.tokens // 2
    groups = synthetic_groups(
        args.k,
        half,
        args.tokens - half,
        args.groups * (max(args.steps, args.bf16_steps) + 1),
        vocab,
        tok.eos_token_id,
        seed=0,
    )
    steps = [groups[i : i + args.groups] for i in range(0, len(groups), args.groups)]
    rows = args.groups * args.k
    flops = model_flops(model, rows, args.tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7)
    results, lines = [], []
    for name, bf16 in (("fp32", False), ("bf16", True)):
        peak, n = matmul_peak(torch.bfloat16 if bf16 else torch.float32, device)

        def step(groups):  # the padded layout: the tokens the formula counts
            backward_step(
                model,
                groups,
                1 / len(groups),
                micro_batch_tokens=MICRO_BATCH_TOKENS,
                layout="padded",
                attention_per_token=model.attention_per_token,
                pad_id=tok.pad_token_id,
                bf16=bf16,
            )
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)

        from torch.utils.flop_counter import FlopCounterMode

        if not bf16:
            with FlopCounterMode(display=False) as counter:
                step(steps[0])  # warm-up, and the count of the FLOPs the step really runs (backward_step's matmuls)
            counted = counter.get_total_flops()
        else:
            step(steps[0])  # warm-up; the same matmuls as in fp32
        timed = steps[1 : 1 + (args.bf16_steps if bf16 else args.steps)]
        t0 = time.perf_counter()
        for groups in timed:
            step(groups)
        per_step = (time.perf_counter() - t0) / len(timed)
        achieved = flops / per_step
        r = {
            "precision": name,
            "matmul_peak_flops": peak,
            "peak_reached_by": n,
            "step_seconds": per_step,
            "timed_steps": len(timed),
            "model_flops_per_step": flops,
            "counted_flops_per_step": counted,
            "tokens_per_step": rows * args.tokens,
            "model_flops_per_s": achieved,
            "utilization": achieved / peak,
        }
        results.append(r)
        lines.append(
            f"| {name} | {peak / 1e9:.1f} ({n}) | {len(timed)} | {rows * args.tokens} | {per_step:.2f} | "
            f"{rows * args.tokens / per_step:.0f} | {flops / 1e9:.1f} | {counted / 1e9:.1f} | "
            f"{achieved / 1e9:.1f} | {100 * achieved / peak:.0f}% |"
        )
        print(lines[-1], flush=True)
    head = (
        f"# Utilization of a training step\n\n{device}, {torch.get_num_threads()} threads; "
        f"{Path(args.model).name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), whole "
        f"model trained with AdamW; a step of {args.groups} groups x K={args.k} rows of {args.tokens} tokens "
        f"(padded layout, no padding), timed after a warm-up step.\n\n"
        "Model FLOPs = 6 x non-embedding parameters x tokens + 12 x layers x hidden x T^2 per row; counted = "
        "torch.utils.flop_counter on the same step. Utilization = model FLOP/s over the matmul peak of the same "
        "precision measured in this run.\n\n"
        "| precision | matmul peak (GFLOP/s) | timed steps | tokens per step | seconds per step | tokens/s | model GFLOP per "
        "step | counted GFLOP per step | model GFLOP/s | utilization |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    save(args.out, "utilization", head, lines, {"device": str(device), "results": results}, "utilization")


if __name__ == "__main__":
    main()
