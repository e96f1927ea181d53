"""Training only the top layers: which parameters train, and a cache that runs the frozen layers once per sequence."""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from rankrm.errors import SettingsError

log = logging.getLogger(__name__)


def layer_stack(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's list of transformer blocks (model.layers, transformer.h, ...): its largest ModuleList."""
    lists = [(n, m) for n, m in backbone.named_children() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise SettingsError(f"{type(backbone).__name__} has no list of layers. Fix: use --train-layers -1")
    return max(lists, key=lambda nm: len(nm[1]))


def after_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's modules registered after its blocks: the final norm (Llama: norm, GPT-2: ln_f), ..."""
    name, _ = layer_stack(backbone)
    names = [n for n, _ in backbone.named_children()]
    return [getattr(backbone, n) for n in names[names.index(name) + 1 :]]


def select_trainable(model, train_layers: int) -> list[str]:
    """Freeze all but the top `train_layers` blocks, what follows them (final norm) and the head; -1 keeps all."""
    if train_layers < 0:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    backbone = model.backbone
    _, layers = layer_stack(backbone)
    if train_layers > len(layers):
        raise SettingsError(
            f"--train-layers {train_layers} exceeds the backbone's {len(layers)} layers. Fix: give at most {len(layers)}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(layers)[len(layers) - train_layers :]:
        block.requires_grad_(True)
    for module in after_layers(backbone):
        module.requires_grad_(True)
    model.head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


class FrozenLayerCache:
    """The hidden states entering the first trainable layer, kept per token sequence.

    When only the top N layers train, everything below them computes the same thing at every epoch. The first
    pass over a sequence records the input of the first trainable layer (a forward pre-hook); later passes hand
    that input straight to it, with the layer list cut to the top N, so the frozen layers are not run again.
    Sequences are keyed by their tokens, whether they ran as a padded row or inside a packed one (a packed
    completion's states are those of its own padded row), so a sequence seen in any split, epoch, batch company,
    layout or training regime is computed once. Works for backbones that loop over their layer list and pass the
    hidden states first (Llama, Qwen2, Mistral, GPT-2, ...); `verify` checks the replay against a full forward."""

    def __init__(self, backbone: nn.Module, train_layers: int, budget_bytes: float = math.inf):
        self.backbone = backbone
        self.budget, self.held = budget_bytes, 0
        self.full = False  # the budget is spent: new sequences run through the frozen layers each time
        self.name, layers = layer_stack(backbone)
        n = len(layers)
        self.top = nn.ModuleList(list(layers)[n - train_layers :])
        if train_layers > 0:
            self.entry = layers[n - train_layers]
        else:  # head only: resume at the module after the blocks (the final norm)
            after = after_layers(backbone)
            if not after:
                raise ValueError("no module follows the layer list")
            self.entry = after[0]
        self.store: dict = {}

    @staticmethod
    def keys(batch) -> list[tuple]:
        """Each completion sequence's tokens, gathered from its spans of the batch: the cache's keys."""
        ids = batch.input_ids.cpu()
        return [tuple(t for s, n in spans for t in ids[row, s : s + n].tolist()) for row, spans in batch.sequences]

    @contextlib.contextmanager
    def _capture(self, batch, keys):
        """Record the entry input of each sequence of the batch under its key."""

        def hook(module, args):
            h = args[0].detach()  # (B, T, H)
            for (row, spans), key in zip(batch.sequences, keys):
                size = sum(n for _, n in spans) * h.shape[-1] * h.element_size()
                if key in self.store:
                    continue
                if self.held + size > self.budget:
                    if not self.full:
                        self.full = True
                        log.warning(
                            f"frozen-layer cache: its budget of {self.budget / 2**30:.2f} GB is spent "
                            f"({len(self.store)} sequences cached); sequences not cached run through the frozen "
                            "layers each time (--frozen-cache-gb raises it)"
                        )
                    continue
                self.store[key] = torch.cat([h[row, s : s + n] for s, n in spans]).to("cpu", copy=True)
                self.held += size

        handle = self.entry.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _recorded(self, batch, keys) -> torch.Tensor:
        """The recorded inputs put back where the sequences sit in the (B, T) batch, zeros elsewhere: (B, T, H)."""
        first = self.store[keys[0]]
        out = torch.zeros((*batch.input_ids.shape, first.shape[-1]), dtype=first.dtype)  # (B, T, H)
        for (row, spans), key in zip(batch.sequences, keys):
            h, at = self.store[key], 0
            for s, n in spans:
                out[row, s : s + n] = h[at : at + n]
                at += n
        return out.to(batch.input_ids.device)

    @contextlib.contextmanager
    def _replay(self, states: torch.Tensor):
        """Run only the top layers: the layer list is cut to them and the entry's input replaced by `states`."""

        def hook(module, args):
            return (states.to(args[0].dtype),) + tuple(args[1:])

        full = getattr(self.backbone, self.name)
        setattr(self.backbone, self.name, self.top)
        handle = self.entry.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()
            setattr(self.backbone, self.name, full)

    def outputs(self, model, batch) -> torch.Tensor:
        """The head's outputs (N, O) for a batch (as model.forward gives them): replayed from the cache when every
        sequence in it is there, else a full forward that fills the cache. `model`: the RewardModel or its wrapper."""
        if batch.prompt is not None:
            raise SettingsError(
                "the frozen-layer cache needs a single forward pass per batch; the kv layout makes two. "
                "Fix: use --layout padded, packed or auto with it, or --no-cache-frozen"
            )
        keys = self.keys(batch)
        if all(k in self.store for k in keys):
            with self._replay(self._recorded(batch, keys)):
                return model(batch)
        with self._capture(batch, keys):
            return model(batch)

    def verify(self, model, batch) -> float:
        """Relative error of the replay against a full forward on one batch (the cache is emptied if it is off)."""
        keys = self.keys(batch)
        with torch.no_grad():
            with self._capture(batch, keys):  # a full forward whatever the cache holds; it (re)records the batch
                full = model(batch)
            replayed = self.outputs(model, batch)
        err = float((full - replayed).abs().max() / full.abs().max().clamp(min=1e-6))
        if err > 1e-3:
            self.store.clear()
            self.held = 0
        return err
