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
backward and the optimizer, and not loading or data preparation. Peak memory: above the level at the start of each
run (CUDA allocator peak on a GPU; on a CPU the resident set size sampled every 2 ms, after freed heap is returned
to the OS).

The bound: the tokens TRL processes over the tokens rankrm processes for the same groups, 2 C(K,2) (P + C) against
K (P + C) padded or P + K C packed and kv. A layout whose cost is proportional to its tokens reaches it; attention over a
packed row costs more than its tokens and the fixed optimizer step less.

    python -m benchmarks.throughput     # 14 min measured on 2 CPU cores; needs trl (a dev dependency)
    python -m benchmarks.throughput --model DIR --ks 2 --prompt-factors 1 --steps 2   # a quick check
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import tempfile
import threading
import time
from math import comb
from pathlib import Path

import torch

from benchmarks._results import save
from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.frozen import layer_stack
from rankrm.modeling.hub import DEFAULT_MODEL
from rankrm.modeling.model import RewardModel
from rankrm.training.build import disable_dropout
from rankrm.training.config import TrainConfig
from rankrm.training.loop import backward_step
from rankrm.training.prefetch import Prefetcher, StepRecipe

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ["padded", "packed", "kv", "auto"]
MICRO_BATCH_TOKENS = TrainConfig(train_data=["synthetic"]).micro_batch_tokens  # `rankrm train`'s default


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at entry, in MiB (self.mib)."""

    def __init__(self, device):
        self.device, self.mib = device, 0.0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so this run's peak shows
            except OSError:
                pass
            self.base = self.peak = self.rss()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self.done.set()
            self.thread.join()
            peak = max(self.peak, self.rss())
        self.mib = (peak - self.base) / 2**20


def synthetic_groups(k: int, p: int, c: int, n: int, vocab: list[int], eos: int, seed: int) -> list[TokenizedGroup]:
    """n groups: a prompt of p random tokens shared by k completions of c tokens (c - 1 random, then EOS), ranked
    in a random order."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.choice(vocab) for _ in range(p)]
        ranks = list(range(k))
        rng.shuffle(ranks)
        out.append(
            TokenizedGroup([prompt + [rng.choice(vocab) for _ in range(c - 1)] + [eos] for _ in range(k)], ranks)
        )
    return out


