"""Tokenized groups and the padded batch layout: one row per completion, rewards gathered by position."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenizedGroup:
    """A ranked group as token ids: one row per completion (prompt + completion + EOS)."""

    ids: list[list[int]]
    ranks: list[int]
    pairs: list[tuple[int, int]] | None = None  # stated (winner, loser) pairs of a partial order, else from ranks

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)

    def comparisons(self) -> list[tuple[int, int]]:
        """The (winner, loser) index pairs this group states: its partial order, else every pair its ranks order."""
        if self.pairs is not None:
            return list(self.pairs)
        k = len(self.ids)
        return [(i, j) for i in range(k) for j in range(k) if self.ranks[i] < self.ranks[j]]


def shuffled_pairs(groups: list[TokenizedGroup]) -> list[TokenizedGroup]:
    """Every comparison as its own K=2 group (the pairwise-only regime InstructGPT found to overfit)."""
    return [TokenizedGroup([g.ids[w], g.ids[l]], [0, 1]) for g in groups for w, l in g.comparisons()]


def tokenize_groups(model, groups) -> tuple[list[TokenizedGroup], int]:
    """Tokenize every group through model.render in one tokenizer call; returns (groups, completions truncated)."""
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    ids, truncated = model.tokenize(prompts, completions)
    out, at = [], 0
    for g in groups:
        out.append(TokenizedGroup(ids[at:at + g.k], list(g.ranks),
                                  None if g.comparisons is None else [tuple(p) for p in g.comparisons]))
        at += g.k
    return out, truncated


def collate_padded(rows: list[list[int]], pad_id: int, padding_side: str = "right") -> dict:
    """Pad rows to one length; position ids count real tokens only; end_index is each row's EOS as a flat index."""
    n, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (N, T)
    end_index = torch.empty(n, dtype=torch.long)  # (N,)
    for i, r in enumerate(rows):
        start = 0 if padding_side == "right" else t - len(r)
        input_ids[i, start:start + len(r)] = torch.tensor(r)
        attention_mask[i, start:start + len(r)] = 1
        end_index[i] = i * t + start + len(r) - 1  # the last real token, found by position, not by pad id
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, T): padding does not shift positions
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "end_index": end_index, "rows": rows, "lengths": [len(r) for r in rows]}


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share (the prompt, at least), leaving each row its last token."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


def collate_packed(groups: list[TokenizedGroup], pad_id: int) -> dict:
    """One row per group, [shared prefix | rest of c1 | ... | rest of cK]: the prompt is forwarded once.

    The 4D mask lets a completion token see the shared prefix and its own earlier tokens only; position ids
    restart after the prefix for every completion; end_index is each completion's EOS. So every completion's
    hidden states equal those of its own padded row (tested to 1e-4), at a fraction of the tokens when the
    prompt is long. Right-padded; pad queries attend only themselves (no empty softmax row)."""
    rows, pos, seg, ends = [], [], [], []
    for g in groups:
        n = shared_prefix(g.ids)
        ids, p, s, e = list(g.ids[0][:n]), list(range(n)), [0] * n, []
        for i, r in enumerate(g.ids, start=1):
            tail = r[n:]
            ids += tail
            p += range(n, n + len(tail))
            s += [i] * len(tail)
            e.append(len(ids) - 1)
        rows.append(ids), pos.append(p), seg.append(s), ends.append(e)
    b, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((b, t), dtype=torch.long)  # (B, T)
    segment = torch.full((b, t), -1, dtype=torch.long)  # (B, T): 0 shared prefix, i completion i, -1 padding
    for i, (r, p, s) in enumerate(zip(rows, pos, seg)):
        input_ids[i, :len(r)] = torch.tensor(r)
        position_ids[i, :len(r)] = torch.tensor(p)
        segment[i, :len(r)] = torch.tensor(s)
    q, k = segment[:, :, None], segment[:, None, :]  # (B, T, 1), (B, 1, T)
    causal = torch.ones((t, t), dtype=torch.bool).tril()  # (T, T): index order is position order within a segment
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))  # (B, T, T)
    allowed |= torch.eye(t, dtype=torch.bool)
    end_index = torch.tensor([i * t + e for i, es in enumerate(ends) for e in es], dtype=torch.long)  # (N,)
    return {"input_ids": input_ids, "attention_mask": allowed[:, None], "position_ids": position_ids,
            "end_index": end_index, "rows": rows, "lengths": [len(r) for r in rows]}


