"""The run's model and loss, built from the TrainConfig: the backbone with its head reading through the run's
encoder (dropout off, the parameters that train chosen, an ensemble's members drawn apart), and the HeadLoss that
holds the ranking objective and the head's terms."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rankrm.data.encode import TextEncoder
from rankrm.modeling.frozen import select_trainable
from rankrm.modeling.heads import HeadSpec, tie_reward_row
from rankrm.modeling.hub import resolve
from rankrm.modeling.lora import add_lora
from rankrm.modeling.model import META_FILE, RewardModel
from rankrm.training.attributes import attribute_head
from rankrm.training.config import TrainConfig
from rankrm.training.data import Data
from rankrm.training.objective import HeadLoss, bootstrap_weights

log = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    """Reward models train without dropout (as TRL's RewardTrainer does by default): the loss compares rewards."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def attribute_head_of(cfg: TrainConfig, data: Data) -> HeadSpec | None:
    """An --attributes run's head (training/attributes.py), chosen from what the training store rates; else None."""
    if not cfg.attributes:
        return None
    return attribute_head(cfg.attributes, cfg.attribute_weights, cfg.ranking_loss_weight, data.train.store.attributes)


def build_model(cfg: TrainConfig, encoder: TextEncoder, head: HeadSpec | None = None) -> tuple[RewardModel, list[str]]:
    """The backbone with a fresh head (`head`, else cfg.head_spec) reading through the run's encoder, dropout off,
    and the parameters that train."""
    fresh = not (Path(resolve(cfg.model)) / META_FILE).is_file()  # an LM, not a saved reward model trained further
    model = RewardModel.from_pretrained(
        cfg.model,
        dtype=torch.bfloat16 if cfg.dtype == "bf16" else torch.float32,
        attn_implementation=cfg.attn_implementation,
        encoder=encoder,
        head=head or cfg.head_spec,
    )
    if fresh:
        init_members(model, cfg.seed)
    tie_reward_row(model.head, model.head_spec)  # an attributes head's weighted reward from the first step
    disable_dropout(model)
    trainable = (
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
        if cfg.lora_r
        else select_trainable(model, cfg.train_layers)
    )
    for p in model.parameters():  # the optimizer's master weights stay fp32 (frozen ones keep the load precision)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.enable_checkpointing()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    what = (
        "the whole model"
        if cfg.train_layers < 0 and not cfg.lora_r
        else f"LoRA adapters (r={cfg.lora_r}, alpha={cfg.lora_alpha}) + head"
        if cfg.lora_r
        else f"the top {cfg.train_layers} layers + final norm + head"
    )
    log.info(
        f"model: {cfg.model} ({type(model.hf).__name__}); training {what}: {n_train / 1e6:.2f}M of "
        f"{n_all / 1e6:.1f}M parameters; max length {cfg.max_length}; weights {cfg.dtype}"
        f"{', bf16 autocast' if cfg.autocast_bf16 else ''}; "
        f"{model.hf.config._attn_implementation} attention; layout {cfg.layout}"
        f"{'; gradient checkpointing' if cfg.gradient_checkpointing else ''}"
    )
    return model, trainable


@torch.no_grad()
def init_members(model: RewardModel, seed: int) -> None:
    """An ensemble's members start apart: member m's row drawn with its own seed (seed, m), as transformers draws a
    fresh head (normal, std initializer_range; bias 0); row 0 is then their mean. Other heads keep their draw."""
    spec, head = model.head_spec, model.head
    if spec.kind != "ensemble":
        return
    std = float(getattr(model.hf.config, "initializer_range", 0.02))
    for m in range(1, spec.num_outputs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + m)
        row = torch.randn(head.in_features, generator=gen, dtype=torch.float32) * std
        head.weight[m] = row.to(head.weight.dtype)
        if head.bias is not None:
            head.bias[m] = 0.0
    tie_reward_row(head, spec)


def objective(cfg: TrainConfig, units: int, spec=None) -> HeadLoss:
    """The run's loss: the ranking objective, the head, an ensemble's bootstrap weights per training unit (drawn
    from the seed), ODIN's weights, an attributes head's two loss weights. spec: the model's head (an attributes
    head is chosen from the data)."""
    spec = spec or cfg.head_spec
    boot = bootstrap_weights(units, cfg.ensemble, cfg.seed) if spec.kind == "ensemble" else None
    return HeadLoss(
        cfg.loss_objective,
        spec,
        boot,
        cfg.length_loss_weight,
        cfg.orthogonal_loss_weight,
        cfg.attribute_loss_weight,
        cfg.ranking_loss_weight,
    )
