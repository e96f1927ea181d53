"""Training throughput: rankrm's K-wise step in each batch layout against TRL's RewardTrainer on the C(K,2) pairwise
expansion of the same rankings, in one process, side by side.

Data: synthetic K-wise groups of random token ids, K = 2, 4, 9 completions of C tokens (EOS last) per prompt of P
tokens, P = C/4, C, 4C. Every run trains the same backbone (all but its input embeddings, whose update is a fixed
per-step cost alike for both, unless --train-embeddings; fp32 unless --bf16; no gradient checkpointing; AdamW,
gradient clipping) on the same groups for the same optimizer steps of --groups-per-step prompts:
- rankrm: rankrm.training.loop.backward_step (the trainer's own step: micro-batches of 4096 token slots, the K-wise loss)
  with --layout padded (one row per completion), packed (the prompt forwarded once, rows shared by groups), kv
  (the prompt forwarded once, its keys and values shared by the completions' rows) and auto (the cheapest per
  step by the cost model);
- TRL: trl.RewardTrainer fed every (chosen, rejected) pair of those groups, pre-tokenized (chosen_ids /
  rejected_ids), one group's C(K,2) pairs per forward (per_device_train_batch_size) and --groups-per-step forwards
  accumulated per optimizer step, so a step covers the same comparisons; TRL's own defaults of bf16 and gradient
  checkpointing are turned off to compare like with like.
Time: from the end of the first (warm-up) optimizer step to the end of the last, so it covers collation, forward,
backward and the optimizer, and not loading or data preparation; wall seconds, and the process's CPU seconds (all
its threads) over the same steps, which a loaded machine disturbs less. --repeats R runs every method R times in
rounds (each round every method once, the order rotated from round to round); the figures are medians over the
rounds, the speedups the median of each round's own ratio (paired, as the machine's speed drifts). Peak memory: above the level at the start of each
run (CUDA allocator peak on a GPU; on a CPU the resident set size sampled every 2 ms, after freed heap is returned
to the OS).

The bound: the tokens TRL processes over the tokens rankrm processes for the same groups, 2 C(K,2) (P + C) against
K (P + C) padded or P + K C packed and kv. A layout whose cost is proportional to its tokens reaches it; attention over a
packed row costs more than its tokens and the fixed optimizer step less.

    python -m benchmarks.throughput     # 14 min measured on 2 CPU cores; needs trl (a dev dependency)
    python -m benchmarks.throughput --model DIR --layers 0 --ks 9 --prompt-factors 4 --steps 8 --repeats 3
    python -m benchmarks.throughput --model DIR --ks 2 --prompt-factors 1 --steps 2   # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from math import comb
from pathlib import Path

import torch

from benchmarks._models import bottom_layers
from benchmarks._results import save
from benchmarks._throughput_runs import MICRO_BATCH_TOKENS, PeakMemory, run_rankrm, run_trl, sync, synthetic_groups
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.training.build import disable_dropout

__all__ = ["MICRO_BATCH_TOKENS", "PeakMemory", "sync", "synthetic_groups"]  # other benchmarks import them from here
ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ["padded", "packed", "kv", "auto"]


def measure(model, start_state: dict, tmp: str, steps: list, args, device) -> dict[str, list[dict]]:
    """Each method's runs over the same steps: args.repeats rounds of every rankrm layout and TRL, the order rotated
    by one each round (no method always first or last), rankrm's weights reset before each of its runs."""
    methods = list(args.layouts) + ([] if args.no_trl else ["trl"])
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.repeats):
        for name in methods[r % len(methods) :] + methods[: r % len(methods)]:
            if name == "trl":
                runs[name].append(run_trl(tmp, args.tokenizer, steps, device, args.train_embeddings))
            else:
                model.load_state_dict(start_state)
                runs[name].append(run_rankrm(model, steps, name, device, prefetch=not args.no_prefetch))
    return runs


def summarize(runs: dict[str, list[dict]], tokens: dict[str, int], n_groups: int) -> dict[str, dict]:
    """Per method: wall and CPU seconds, host share as medians over the rounds, the largest peak; its speedups over
    TRL and padded as the median of each round's own ratio (both ran in that round, under the same load)."""

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def paired(name: str, base: str, key: str = "seconds") -> float:
        return statistics.median(b[key] / a[key] for a, b in zip(runs[name], runs[base]))

    out = {}
    for name, rs in runs.items():
        used = "+".join(sorted({u for r in rs for u in r.get("layouts_used", "trl").split("+")}))
        s = {"rounds": len(rs), "seconds": med(name, "seconds"), "cpu_seconds": med(name, "cpu_seconds")}
        s |= {"timed_steps": rs[0]["timed_steps"], "peak_mib": max(r["peak_mib"] for r in rs)}
        if name != "trl":
            s |= {"layouts_used": used, "host_share": med(name, "host_share")}
        s["tokens_per_group"] = tokens.get(used, tokens["padded"])  # a mix of layouts: counted as padded rows
        s["groups_per_s"] = n_groups / s["seconds"]
        s["tokens_per_s"] = s["groups_per_s"] * s["tokens_per_group"]
        if "trl" in runs and name != "trl":
            s["token_ratio_bound"] = tokens["trl"] / s["tokens_per_group"]
            for kind, key in (("", "seconds"), ("cpu_", "cpu_seconds")):
                s[f"{kind}speedup_vs_trl"] = paired(name, "trl", key)
                s[f"{kind}share_of_bound"] = s[f"{kind}speedup_vs_trl"] / s["token_ratio_bound"]
        if "padded" in runs:
            s["vs_padded"] = paired(name, "padded")
        out[name] = s | {"runs": rs}
    return out


