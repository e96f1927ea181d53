"""LoRA adapters through PEFT, injected in place into the backbone and merged back before saving."""

from __future__ import annotations

from torch import nn

from rankrm.errors import SettingsError


def add_lora(model, r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> list[str]:
    """Inject LoRA adapters into the backbone's `targets` linear layers; freeze the rest but the head.

    Returns the trainable parameter names (adapters and head)."""
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise SettingsError(f"--lora-r must be >= 1, got {r}. Fix: give a rank of 1 or more (e.g. 16)")
    linear = {
        n.rsplit(".", 1)[-1]: type(m).__name__
        for n, m in model.backbone.named_modules()
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
    }  # GPT-2's linear layers are Conv1D
    names = set(linear)
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise SettingsError(
            f"--lora-targets {unknown} are not linear layers of this backbone. Fix: use some of "
            f"{', '.join(sorted(names))}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    conv1d = any(linear[t] == "Conv1D" for t in targets)  # Conv1D stores its weight transposed
    inject_adapter_in_model(
        LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout, fan_in_fan_out=conv1d),
        model.backbone,
    )
    for n, p in model.backbone.named_parameters():
        p.requires_grad_("lora_" in n)
    model.head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def merge_lora(model) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back; returns how many were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged
