"""The batch the model reads, in one of three layouts.

padded: one row per completion (prompt + completion + EOS). packed: one sequence per group, [shared prompt | rest
of c1 | ... | rest of cK], several groups per row, a 4D mask keeping completions apart. kv: a first pass over each
group's shared prompt, whose keys and values the completion rows then attend to. In every layout `end_index` is the
flat position of each completion's EOS, in group order, so the rewards come out the same (tested to 1e-4)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.segments import Segments, segments

LAYOUTS = ("padded", "packed", "kv", "auto")  # auto: one of the others, chosen per batch (planning.py)

Spans = tuple[tuple[int, int], ...]  # (start, length) pieces of a row that together hold one token sequence


def _to(value, device):
    return value.to(device) if isinstance(value, (torch.Tensor, Segments)) else value


@dataclass
class PromptPass:
    """The kv layout's first pass: each group's shared prompt once; its keys and values serve the completion rows."""

    input_ids: torch.Tensor  # (G, P)
    attention_mask: torch.Tensor  # (G, 1, P, P) bool
    position_ids: torch.Tensor  # (G, P)
    group_index: torch.Tensor  # (N,): the prompt row each completion row attends to
    segments: Segments | None = None  # each group's prompt, for a segment-aware attention function

    def to(self, device) -> PromptPass:
        return PromptPass(*(_to(getattr(self, f.name), device) for f in fields(self)))


@dataclass
class Batch:
    """One forward pass over whole groups: what the model reads and what the loss needs."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 0/1, or (B, 1, T, S) bool for the packed and kv layouts
    position_ids: torch.Tensor  # (B, T): count real tokens only; restart per completion after a shared prompt
    end_index: torch.Tensor  # (N,): flat index into (B * T) of each completion's EOS, in group order
    ranks: torch.Tensor  # (N,): labeler rank of each completion (0 best)
    group_index: torch.Tensor  # (N,): the group (0..G-1) of each completion
    layout: str
    real_tokens: int  # tokens that are not padding (the prompt pass included)
    # (N, N) float: how many times completion i was stated to beat j (0: no such comparison); None: from ranks
    pair_counts: torch.Tensor | None = None
    # (N, N) float: the margin of each stated comparison i over j (0 elsewhere); None when no group gives margins
    pair_margins: torch.Tensor | None = None
    prompt: PromptPass | None = None  # the kv layout's prompt pass
    # where each completion's sequence sits: (row, spans); a frozen-layer cache keys and stores by it. Empty for kv.
    sequences: list[tuple[int, Spans]] = field(default_factory=list)
    segments: Segments | None = None  # the attention segments, for a segment-aware attention function

    @property
    def num_groups(self) -> int:
        return int(self.group_index[-1]) + 1

    @property
    def slots(self) -> int:
        """Token slots processed, padding included (both passes of the kv layout)."""
        return self.input_ids.numel() + (self.prompt.input_ids.numel() if self.prompt is not None else 0)

    def to(self, device) -> Batch:
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self) if f.name != "prompt"}
        return replace(self, **moved, prompt=self.prompt.to(device) if self.prompt is not None else None)


def collate(
    groups: list[TokenizedGroup],
    pad_id: int,
    layout: str = "padded",
    padding_side: str = "right",
    dense_mask: bool = True,
    with_segments: bool = True,
) -> Batch:
    """A batch of whole groups in one layout (padded, packed or kv; auto is chosen per batch by planning.py).

    dense_mask False: the packed and kv layouts carry their segments only, their attention_mask a (B, T) 0/1
    mask of real tokens, not the (B, 1, T, S) bool mask, for a segment-aware attention function (attention.py).
    A kv batch whose groups share no prompt token (rows cut from the left by different amounts) has no prompt pass
    to make: it is collated padded, which reads the same tokens. with_segments False: no Segments (batch.segments
    None), which only a segment-aware attention function reads; building them costs host time in every step."""
    if layout == "kv" and max(g.prompt_length for g in groups) == 0:
        layout = "padded"
    if layout == "padded":
        parts = _padded([r for g in groups for r in g.ids], pad_id, padding_side, with_segments)
    elif layout == "packed":
        parts = _packed(groups, pad_id, dense_mask, with_segments)
    elif layout == "kv":
        parts = _kv(groups, pad_id, dense_mask, with_segments)
    else:
        raise ValueError(f"layout {layout!r} unknown. Fix: use padded, packed or kv (auto is chosen per batch)")
    ranks = torch.tensor([r for g in groups for r in g.ranks], dtype=torch.long)  # (N,)
    group_index = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.ids], dtype=torch.long)  # (N,)
    return Batch(
        **parts,
        ranks=ranks,
        group_index=group_index,
        layout=layout,
        pair_counts=stated_pair_counts(groups),
        pair_margins=stated_pair_margins(groups),
    )


