"""The kv layout's prompt cache: each completion row gets its group's prompt keys and values (select_rows), by a
gather whose backward adds a group's gradients in row order without contention (GroupRows)."""

from __future__ import annotations

import torch


class GroupRows(torch.autograd.Function):
    """x.index_select(0, index), whose backward adds each source row's gradients in index order as index_add_ does,
    to the last bit, but faster and without two adds to one row at once.

    index_select's own backward spreads the (N, ...) gradient back with one scatter over all N rows: 2 ms a layer
    for the K = 9, P = 128 benchmark's keys (docs/benchmarks.md), the gradient being a slice of the cached keys'
    (non-contiguous). Here the adds go position by position: the first row of every group, then the second, ...:
    K index_add_ calls over G distinct rows each (0.4 ms), so the order within a group is the index order whatever
    the threads do, on a CPU and on CUDA (whose index_add_ adds colliding rows with atomics in no fixed order)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, adds: list) -> torch.Tensor:
        """adds: row_adds(index, x.shape[0]), made once for all the layers of a pass."""
        ctx.rows, ctx.adds = x.shape[0], adds
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        for dest, src in ctx.adds:  # dest: distinct source rows; src: the j-th output row of each
            out.index_add_(0, dest, grad.index_select(0, src))
        return out, None, None


def row_adds(index: torch.Tensor, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For j = 0, 1, ...: the source rows that index j + 1 times or more, and the position of the j-th occurrence
    of each in index (occurrences counted in index order)."""
    order = torch.argsort(index, stable=True)  # positions, grouped by source row, in index order within one
    counts = torch.bincount(index, minlength=rows)
    starts = counts.cumsum(0) - counts
    out = []
    for j in range(int(counts.max()) if index.numel() else 0):
        dest = torch.nonzero(counts > j).squeeze(1)
        out.append((dest, order[starts[dest] + j]))
    return out


def select_rows(cache, index: torch.Tensor) -> None:
    """Each row of a key/value cache its group's prompt: cache.batch_select_indices, made deterministic and fast.

    batch_select_indices gathers with keys[index]; that gather's backward (index_put_ with accumulate) adds the
    gradients of a group's K rows with float atomics from several threads on CPUs, in an order that depends on
    thread timing, so two runs of one command differed, more when the machine was busy (docs/reproducibility.md).
    GroupRows adds them in index order, as index_select's backward (index_add_) did, in a fifth of its time."""
    adds = None
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        adds = adds or row_adds(index, layer.keys.shape[0])
        layer.keys = GroupRows.apply(layer.keys, index, adds)
        layer.values = GroupRows.apply(layer.values, index, adds)
    if not getattr(cache, "layers", None):  # a cache of another shape: its own gather
        cache.batch_select_indices(index)
