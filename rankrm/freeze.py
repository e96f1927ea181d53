"""Training only the top layers: which parameters train, and a cache that runs the frozen layers once per sequence."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def layer_stack(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's list of transformer blocks (model.layers, transformer.h, ...): its largest ModuleList."""
    lists = [(n, m) for n, m in backbone.named_children() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(backbone).__name__} has no list of layers; use --train-layers -1")
    return max(lists, key=lambda nm: len(nm[1]))


def after_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's modules registered after its blocks: the final norm (Llama: norm, GPT-2: ln_f), ..."""
    name, _ = layer_stack(backbone)
    names = [n for n, _ in backbone.named_children()]
    return [getattr(backbone, n) for n in names[names.index(name) + 1:]]


def select_trainable(model, train_layers: int) -> list[str]:
    """Freeze all but the top `train_layers` blocks, what follows them (final norm) and the head; -1 keeps all."""
    if train_layers < 0:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    backbone = model.backbone
    _, layers = layer_stack(backbone)
    if train_layers > len(layers):
        raise ValueError(f"--train-layers {train_layers} exceeds the backbone's {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(layers)[len(layers) - train_layers:]:
        block.requires_grad_(True)
    for module in after_layers(backbone):
        module.requires_grad_(True)
    model.head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


class FrozenPrefix:
    """The hidden states entering the first trainable layer, kept per sequence.

    When only the top N layers train, everything below them computes the same thing at every epoch. The first
    pass over a sequence records the input of the first trainable layer (a forward pre-hook); later passes hand
    that input straight to it, with the layer list cut to the top N, so the frozen layers are not run again.
    Works for backbones that loop over their layer list and pass the hidden states first (Llama, Qwen2, Mistral,
    GPT-2, ...); `train.py` checks the replay against a full forward once and turns the cache off on mismatch."""

    def __init__(self, backbone: nn.Module, train_layers: int):
        self.backbone = backbone
        self.name, layers = layer_stack(backbone)
        n = len(layers)
        self.top = nn.ModuleList(list(layers)[n - train_layers:])
        if train_layers > 0:
            self.entry = layers[n - train_layers]
        else:  # head only: resume at the module after the blocks (the final norm)
            after = after_layers(backbone)
            if not after:
                raise ValueError("no module follows the layer list")
            self.entry = after[0]
        self.store: dict = {}

    def has(self, keys) -> bool:
        return all(k in self.store for k in keys)

    @contextlib.contextmanager
    def capture(self, pieces):
        """Record the entry input of each piece (row, spans, key) of the batch under its key: the sequence's states
        gathered from its (start, length) spans of the row."""
        def hook(module, args):
            h = args[0].detach()  # (B, T, H)
            for row, spans, key in pieces:
                self.store[key] = torch.cat([h[row, s:s + n] for s, n in spans]).to("cpu", copy=True)
        handle = self.entry.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def batch(self, pieces, shape: tuple[int, int], device, dtype=None) -> torch.Tensor:
        """The recorded inputs of the pieces put back where they sit in the (B, T) batch, zeros elsewhere: (B, T, H)."""
        first = self.store[pieces[0][2]]
        out = torch.zeros((*shape, first.shape[-1]), dtype=dtype or first.dtype)
        for row, spans, key in pieces:
            h, at = self.store[key], 0
            for s, n in spans:
                out[row, s:s + n] = h[at:at + n]
                at += n
        return out.to(device)

    @contextlib.contextmanager
    def replay(self, prefix: torch.Tensor):
        """Run only the top layers: the layer list is cut to them and the entry's input replaced by `prefix`."""
        def hook(module, args):
            return (prefix.to(args[0].dtype),) + tuple(args[1:])
        full = getattr(self.backbone, self.name)
        setattr(self.backbone, self.name, self.top)
        handle = self.entry.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()
            setattr(self.backbone, self.name, full)

    def forward(self, model, batch: dict) -> torch.Tensor:
        """Rewards for a batch: replayed from the cache when every sequence in it is there, else a full forward that
        fills the cache. Sequences are keyed by their tokens (batch["pieces"]): the cache is content-addressed and
        holds each (prompt + completion) row, whether it ran as a padded row or inside a packed one (the states of a
        packed row's shared prefix and of a completion's tail are those of its own padded row), so a sequence seen
        in any split, epoch, batch company, layout or training regime is computed once."""
        if "prompt" in batch:
            raise ValueError("the frozen-layer cache needs a single forward pass per batch; the kv layout makes two. "
                             "Fix: use --layout padded, packed or auto with it, or --no-cache-frozen")
        pieces = batch["pieces"]
        args = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["end_index"])
        if self.has(p[2] for p in pieces):
            with self.replay(self.batch(pieces, tuple(batch["input_ids"].shape), batch["input_ids"].device)):
                return model(*args)
        with self.capture(pieces):
            return model(*args)