def collate_rows(rows: list[list[int]], pad_id: int, padding_side: str = "right") -> Batch:
    """Single sequences (for scoring) as a padded batch, each its own group."""
    return collate([TokenizedGroup([r], [0]) for r in rows], pad_id, "padded", padding_side)


def stated_pair_counts(groups: list[TokenizedGroup]) -> torch.Tensor | None:
    """(N, N) float: how many times the groups state that i beat j (both (i, j) and (j, i) when annotators
    disagreed); None when ranks state every comparison once."""
    if all(g.stated_pairs is None for g in groups):
        return None
    return pair_matrix(groups, lambda g: g.votes())


def stated_pair_margins(groups: list[TokenizedGroup]) -> torch.Tensor | None:
    """(N, N) float: each stated comparison's margin at (winner, loser), 0 for groups that give none; None when no
    group gives margins (the loss is then the one without)."""
    if all(g.margins is None for g in groups):
        return None
    return pair_matrix(groups, lambda g: g.margins or [])


def pair_matrix(groups: list[TokenizedGroup], values) -> torch.Tensor:
    """(N, N) float over the batch's completions: values(g)[k] at (winner, loser) of each group's k-th comparison
    (TokenizedGroup.comparisons() order), 0 elsewhere."""
    n = sum(len(g.ids) for g in groups)
    out = torch.zeros((n, n), dtype=torch.float32)  # (N, N)
    at = 0
    for g in groups:
        for (w, l), v in zip(g.comparisons(), values(g)):
            out[at + w, at + l] = v
        at += len(g.ids)
    return out


def _padded(rows: list[list[int]], pad_id: int, padding_side: str, with_segments: bool = True) -> dict:
    """Rows padded to one length; position ids count real tokens only; end_index is each row's last real token."""
    n, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (N, T)
    end_index = torch.empty(n, dtype=torch.long)  # (N,)
    sequences = []
    for i, r in enumerate(rows):
        start = 0 if padding_side == "right" else t - len(r)
        input_ids[i, start : start + len(r)] = torch.tensor(r)
        attention_mask[i, start : start + len(r)] = 1
        end_index[i] = i * t + start + len(r) - 1  # the last real token, found by position, not by pad id
        sequences.append((i, ((start, len(r)),)))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, T): padding does not shift positions
    spans = [(i * t + s[0][0], s[0][1]) for i, s in sequences]  # each row's real tokens: queries and keys
    return {
        "segments": segments(spans, [(sp,) for sp in spans]) if with_segments else None,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "end_index": end_index,
        "sequences": sequences,
        "real_tokens": sum(len(r) for r in rows),
    }


def packed_sequence(g: TokenizedGroup) -> tuple[list[int], list[int], list[int], list[int]]:
    """A group as one sequence [shared prompt | rest of c1 | ... | rest of cK]: (ids, positions, segment: 0 for the
    prompt and i for completion i, each completion's last index)."""
    n = g.prompt_length
    ids, pos, seg, ends = list(g.ids[0][:n]), list(range(n)), [0] * n, []
    for i, r in enumerate(g.ids, start=1):
        tail = r[n:]
        ids += tail
        pos += range(n, n + len(tail))
        seg += [i] * len(tail)
        ends.append(len(ids) - 1)
    return ids, pos, seg, ends