def run_rankrm(
    model: RewardModel, steps: list[list[TokenizedGroup]], layout: str, device, prefetch: bool = True
) -> dict:
    """The trainer's step over `steps`; with prefetch, each next step planned and collated in the background
    thread as `rankrm train` does (training/prefetch.py). host_share: the planning and collating left on the
    critical path (the wait for the thread, or all of it inline), as a share of the timed steps' time."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    recipe = StepRecipe(MICRO_BATCH_TOKENS, layout, model.attention_per_token, model.tokenizer.pad_token_id)
    ahead = Prefetcher(lambda s: recipe.prepare(steps[s], device), len(steps)) if prefetch else None
    ends, chosen, host = [], set(), []
    with PeakMemory(device) as mem:
        for s, groups in enumerate(steps):
            st = backward_step(
                model,
                groups,
                1 / len(groups),
                micro_batch_tokens=MICRO_BATCH_TOKENS,
                layout=layout,
                attention_per_token=model.attention_per_token,
                pad_id=model.tokenizer.pad_token_id,
                prepared=ahead.get(s) if ahead else None,
            )
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            ends.append(time.perf_counter())
            host.append(st.host_seconds)
            chosen.update(st.layouts)  # the layouts the micro-batches ran in
    del opt
    return {
        "seconds": ends[-1] - ends[0],
        "timed_steps": len(steps) - 1,
        "peak_mib": mem.mib,
        "layouts_used": "+".join(sorted(chosen)),
        "host_share": sum(host[1:]) / (ends[-1] - ends[0]),
    }


def run_trl(model_dir: str, tokenizer, steps: list[list[TokenizedGroup]], device, train_embeddings: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    ends = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync(device)
            ends.append(time.perf_counter())

    k = len(steps[0][0].ids)
    pairs = [
        {"chosen_ids": g.ids[w], "rejected_ids": g.ids[l]}
        for groups in steps
        for g in groups
        for w, l in g.comparisons()
    ]
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    hf.get_input_embeddings().requires_grad_(train_embeddings)
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=comb(k, 2),
            gradient_accumulation_steps=len(steps[0]),
            max_steps=len(steps),
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=False,
            max_length=None,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            logging_steps=10**9,
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
            seed=0,
        )
        trainer = RewardTrainer(
            model=hf, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, callbacks=[Clock()]
        )
        with PeakMemory(device) as mem:
            trainer.train()
    del trainer, hf
    return {"seconds": ends[-1] - ends[0], "timed_steps": len(ends) - 1, "peak_mib": mem.mib}


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
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model, attn_implementation=args.attn_implementation)
    if args.layers:
        name, layers = layer_stack(model.backbone)
        setattr(model.backbone, name, torch.nn.ModuleList(list(layers)[: args.layers]))
        model.hf.config.num_hidden_layers = args.layers
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
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # TRL trains the same weights, loaded as a plain transformers model
        start_state = {k: v.clone() for k, v in model.state_dict().items()}
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
                runs = {}
                for layout in args.layouts:
                    model.load_state_dict(start_state)
                    runs[layout] = run_rankrm(model, steps, layout, device, prefetch=not args.no_prefetch)
                if not args.no_trl:
                    runs["trl"] = run_trl(tmp, tok, steps, device, args.train_embeddings)
                for name, r in runs.items():
                    r["groups_per_s"] = n_groups / r["seconds"]
                    per_group = (
                        tokens[r.get("layouts_used", "trl")]
                        if name != "auto" or "+" not in r["layouts_used"]
                        else tokens["padded"]
                    )
                    r["tokens_per_group"] = per_group
                    r["tokens_per_s"] = r["groups_per_s"] * per_group
                base = runs.get("trl")
                for name, r in runs.items():
                    line = {
                        "K": k,
                        "P": p_len,
                        "C": c,
                        "method": name,
                        **{x: round(v, 4) if isinstance(v, float) else v for x, v in r.items()},
                    }
                    if base is not None and name != "trl":
                        line["speedup_vs_trl"] = r["groups_per_s"] / base["groups_per_s"]
                        line["token_ratio_bound"] = tokens["trl"] / r["tokens_per_group"]
                        line["share_of_bound"] = line["speedup_vs_trl"] / line["token_ratio_bound"]
                    padded = runs.get("padded", r)
                    line["vs_padded"] = r["groups_per_s"] / padded["groups_per_s"]
                    results.append(line)
                    su = (
                        (
                            f"{line['speedup_vs_trl']:.2f}x | {line['token_ratio_bound']:.2f}x | "
                            f"{100 * line['share_of_bound']:.0f}%"
                        )
                        if "speedup_vs_trl" in line
                        else "- | - | -"
                    )
                    shown = f"{name} ({r['layouts_used']})" if name == "auto" else name
                    rows.append(
                        f"| {k} | {p_len} | {c} | {shown} | {r['groups_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                        f"{r['peak_mib']:.0f} | {su} | {line['vs_padded']:.2f} | "
                        + (f"{100 * r['host_share']:.1f}% |" if "host_share" in r else "- |")
                    )
                    print(rows[-1], flush=True)

    head = (
        f"# Training throughput: rankrm layouts vs TRL RewardTrainer\n\n{device}, "
        f"{torch.get_num_threads()} threads; {Path(args.model).name}, first {n_layers} layers "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {dtype}, "
        f"{'whole model' if args.train_embeddings else 'all but the input embeddings'} trained, AdamW; {args.groups_per_step} prompts per optimizer step, {args.steps - 1} timed steps after a warm-up "
        f"step. TRL: trl {__import__('trl').__version__ if not args.no_trl else '-'}, the C(K,2) pairs of each "
        f"prompt, one prompt's pairs per forward.\n\n"
        "Tokens per prompt: TRL 2 C(K,2) (P + C); padded K (P + C); packed and kv P + K C. The bound is TRL's tokens "
        "over the layout's; share of bound = speedup / bound. Peak memory: above the level at the run's start. Host share: "
        f"the planning and collating left on the critical path, as a share of the step "
        f"({'inline, --no-prefetch' if args.no_prefetch else 'the next step prefetched by a background thread'}).\n\n"
        "| K | P | C | method | prompts/s | tokens/s | peak memory (MiB) | speedup vs TRL | token-ratio bound | "
        "share of bound | vs padded | host share |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    save(
        args.out,
        args.name,
        head,
        rows,
        {"settings": vars(args) | {"out": str(args.out)}, "device": str(device), "results": results},
        "throughput",
    )


if __name__ == "__main__":
    main()
