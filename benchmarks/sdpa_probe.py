"""Which attention kernel runs with rankrm's 4D masks, and what FlexAttention's block masks would give.

    python -m benchmarks.sdpa_probe --model DIR [--k 4 --prompt 512 --completion 128] --out DIR

For a packed batch and a kv completion pass built by rankrm.modeling.batch.collate from random groups, at the model's head
shape in bf16 (fp32 on a CPU):
1. each SDPA backend forced in turn (flash, efficient, cudnn, math) with the batch's boolean 4D mask: does it
   accept the mask, and how long one attention call takes (flash takes no arbitrary mask: it is expected to refuse);
2. the kernels SDPA picks by itself in one forward of the whole model over that batch (torch.profiler names);
3. FlexAttention (torch.compile'd) with a block mask made from the same dense mask: its time, and the share of
   (128 x 128) blocks it skips, against SDPA's default choice.
Writes sdpa_probe.json and .md under --out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.throughput import synthetic_groups
from rankrm.modeling.batch import collate
from rankrm.modeling.model import RewardModel


def timed(fn, device, reps: int = 5) -> float:
    """Milliseconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / reps


def backends(q, k, v, mask, device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), device)
            out[name] = {"runs": True, "ms": round(ms, 3)}
        except Exception as e:  # a backend refusing the mask, dtype or device says so here
            out[name] = {"runs": False, "error": str(e).splitlines()[0][:200]}
    out["default"] = {"ms": round(timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), device), 3)}
    return out


def flex(q, k, v, mask, device) -> dict:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        dense = mask[:, 0]  # (B, T, S)

        def mask_mod(b, h, q_idx, kv_idx):
            return dense[b, q_idx, kv_idx]

        block = create_block_mask(mask_mod, dense.shape[0], None, dense.shape[1], dense.shape[2], device=device)
        run = torch.compile(flex_attention)
        ms = timed(lambda: run(q, k, v, block_mask=block), device)
        return {"runs": True, "ms": round(ms, 3), "block_sparsity_percent": round(float(block.sparsity()), 1)}
    except Exception as e:
        return {"runs": False, "error": str(e).splitlines()[0][:200]}


def kernels_of_forward(model, batch, device) -> list[str]:
    """Names of the attention kernels (or CPU ops) that one forward of the model ran."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        model(batch)
    names = {e.key for e in prof.key_averages()}
    keys = ("flash", "fmha", "efficient", "cudnn", "attention", "sdpa", "softmax", "bmm")
    return sorted(n for n in names if any(s in n.lower() for s in keys))[:30]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--completion", type=int, default=128)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = (
        RewardModel.from_pretrained(
            args.model, dtype=dtype, max_length=args.prompt + args.completion + 8, attn_implementation="sdpa"
        )
        .to(device)
        .eval()
    )
    cfg = model.hf.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    tok = model.tokenizer
    groups = synthetic_groups(
        args.k, args.prompt, args.completion, args.groups, list(range(100, 390)), tok.eos_token_id, seed=0
    )
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "heads": heads,
        "head_dim": d,
        "k": args.k,
        "prompt": args.prompt,
        "completion": args.completion,
        "groups": args.groups,
        "layouts": {},
    }
    for layout in ("packed", "kv"):
        b = collate(groups, tok.pad_token_id, layout).to(device)
        mask = b.attention_mask  # (B, 1, T, S) bool
        rows, t, s = mask.shape[0], mask.shape[2], mask.shape[3]
        q = torch.randn(rows, heads, t, d, device=device, dtype=dtype)
        k, v = (torch.randn(rows, heads, s, d, device=device, dtype=dtype) for _ in range(2))
        report["layouts"][layout] = {
            "mask": list(mask.shape),
            "sdpa": backends(q, k, v, mask, device),
            "flex": flex(q, k, v, mask, device),
            "model_forward_kernels": kernels_of_forward(model, b, device),
        }
        print(layout, json.dumps(report["layouts"][layout], indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sdpa_probe.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# SDPA with rankrm's 4D masks: {report['device']}, torch {report['torch']}, {report['dtype']}, "
        f"{heads} heads x {d}, K={args.k}, P={args.prompt}, C={args.completion}, {args.groups} groups",
        "",
        "| layout | mask | flash | efficient | cudnn | math | default | flex (block sparsity) |",
        "|---" * 8 + "|",
    ]
    for layout, r in report["layouts"].items():
        cell = lambda x: f"{x['ms']} ms" if x.get("runs") else "refused"  # noqa: E731
        sd = r["sdpa"]
        fl = r["flex"]
        lines.append(
            f"| {layout} | {r['mask']} | {cell(sd['FLASH_ATTENTION'])} | {cell(sd['EFFICIENT_ATTENTION'])} | "
            f"{cell(sd['CUDNN_ATTENTION'])} | {cell(sd['MATH'])} | {sd['default']['ms']} ms | "
            f"{cell(fl)}{' (' + str(fl['block_sparsity_percent']) + '%)' if fl.get('runs') else ''} |"
        )
    lines += [
        "",
        "Kernels one model forward ran (packed): " + ", ".join(report["layouts"]["packed"]["model_forward_kernels"]),
    ]
    (args.out / "sdpa_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
