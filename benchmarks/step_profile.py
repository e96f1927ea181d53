"""Where a training step's time goes: rankrm's step in each layout and TRL's RewardTrainer on the C(K,2) pairwise
expansion, in throughput.py's setting (same model, groups and optimizer), under torch.profiler.

Each aten op's self CPU time over the steps, summed into categories by the op's name (attention kernels, matmuls,
the kv layout's prompt gather and concatenation, copies, mask building, elementwise ops and reductions, the
optimizer's), plus the rest of the step (Python, transformers' modules, autograd's engine): per optimizer step, and
per token the token-ratio bound counts (TRL 2 C(K,2) (P + C) a prompt, padded K (P + C), packed and kv P + K C), so
a layout's cost per token reads against TRL's. rankrm's micro-batches are planned and collated before the profile
(the step's host work, 0-5% of it, is throughput.py's host share); TRL's steps include its own data collation. The
profiler adds a few microseconds per op: the figures are shares, not the unprofiled step time.

    python -m benchmarks.step_profile --model DIR --layers 0 --k 9 --prompt-factor 4 --steps 8
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from math import comb
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._models import bottom_layers
from benchmarks._results import save
from benchmarks._throughput_runs import MICRO_BATCH_TOKENS, run_trl, synthetic_groups
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.training.build import disable_dropout
from rankrm.training.loop import backward_step
from rankrm.training.prefetch import StepRecipe

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [  # (name, regex on the aten op's name), first match wins
    ("attention kernels (forward + backward)", r"scaled_dot_product|_efficient_attention|flash_attention"),
    ("matmuls", r"^aten::(mm|addmm|bmm|matmul|baddbmm)$"),
    ("optimizer (AdamW, clipping)", r"^aten::(_foreach_\w+|lerp_|addcmul_|addcdiv_|sqrt|linalg_vector_norm|norm)$"),
    ("kv prompt gather, concatenation", r"^aten::(index_select|index_add_|scatter_add_|cat|index|index_put_)$"),
    ("copies (contiguous, repeat_kv, to)", r"^aten::(copy_|clone|_to_copy)$"),
    (
        "mask building, zero fills",
        r"^aten::(where|bitwise_\w+|logical_\w+|eq|ne|ge|le|lt|gt|fill_|zero_|masked_fill_?)$",
    ),
    ("reductions (sum, mean)", r"^aten::(sum|mean)$"),
    (
        "elementwise (norms, RoPE, SiLU, residuals)",
        r"^aten::(mul|add|add_|sub|div|pow|rsqrt|silu|silu_backward|neg|"
        r"cos|sin|exp|log|sigmoid|mul_|div_|neg_|log_sigmoid_\w+|softplus|tanh|gelu\w*|embedding\w*)$",
    ),
]
OTHER_OPS = "other aten ops (views, allocation, dispatch)"
REST = "rest of the step (Python, modules, autograd engine)"


def categorize(prof, wall_ms: float, steps: int) -> dict[str, float]:
    """ms per step in each category; REST: the wall time the aten ops do not account for."""
    out = {name: 0.0 for name, _ in CATEGORIES} | {OTHER_OPS: 0.0}
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        name = next((n for n, rx in CATEGORIES if re.search(rx, e.key)), OTHER_OPS)
        out[name] += e.self_cpu_time_total / 1000 / steps
    out[REST] = max(0.0, wall_ms / steps - sum(out.values()))
    return out


def profile_rankrm(model, steps, layout: str, device) -> tuple[dict[str, float], str]:
    """The trainer's step (backward_step, clipping, AdamW) over prepared micro-batches, its first step untimed."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    recipe = StepRecipe(MICRO_BATCH_TOKENS, layout, model.attention_per_token, model.tokenizer.pad_token_id)
    prepared = [recipe.prepare(groups, device) for groups in steps]

    def step(s: int):
        st = backward_step(
            model,
            steps[s],
            1 / len(steps[s]),
            micro_batch_tokens=MICRO_BATCH_TOKENS,
            layout=layout,
            attention_per_token=model.attention_per_token,
            pad_id=model.tokenizer.pad_token_id,
            prepared=prepared[s],
        )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return st

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        used = {how for s in range(1, len(steps)) for how in step(s).layouts}
        wall = (time.perf_counter() - t0) * 1000
    return categorize(prof, wall, len(steps) - 1), "+".join(sorted(used))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--completion-tokens", type=int, default=32, help="C")
    p.add_argument("--prompt-factor", type=float, default=4, help="P / C")
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps, the first one untimed for rankrm")
    p.add_argument("--layouts", nargs="+", default=["padded", "packed", "kv"])
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="step_profile")
    args = p.parse_args()

    device = torch.device("cpu")  # the profile reads CPU op times
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model, attn_implementation=args.attn_implementation)
    bottom_layers(model, args.layers)
    disable_dropout(model)
    model.hf.get_input_embeddings().requires_grad_(False)
    model.train()
    tok, k, c = model.tokenizer, args.k, args.completion_tokens
    p_len = max(1, round(args.prompt_factor * c))
    vocab = [i for i in range(100, min(len(tok), 40000)) if i not in set(tok.all_special_ids)]
    groups = synthetic_groups(k, p_len, c, args.groups_per_step * args.steps, vocab, tok.eos_token_id, k * 1000 + p_len)
    steps = [groups[i : i + args.groups_per_step] for i in range(0, len(groups), args.groups_per_step)]
    per_group = {
        "trl": 2 * comb(k, 2) * (p_len + c),
        "padded": k * (p_len + c),
        "packed": p_len + k * c,
        "kv": p_len + k * c,
    }
    cols: dict[str, dict[str, float]] = {}
    load = os.getloadavg()[0]  # other work on the machine, stated with the figures
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        start = {n: v.clone() for n, v in model.state_dict().items()}
        for layout in args.layouts:
            model.load_state_dict(start)
            cats, used = profile_rankrm(model, steps, layout, device)
            cols[f"{layout} ({used})" if layout == "auto" else layout] = cats | {
                "tokens": per_group.get(used, per_group["padded"])
            }
        if not args.no_trl:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                run_trl(tmp, tok, steps, device, False)
                wall = (time.perf_counter() - t0) * 1000
            cols["trl"] = categorize(prof, wall, len(steps)) | {"tokens": per_group["trl"]}
    names = list(cols)
    rows = []
    for cat in [n for n, _ in CATEGORIES] + [OTHER_OPS, REST, "total"]:
        cells = []
        for m in names:
            col = cols[m]
            ms = sum(v for n, v in col.items() if n != "tokens") if cat == "total" else col[cat]
            cells.append(f"{ms:.1f} | {1e6 * ms / (col['tokens'] * args.groups_per_step):.0f}")
        rows.append(f"| {cat} | " + " | ".join(cells) + " |")
    counted = ", ".join(f"{m}: {cols[m]['tokens']}" for m in names)
    head = (
        f"# Where a training step's time goes (torch.profiler, self CPU time)\n\ncpu (load average {load:.1f} "
        f"at the start, {os.getloadavg()[0]:.1f} at the end), {torch.get_num_threads()} "
        f"thread(s); {Path(args.model).name}, {model.hf.config.num_hidden_layers} layers; K = {k}, P = {p_len}, "
        f"C = {c}, {args.groups_per_step} prompts a step, {args.steps} steps (rankrm: the last {args.steps - 1}); "
        f"{args.attn_implementation}. Per method: ms per optimizer step | ns per token the bound counts "
        f"({counted} tokens a prompt).\n\n"
        "| category | " + " | ".join(f"{m} ms/step | {m} ns/token" for m in names) + " |\n"
        "| --- |" + " --- | --- |" * len(names)
    )
    save(
        args.out,
        args.name,
        head,
        rows,
        {"settings": vars(args) | {"out": str(args.out)}, "methods": cols},
        "step_profile",
    )


if __name__ == "__main__":
    main()