def table_row(r: dict) -> str:
    """One method's line of the Markdown table."""
    if "speedup_vs_trl" in r:
        su = (
            f"{r['speedup_vs_trl']:.2f}x | {r['token_ratio_bound']:.2f}x | {100 * r['share_of_bound']:.0f}% | "
            f"{r['cpu_speedup_vs_trl']:.2f}x | {100 * r['cpu_share_of_bound']:.0f}%"
        )
    else:
        su = "- | - | - | - | -"
    shown = f"{r['method']} ({r['layouts_used']})" if r["method"] == "auto" else r["method"]
    host = f"{100 * r['host_share']:.1f}%" if "host_share" in r else "-"
    vs = f"{r['vs_padded']:.2f}" if "vs_padded" in r else "-"
    return (
        f"| {r['K']} | {r['P']} | {r['C']} | {shown} | {r['groups_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
        f"{r['peak_mib']:.0f} | {su} | {vs} | {host} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument(
        "--layers",
        type=int,
        default=4,
        help="keep only the first N transformer layers (0: all); "
        "per-layer costs are the same, so the ratios carry over to the full depth",
    )
    p.add_argument("--completion-tokens", type=int, default=32, help="C")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 9])
    p.add_argument("--prompt-factors", type=float, nargs="+", default=[0.25, 1, 4], help="P / C")
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run, the first one untimed")
    p.add_argument("--bf16", action="store_true", help="bf16 weights on both sides (GPU)")
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="train the input embeddings too (by default "
        "frozen on both sides: their AdamW update is a fixed cost per step, the same for both, which with "
        "4 of 30 layers would weigh several times more than in the full model)",
    )
    p.add_argument("--no-trl", action="store_true", help="rankrm layouts only")
    p.add_argument(
        "--layouts", nargs="+", default=LAYOUTS, choices=LAYOUTS, help="rankrm layouts to run (default: all)"
    )
    p.add_argument(
        "--no-prefetch",
        action="store_true",
        help="plan and collate each step on the critical path (as before training/prefetch.py), to measure it",
    )
    p.add_argument("--attn-implementation", default="sdpa", help="rankrm's attention (sdpa, rankrm_varlen, ...)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="throughput", help="results file stem")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every method (medians; paired ratios)")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model, attn_implementation=args.attn_implementation)
    bottom_layers(model, args.layers)
    disable_dropout(model)
    if not args.train_embeddings:
        model.hf.get_input_embeddings().requires_grad_(False)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model.to(device=device, dtype=dtype).train()
    n_layers = model.hf.config.num_hidden_layers
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    vocab = [i for i in range(100, min(len(tok), 40000)) if i not in special]
    print(
        f"{device} ({torch.get_num_threads()} threads), {Path(args.model).name} first {n_layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {dtype}"
    )

    rows, results = [], []
    load_before = os.getloadavg()[0]  # other work on the machine: stated with the figures
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # TRL trains the same weights, loaded as a plain transformers model
        start_state = {k: v.clone() for k, v in model.state_dict().items()}
        args.tokenizer = tok
        c = args.completion_tokens
        for k in args.ks:
            for f in args.prompt_factors:
                p_len = max(1, round(f * c))
                groups = synthetic_groups(
                    k, p_len, c, args.groups_per_step * args.steps, vocab, tok.eos_token_id, seed=k * 1000 + p_len
                )
                steps = [groups[i : i + args.groups_per_step] for i in range(0, len(groups), args.groups_per_step)]
                n_groups = args.groups_per_step * (args.steps - 1)
                tokens = {
                    "trl": 2 * comb(k, 2) * (p_len + c),
                    "padded": k * (p_len + c),
                    "packed": p_len + k * c,
                    "kv": p_len + k * c,
                }
                runs = summarize(measure(model, start_state, tmp, steps, args, device), tokens, n_groups)
                for name, r in runs.items():
                    line = {"K": k, "P": p_len, "C": c, "method": name, **r}
                    results.append(line)
                    rows.append(table_row(line))
                    print(rows[-1], flush=True)

    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (1-minute)"
    head = (
        f"# Training throughput: rankrm layouts vs TRL RewardTrainer\n\n{device}, {load}, "
        f"{torch.get_num_threads()} threads; {Path(args.model).name}, first {n_layers} layers "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {dtype}, "
        f"{'whole model' if args.train_embeddings else 'all but the input embeddings'} trained, AdamW; {args.groups_per_step} prompts per optimizer step, {args.steps - 1} timed steps after a warm-up "
        f"step. TRL: trl {__import__('trl').__version__ if not args.no_trl else '-'}, the C(K,2) pairs of each "
        f"prompt, one prompt's pairs per forward.\n\n"
        "Tokens per prompt: TRL 2 C(K,2) (P + C); padded K (P + C); packed and kv P + K C. The bound is TRL's tokens "
        "over the layout's; share of bound = speedup / bound. Peak memory: above the level at the run's start. Host share: "
        f"the planning and collating left on the critical path, as a share of the step "
        f"({'inline, --no-prefetch' if args.no_prefetch else 'the next step prefetched by a background thread'}). "
        f"{args.repeats} round(s) of every method, the order rotated from round to round: medians over the rounds; "
        "the speedups the median of the rounds' own ratios, by wall time and by the process's CPU time (all its "
        "threads; less disturbed by other jobs on a loaded machine).\n\n"
        "| K | P | C | method | prompts/s | tokens/s | peak memory (MiB) | speedup vs TRL | token-ratio bound | "
        "share of bound | speedup by CPU time | its share of bound | vs padded | host share |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    save(
        args.out,
        args.name,
        head,
        rows,
        {
            "settings": {n: v for n, v in vars(args).items() if n != "tokenizer"} | {"out": str(args.out)},
            "device": str(device),
            "load_average": [load_before, os.getloadavg()[0]],
            "results": results,
        },
        "throughput",
    )


if __name__ == "__main__":
    main()
