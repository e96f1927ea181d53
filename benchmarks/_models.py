"""A small random-weight reward model with SmolLM2's tokenizer, built offline: the benchmarks that measure serving or
streaming (where the model's size is not the point) share it."""

from __future__ import annotations

from pathlib import Path


def tiny_reward_model(
    out: Path, hidden: int, intermediate: int, layers: int, max_positions: int, max_length: int
) -> Path:
    """A Llama of the given shape (seed 0) with SmolLM2-135M-Instruct's tokenizer, saved as a reward model in out/rm."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from rankrm.modeling.hub import DEFAULT_MODEL, resolve
    from rankrm.modeling.model import RewardModel

    tok = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL))  # offline: the GGUF copy, converted once
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out / "lm")
    tok.save_pretrained(out / "lm")
    RewardModel.from_pretrained(str(out / "lm"), max_length=max_length).save_pretrained(out / "rm")
    return out / "rm"


def bottom_layers(model, layers: int) -> None:
    """Keep a RewardModel's first `layers` decoder layers (0: all), as the throughput benchmarks time a cut model."""
    import torch

    from rankrm.modeling.frozen import layer_stack

    if layers:
        name, stack = layer_stack(model.backbone)
        setattr(model.backbone, name, torch.nn.ModuleList(list(stack)[:layers]))
        model.hf.config.num_hidden_layers = layers