def packed_length(g: TokenizedGroup) -> int:
    """Tokens of a group's packed sequence: the shared prompt once, then each completion's own tokens."""
    n = g.prompt_length
    return n + sum(len(r) - n for r in g.ids)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices into rows whose lengths add up to at most capacity (an item longer than
    capacity gets a row of its own)."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _packed(groups: list[TokenizedGroup], pad_id: int, dense_mask: bool = True, with_segments: bool = True) -> dict:
    """Each group one sequence [shared prompt | rest of c1 | ... | rest of cK], several groups per row (first-fit
    decreasing, rows no longer than the longest group).

    The 4D mask lets a completion token see its own group's shared prompt and its own earlier tokens only;
    position ids restart after the prompt for every completion (and at 0 for every group); so every completion's
    hidden states equal those of its own padded row. Right-padded; pad queries attend only themselves (no empty
    softmax row)."""
    packed = [packed_sequence(g) for g in groups]
    lengths = [len(p[0]) for p in packed]
    layout = pack_rows(lengths, max(lengths))
    b, t = len(layout), max(sum(lengths[i] for i in row) for row in layout)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((b, t), dtype=torch.long)  # (B, T)
    own = torch.full((b, t), -1, dtype=torch.long)  # (B, T): the token's segment (a prompt or a completion)
    base = torch.full((b, t), -2, dtype=torch.long)  # (B, T): the segment of its group's shared prompt
    ends_of, sequences, next_seg, queries, keys = {}, {}, 0, [], []
    for ri, row in enumerate(layout):
        at = 0
        for gi in row:
            ids, pos, seg, ends = packed[gi]
            n, p = len(ids), groups[gi].prompt_length
            input_ids[ri, at : at + n] = torch.tensor(ids)
            position_ids[ri, at : at + n] = torch.tensor(pos)
            own[ri, at : at + n] = torch.tensor(seg) + next_seg
            base[ri, at : at + n] = next_seg
            next_seg += len(groups[gi].ids) + 1
            ends_of[gi] = [ri * t + at + e for e in ends]
            starts = [p] + [e + 1 for e in ends[:-1]]
            sequences[gi] = [(ri, ((at, p), (at + s, e + 1 - s))) for s, e in zip(starts, ends)]  # prompt, own tail
            prompt = (ri * t + at, p)
            queries.append(prompt)  # the prompt's queries see the prompt; each completion's, the prompt and itself
            keys.append((prompt,))
            for _, (_, (s, m)) in sequences[gi]:
                queries.append((ri * t + s, m))
                keys.append((prompt, (ri * t + s, m)))
            at += n
    end_index = torch.tensor([e for gi in range(len(groups)) for e in ends_of[gi]], dtype=torch.long)  # (N,)
    common = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "end_index": end_index,
        "sequences": [s for gi in range(len(groups)) for s in sequences[gi]],
        "real_tokens": sum(lengths),
        "segments": segments(queries, keys) if with_segments else None,
    }
    if not dense_mask:
        return {**common, "attention_mask": (own >= 0).long()}  # (B, T)
    q_own, q_base, k_own = own[:, :, None], base[:, :, None], own[:, None, :]  # (B, T, 1), (B, T, 1), (B, 1, T)
    causal = torch.ones((t, t), dtype=torch.bool).tril()  # (T, T): index order is position order within a segment
    allowed = causal & (k_own >= 0) & ((k_own == q_base) | (k_own == q_own))  # (B, T, T)
    allowed |= torch.eye(t, dtype=torch.bool)
    return {**common, "attention_mask": allowed[:, None]}