def packed_length(g: TokenizedGroup) -> int:
    """Tokens of a group's packed row: the shared prefix once, then each completion's own tokens."""
    n = shared_prefix(g.ids)
    return n + sum(len(r) - n for r in g.ids)


def layout_cost(rows: int, length: int, attention_per_token: float) -> float:
    """The cost model of `--layout auto`: padded tokens plus attention area, weighted by its relative cost.

    attention_per_token: FLOPs of one (query, key) pair relative to one token's matmul FLOPs (RewardModel's
    attention_per_token: 4 * hidden / (2 * non-embedding parameters per layer))."""
    return rows * length * (1 + attention_per_token * length)


def pair_mask_of(groups: list[TokenizedGroup]) -> torch.Tensor | None:
    """(N, N) bool of the comparisons the groups state, (i, j) = i beat j; None when ranks state them all."""
    if all(g.pairs is None for g in groups):
        return None
    n = sum(len(g.ids) for g in groups)
    mask = torch.zeros((n, n), dtype=torch.bool)  # (N, N)
    at = 0
    for g in groups:
        k = len(g.ids)
        for w, l in g.comparisons():
            mask[at + w, at + l] = True
        at += k
    return mask


def choose_layout(groups: list[TokenizedGroup], layout: str, attention_per_token: float) -> str:
    """padded or packed as asked; for auto, the cheaper of the two for this batch by layout_cost."""
    if layout != "auto":
        return layout
    padded = layout_cost(sum(len(g.ids) for g in groups), max(len(r) for g in groups for r in g.ids),
                         attention_per_token)
    packed = layout_cost(len(groups), max(packed_length(g) for g in groups), attention_per_token)
    return "packed" if packed < padded else "padded"


def to_device(batch: dict, device) -> dict:
    """The batch's tensors moved to device (the token lists stay where they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate_groups(groups: list[TokenizedGroup], pad_id: int, padding_side: str = "right",
                   layout: str = "padded") -> dict:
    """A batch of whole groups (padded rows, or packed: one row per group), with each completion's rank and its
    group's index in the batch.

    When a group states only some comparisons (a partial order), the batch also holds "pair_mask" (N, N), which
    the loss and metrics use instead of the ranks."""
    rows = [r for g in groups for r in g.ids]
    batch = collate_padded(rows, pad_id, padding_side) if layout == "padded" else collate_packed(groups, pad_id)
    batch["ranks"] = torch.tensor([r for g in groups for r in g.ranks], dtype=torch.long)  # (N,)
    batch["group_index"] = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.ids], dtype=torch.long)
    mask = pair_mask_of(groups)
    if mask is not None:
        batch["pair_mask"] = mask  # (N, N)
    return batch


def token_budget_batches(lengths: list[int], budget: int, items_per_unit: list[int] | None = None) -> list[list[int]]:
    """Indices sorted by length and cut into batches whose padded size (rows x longest) stays within budget.

    With items_per_unit, each index stands for a unit of several rows (a group of K completions): a unit is never
    split, and a unit larger than the budget gets a batch of its own."""
    rows = items_per_unit or [1] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur, cur_rows, cur_max = [], [], 0, 0
    for i in order:
        new_max, new_rows = max(cur_max, lengths[i]), cur_rows + rows[i]
        if cur and new_max * new_rows > budget:
            batches.append(cur)
            cur, new_max, new_rows = [], lengths[i], rows[i]
        cur.append(i)
        cur_max, cur_rows = new_max, new_rows
    if cur:
        batches.append(cur)
    return batches
