"""Attention segments: which keys each run of queries may see, as flat indices and cumulative offsets, the form
varlen kernels take (cu_seqlens). collate (batch.py) builds them for a segment-aware attention function
(attention.py: rankrm_varlen), which then skips what a dense mask would remove."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Segments:
    """Where one pass's attention segments sit, for a segment-aware attention function (modeling/attention.py).

    A segment is a run of queries and the keys they may see: a padded row's real tokens (keys: the same tokens), a
    packed group's prompt (keys: the prompt) or one of its completions (keys: [the group's prompt; its own tokens]),
    a kv completion row (keys: [its group's cached prompt; its own tokens]). Within a segment the causal alignment
    is bottom-right: query j of lq sees keys 0 .. j + lk - lq. Every real token is the query of exactly one segment
    (padding is the query of none), so the queries are packed once; the prompt's keys are shared by its segments."""

    q_index: torch.Tensor  # (Nq,): flat index into the pass's (B * T) queries, segment after segment
    k_index: torch.Tensor  # (Nk,): flat index into the layer's (B * Tk) keys (Tk = T, or P + T for kv completions)
    cu_q: torch.Tensor  # (S + 1,) int32: segment s's queries are q_index[cu_q[s] : cu_q[s + 1]]
    cu_k: torch.Tensor  # (S + 1,) int32: its keys k_index[cu_k[s] : cu_k[s + 1]]
    max_q: int
    max_k: int

    @property
    def pairs(self) -> int:
        """The (query, key) pairs attention computes: lq * lk - lq * (lq - 1) / 2 per segment (bottom-right causal)."""
        lq, lk = self.cu_q.diff().long(), self.cu_k.diff().long()
        return int((lq * lk - lq * (lq - 1) // 2).sum())

    def to(self, device) -> Segments:
        return replace(self, **{n: getattr(self, n).to(device) for n in ("q_index", "k_index", "cu_q", "cu_k")})


def _span_index(spans: list[tuple[int, int]]) -> torch.Tensor:
    """The flat indices of (start, length) spans, one after the other: [s0, s0 + 1, ..., s1, s1 + 1, ...]."""
    starts = torch.tensor([s for s, _ in spans], dtype=torch.long)
    lengths = torch.tensor([n for _, n in spans], dtype=torch.long)
    shift = starts - (lengths.cumsum(0) - lengths)  # index = shift of its span + its place in the whole list
    return torch.repeat_interleave(shift, lengths) + torch.arange(int(lengths.sum()))


def segments(queries: list[tuple[int, int]], keys: list[tuple[tuple[int, int], ...]]) -> Segments:
    """Segments from each one's query span (start, length) and its key spans, flat indices into (B * T)."""
    lq = [n for _, n in queries]
    lk = [sum(n for _, n in ks) for ks in keys]
    k_index = _span_index([s for ks in keys for s in ks])
    return Segments(_span_index(queries), k_index, _offsets(lq), _offsets(lk), max(lq), max(lk))


def _offsets(lengths: list[int]) -> torch.Tensor:
    """(S + 1,) int32 cumulative offsets [0, l0, l0 + l1, ...], as varlen kernels take them (cu_seqlens)."""
    return torch.tensor([0, *lengths], dtype=torch.long).cumsum(0).to(torch.int32)
