"""Long prompts: peak memory and time of one training step at 2k, 4k and 8k tokens per group (K = 4 completions
sharing one long prompt, the packed layout), with and without gradient checkpointing, on a small random Llama on
CPU, against the activation formula of docs/several-gpus.md.

The formula (bf16 on GPUs): activations 34 h L T bytes per micro-batch of T tokens without checkpointing, about
2 h L T + 34 h T with it; fp32 doubles both. It leaves out the attention mask a dense-mask layout carries, a
(1, 1, T, T) bool tensor per packed row (T^2 bytes, 64 MiB at 8k) and whatever SDPA derives from it per layer.

    python -m benchmarks.long_prompts            # about 5 minutes on a loaded 2-core CPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._results import save
from benchmarks.throughput import PeakMemory, synthetic_groups
from rankrm.modeling.model import RewardModel
from rankrm.training.build import disable_dropout
from rankrm.training.loop import backward_step

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, h: int, layers: int) -> Path:
    """A random Llama of hidden size h (4 heads of h / 4, MLP 4h) with the tests' tiny tokenizer."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out, chat_template=True, pad_is_eos=False)
    cfg = LlamaConfig(
        hidden_size=h,
        intermediate_size=4 * h,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=400,
        max_position_embeddings=16384,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def step(model: RewardModel, tokens: int, k: int, checkpointing: bool) -> dict:
    """One packed step over one group of `tokens` tokens: a prompt of 3/4 of them, k completions sharing the rest."""
    c = tokens // (4 * k)
    p = tokens - k * c
    groups = synthetic_groups(k, p, c, 1, list(range(100, 400)), model.tokenizer.eos_token_id, seed=tokens)
    if checkpointing:
        model.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.hf.gradient_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    with PeakMemory(torch.device("cpu")) as mem:
        t0 = time.perf_counter()
        backward_step(
            model,
            groups,
            1.0,
            micro_batch_tokens=tokens,
            layout="packed",
            attention_per_token=model.attention_per_token,
            pad_id=model.tokenizer.pad_token_id,
            kv=False,
        )
        seconds = time.perf_counter() - t0
    return {"P": p, "C": c, "seconds": seconds, "peak_mib": mem.mib}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = RewardModel.from_pretrained(str(build(Path(tmp), args.hidden, args.layers)), max_length=16384)
    disable_dropout(model)
    model.float().train()
    h, L = args.hidden, args.layers
    step(model, 256, args.k, False)  # warm-up
    rows, results = [], []
    for t in args.tokens:
        for gc in (False, True):
            r = step(model, t, args.k, gc)
            formula = (2 * h * L * t + 34 * h * t if gc else 34 * h * L * t) * 2 / 2**20  # fp32: twice bf16's
            mask = t * t / 2**20
            results.append({"tokens": t, "checkpointing": gc, **r, "formula_mib": formula, "mask_mib": mask})
            rows.append(
                f"| {t} | {r['P']} | {r['C']} | {'on' if gc else 'off'} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
                f"{formula:.0f} | {mask:.0f} |"
            )
            print(rows[-1], flush=True)
    head = (
        f"# Long prompts: gradient checkpointing at 2k-8k tokens\n\ncpu, {torch.get_num_threads()} threads; a random "
        f"Llama, hidden {h}, {L} layers, fp32; one group of K = {args.k} completions per step, the packed layout "
        "(one row: the prompt once, then each completion), all parameters trained. Peak: RSS above the level at "
        "the step's start. Formula: docs/several-gpus.md's activations, doubled for fp32 (34 h L T bytes; with "
        "checkpointing 2 h L T + 34 h T). Mask: the packed row's (T, T) bool mask, which the formula leaves out.\n\n"
        "| tokens T | P | C | checkpointing | seconds | peak MiB | formula MiB | mask MiB |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    payload = {"settings": vars(args) | {"out": str(args.out)}, "results": results}
    save(args.out, "long_prompts", head, rows, payload, "long_prompts")


if __name__ == "__main__":
    main()