def _kv(groups: list[TokenizedGroup], pad_id: int, dense_mask: bool = True, with_segments: bool = True) -> dict:
    """A prompt pass over one row per group (the shared prompt), then a completion pass over one row per completion
    (the rest of it) that attends to its group's cached prompt keys and values and to its own earlier tokens.

    Attention costs G P^2 + N T (P + T) instead of the packed row's (P + K T)^2, so this wins when completions are
    long; it cannot use the frozen-layer cache or gradient checkpointing (which drops the key/value cache). The
    completion pass: input_ids (N, T), a 4D bool mask (N, 1, T, P + T), position ids continuing the prompt's;
    pad queries attend themselves."""
    n = [g.prompt_length for g in groups]
    tails = [r[k:] for g, k in zip(groups, n) for r in g.ids]
    gidx = [gi for gi, g in enumerate(groups) for _ in g.ids]
    p_len, t = max(n), max(len(x) for x in tails)
    prompt_ids = torch.full((len(groups), p_len), pad_id, dtype=torch.long)  # (G, P)
    prompt_real = torch.zeros((len(groups), p_len), dtype=torch.bool)  # (G, P)
    for gi, (g, k) in enumerate(zip(groups, n)):
        prompt_ids[gi, :k] = torch.tensor(g.ids[0][:k], dtype=torch.long)
        prompt_real[gi, :k] = True
    ids = torch.full((len(tails), t), pad_id, dtype=torch.long)  # (N, T)
    real = torch.zeros((len(tails), t), dtype=torch.bool)  # (N, T)
    position_ids = torch.zeros((len(tails), t), dtype=torch.long)  # (N, T)
    for i, (x, gi) in enumerate(zip(tails, gidx)):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        real[i, : len(x)] = True
        position_ids[i, : len(x)] = torch.arange(n[gi], n[gi] + len(x))
    group_index = torch.tensor(gidx, dtype=torch.long)  # (N,)
    if dense_mask:
        prompt_mask, mask = _kv_masks(prompt_real, real, group_index)
    else:
        prompt_mask, mask = prompt_real.long(), real.long()  # (G, P), (N, T)
    # the prompt pass: each group's prompt; a completion row: its own tokens, keys [its prompt's cached keys; its own]
    prompt_spans = [(gi * p_len, k) for gi, k in enumerate(n)]
    own = [(i * t, len(x)) for i, x in enumerate(tails)]
    keys = [((i * (p_len + t), n[gi]), (i * (p_len + t) + p_len, len(x))) for i, (x, gi) in enumerate(zip(tails, gidx))]
    prompt = PromptPass(
        prompt_ids,
        prompt_mask,
        torch.arange(p_len).expand(len(groups), -1).clone(),
        group_index,
        segments(prompt_spans, [(sp,) for sp in prompt_spans]) if with_segments else None,
    )
    end_index = torch.tensor([i * t + len(x) - 1 for i, x in enumerate(tails)], dtype=torch.long)  # (N,)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "end_index": end_index,
        "real_tokens": sum(n) + sum(len(x) for x in tails),
        "prompt": prompt,
        "segments": segments(own, keys) if with_segments else None,
    }


def _kv_masks(prompt_real: torch.Tensor, real: torch.Tensor, group_index: torch.Tensor):
    """The kv layout's dense bool masks: the prompt pass's (G, 1, P, P) and the completion pass's (N, 1, T, P + T)."""
    p_len, t = prompt_real.shape[1], real.shape[1]
    causal_p = torch.ones((p_len, p_len), dtype=torch.bool).tril()  # (P, P)
    prompt_mask = causal_p & prompt_real[:, None, :] & prompt_real[:, :, None]  # (G, P, P)
    prompt_mask |= torch.eye(p_len, dtype=torch.bool)  # pad queries see only themselves
    causal_t = torch.ones((t, t), dtype=torch.bool).tril()  # (T, T)
    to_prompt = prompt_real[group_index][:, None, :].expand(-1, t, -1)  # (N, T, P)
    to_self = (causal_t & real[:, None, :] & real[:, :, None]) | torch.eye(t, dtype=torch.bool)  # (N, T, T)
    mask = torch.cat([to_prompt & real[:, :, None], to_self], dim=-1)  # (N, T, P + T): pad queries see themselves
    return prompt_mask[:, None], mask[:, None]
