"""Per-GPU memory of a reward-model run for each launch recipe, from the backbone's shape (no weights, no GPU).

    python -m benchmarks.memory_plan            # the memory table of docs/several-gpus.md

Bytes per parameter P (AdamW, fp32 master weights and moments = 12 bytes, as Accelerate / FSDP / DeepSpeed keep them):
  DDP, --dtype fp32 (+ --bf16 autocast): 4 (weights) + 4 (grads) + 12 (master is the weight itself: 8 moments) = 16 P
  DDP, --dtype bf16, --train-layers n: 2 P_frozen + 16 P_trained;  LoRA: 2 P + 16 P_lora
  FSDP FULL_SHARD / ZeRO-3: 16 P / N (+ one gathered layer's bf16 weights and grads)
  FSDP SHARD_GRAD_OP / ZeRO-2: 2 P (bf16 weights whole) + 14 P / N (grads, master, moments sharded)
Activations (bf16, SDPA without the T^2 score matrix) per micro-batch of T tokens: 34 h L T bytes; with
--gradient-checkpointing: 2 h L T + 34 h T (the layer inputs, one layer recomputed at a time). Frozen layers under
the frozen-layer cache keep no activations. CUDA context and allocator slack (~1-2 GiB) are not included."""

from __future__ import annotations

SHAPES = {  # the published configs (config.json) of the Qwen2.5 backbones, untouched
    "Qwen2.5-0.5B": dict(h=896, L=24, i=4864, heads=14, kv=2, vocab=151936),
    "Qwen2.5-1.5B": dict(h=1536, L=28, i=8960, heads=12, kv=2, vocab=151936),
    "Qwen2.5-7B": dict(h=3584, L=28, i=18944, heads=28, kv=4, vocab=152064),
}
GIB = 2**30


def params(h, L, i, heads, kv, vocab) -> tuple[int, int]:
    """(parameters of the reward model: embeddings + layers + norm + scalar head, parameters per layer)."""
    d = h // heads
    layer = (h * h + h) + 2 * (h * kv * d + kv * d) + h * h + 3 * h * i + 2 * h  # q, k, v (biases), o, MLP, 2 norms
    return vocab * h + L * layer + h + h, layer


def table(n_gpus: int = 8, tokens: int = 4096) -> str:
    rows = [
        "| backbone | params | DDP fp32 | DDP bf16, top 4 layers | DDP LoRA r=16 | FSDP full shard / ZeRO-3 | "
        "FSDP grad-op / ZeRO-2 | activations, T=4096 | with checkpointing |",
        "|" + "---|" * 9,
    ]
    for name, s in SHAPES.items():
        p, layer = params(**s)
        top = 4 * layer + s["h"] + s["h"]  # top 4 layers, final norm, head
        d = s["h"] // s["heads"]
        lora = (
            s["L"]
            * 16
            * sum(
                a + b
                for a, b in [
                    (s["h"], s["h"]),
                    (s["h"], s["kv"] * d),
                    (s["h"], s["kv"] * d),
                    (s["h"], s["h"]),
                    (s["h"], s["i"]),
                    (s["h"], s["i"]),
                    (s["i"], s["h"]),
                ]
            )
        )
        act = 34 * s["h"] * s["L"] * tokens
        ckpt = 2 * s["h"] * s["L"] * tokens + 34 * s["h"] * tokens
        cells = [
            16 * p,
            2 * (p - top) + 16 * top,
            2 * p + 16 * lora,
            16 * p / n_gpus + 4 * layer,
            2 * p + 14 * p / n_gpus,
            act,
            ckpt,
        ]
        rows.append(f"| {name} | {p / 1e9:.2f}B | " + " | ".join(f"{c / GIB:.1f}" for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(f"GiB per GPU, {8} GPUs, AdamW, micro-batch 4096 tokens\n")
    print(table())
