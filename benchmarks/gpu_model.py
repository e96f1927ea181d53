"""A backbone in a real model's shape with random weights, written as a Hugging Face directory: no download.

    python -m benchmarks.gpu_model --shape Qwen2.5-1.5B --out DIR [--layers N]

The shapes are the published config.json values (benchmarks/memory_plan.py SHAPES); the tokenizer is the tests' tiny
byte-level BPE (400 tokens), enough for benchmarks that feed random token ids below 400."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.memory_plan import SHAPES

SHAPES = {**SHAPES, "tiny": dict(h=64, L=2, i=128, heads=4, kv=2, vocab=400)}  # for checking the scripts on a CPU


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="Qwen2.5-1.5B", choices=list(SHAPES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, default=0, help="keep only N layers (0: the model's own count)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    s = SHAPES[args.shape]
    tok = build_tokenizer(args.out, chat_template=True, pad_is_eos=False)
    cfg = Qwen2Config(
        hidden_size=s["h"],
        intermediate_size=s["i"],
        num_hidden_layers=args.layers or s["L"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        vocab_size=s["vocab"],
        max_position_embeddings=32768,
        tie_word_embeddings=args.shape != "Qwen2.5-7B",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    lm.save_pretrained(args.out)
    n = sum(p.numel() for p in lm.parameters())
    print(f"{args.shape}: {n / 1e9:.2f}B parameters (bf16, random) written to {args.out}")


if __name__ == "__main__":
    main()
