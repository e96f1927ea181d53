"""Tokenized groups and the padded batch layout: one row per completion, rewards gathered by position."""

from __future__ import annotations

import functools
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

    @functools.cached_property
    def prefix(self) -> int:
        """Leading tokens all completions share (shared_prefix), computed once: the layouts ask for it often."""
        return shared_prefix(self.ids)

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
                                  None if g.stated_pairs is None else [tuple(p) for p in g.stated_pairs]))
        at += g.k
    return out, truncated


def collate_padded(rows: list[list[int]], pad_id: int, padding_side: str = "right") -> dict:
    """Pad rows to one length; position ids count real tokens only; end_index is each row's EOS as a flat index.

    "pieces" lists (row, spans, key) of each sequence, for the frozen-layer cache: the (start, length) spans of
    the row that hold it, keyed by its tokens; "tokens" counts the real tokens."""
    n, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (N, T)
    end_index = torch.empty(n, dtype=torch.long)  # (N,)
    pieces = []
    for i, r in enumerate(rows):
        start = 0 if padding_side == "right" else t - len(r)
        input_ids[i, start:start + len(r)] = torch.tensor(r)
        attention_mask[i, start:start + len(r)] = 1
        end_index[i] = i * t + start + len(r) - 1  # the last real token, found by position, not by pad id
        pieces.append((i, ((start, len(r)),), tuple(r)))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, T): padding does not shift positions
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "end_index": end_index, "pieces": pieces, "tokens": sum(len(r) for r in rows)}


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share (the prompt, at least), leaving each row its last token."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


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


def packed_group(g: TokenizedGroup) -> tuple[list[int], list[int], list[int], list[int], int]:
    """A group as one sequence [shared prefix | rest of c1 | ... | rest of cK]: (ids, positions, segment 0 for the
    prefix and i for completion i, each completion's last index, prefix length)."""
    n = g.prefix
    ids, pos, seg, ends = list(g.ids[0][:n]), list(range(n)), [0] * n, []
    for i, r in enumerate(g.ids, start=1):
        tail = r[n:]
        ids += tail
        pos += range(n, n + len(tail))
        seg += [i] * len(tail)
        ends.append(len(ids) - 1)
    return ids, pos, seg, ends, n


def collate_packed(groups: list[TokenizedGroup], pad_id: int, share_rows: bool = True) -> dict:
    """The prompt forwarded once: each group is [shared prefix | rest of c1 | ... | rest of cK], and several groups
    share a row (first-fit decreasing, rows no longer than the longest group) unless share_rows is False.

    The 4D mask lets a completion token see its own group's shared prefix and its own earlier tokens only;
    position ids restart after the prefix for every completion (and at 0 for every group); end_index is each
    completion's EOS, in group order. So every completion's hidden states equal those of its own padded row
    (tested to 1e-4), at a fraction of the tokens when the prompt is long. Right-padded; pad queries attend only
    themselves (no empty softmax row)."""
    packed = [packed_group(g) for g in groups]
    lengths = [len(p[0]) for p in packed]
    layout = pack_rows(lengths, max(lengths)) if share_rows else [[i] for i in range(len(groups))]
    b, t = len(layout), max(sum(lengths[i] for i in row) for row in layout)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((b, t), dtype=torch.long)  # (B, T)
    own = torch.full((b, t), -1, dtype=torch.long)  # (B, T): the token's segment (a prefix or a completion)
    base = torch.full((b, t), -2, dtype=torch.long)  # (B, T): the segment of its group's shared prefix
    where, pieces, next_seg = {}, [], 0
    for ri, row in enumerate(layout):
        at = 0
        for gi in row:
            ids, pos, seg, ends, prefix = packed[gi]
            n = len(ids)
            input_ids[ri, at:at + n] = torch.tensor(ids)
            position_ids[ri, at:at + n] = torch.tensor(pos)
            own[ri, at:at + n] = torch.tensor(seg) + next_seg
            base[ri, at:at + n] = next_seg
            next_seg += len(groups[gi].ids) + 1
            where[gi] = [ri * t + at + e for e in ends]
            starts = [prefix] + [e + 1 for e in ends[:-1]]
            for r, st, e in zip(groups[gi].ids, starts, ends):  # each completion's row: the prefix, then its tail
                pieces.append((ri, ((at, prefix), (at + st, e + 1 - st)), tuple(r)))
            at += n
    q_own, q_base, k_own = own[:, :, None], base[:, :, None], own[:, None, :]  # (B, T, 1), (B, T, 1), (B, 1, T)
    causal = torch.ones((t, t), dtype=torch.bool).tril()  # (T, T): index order is position order within a segment
    allowed = causal & (k_own >= 0) & ((k_own == q_base) | (k_own == q_own))  # (B, T, T)
    allowed |= torch.eye(t, dtype=torch.bool)
    end_index = torch.tensor([e for gi in range(len(groups)) for e in where[gi]], dtype=torch.long)  # (N,)
    return {"input_ids": input_ids, "attention_mask": allowed[:, None], "position_ids": position_ids,
            "end_index": end_index, "pieces": pieces, "tokens": sum(lengths)}


def collate_kv(groups: list[TokenizedGroup], pad_id: int) -> dict:
    """The prompt forwarded once, its keys and values shared: a prompt pass over one row per group (the shared
    prefix), then a completion pass over one row per completion (the rest of it) that attends to its group's cached
    prompt keys and values and to its own earlier tokens.

    Attention costs G P^2 + N T (P + T) instead of the packed row's (P + K T)^2, so this wins when completions are
    long; it cannot use the frozen-layer cache or gradient checkpointing (which drops the key/value cache). Returns
    the completion pass's tensors as a batch does (input_ids (N, T), a 4D bool mask (N, 1, T, P + T), position
    ids continuing the prompt's, end_index) and the prompt pass under "prompt" (input_ids, a 4D mask (G, 1, P, P),
    position_ids, group_index (N,) mapping completions to their group's cache row). Pad queries attend themselves."""
    n = [g.prefix for g in groups]
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
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        real[i, :len(x)] = True
        position_ids[i, :len(x)] = torch.arange(n[gi], n[gi] + len(x))
    causal_p = torch.ones((p_len, p_len), dtype=torch.bool).tril()  # (P, P)
    prompt_mask = causal_p & prompt_real[:, None, :] & prompt_real[:, :, None]  # (G, P, P)
    prompt_mask |= torch.eye(p_len, dtype=torch.bool)  # pad queries see only themselves
    group_index = torch.tensor(gidx, dtype=torch.long)  # (N,)
    causal_t = torch.ones((t, t), dtype=torch.bool).tril()  # (T, T)
    to_prompt = prompt_real[group_index][:, None, :].expand(-1, t, -1)  # (N, T, P)
    to_self = (causal_t & real[:, None, :] & real[:, :, None]) | torch.eye(t, dtype=torch.bool)  # (N, T, T)
    mask = torch.cat([to_prompt & real[:, :, None], to_self], dim=-1)  # (N, T, P + T): pad queries see themselves
    end_index = torch.tensor([i * t + len(x) - 1 for i, x in enumerate(tails)], dtype=torch.long)  # (N,)
    prompt = {"input_ids": prompt_ids, "attention_mask": prompt_mask[:, None], "group_index": group_index,
              "position_ids": torch.arange(p_len).expand(len(groups), -1).clone()}
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": position_ids, "end_index": end_index,
            "pieces": [],  # two passes: not for the frozen-layer cache
            "tokens": sum(n) + sum(len(x) for x in tails), "prompt": prompt}


def kv_cost(groups: list[TokenizedGroup], attention_per_token: float) -> float:
    """layout_cost's terms for the kv layout: the prompt pass (G x P, attention P^2 per row) and the completion pass
    (N x T, attention T (P + T) per row)."""
    n = [g.prefix for g in groups]
    p_len, t = max(n), max(len(r) - k for g, k in zip(groups, n) for r in g.ids)
    rows = sum(len(g.ids) for g in groups)
    return len(groups) * layout_cost(1, p_len, attention_per_token) + rows * t * (1 + attention_per_token * (p_len + t))


def packed_length(g: TokenizedGroup) -> int:
    """Tokens of a group's packed sequence: the shared prefix once, then each completion's own tokens."""
    n = g.prefix
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


LAYOUTS = ("padded", "packed", "kv", "auto")  # auto: one of the others, chosen per batch


def batch_cost(groups: list[TokenizedGroup], layout: str, attention_per_token: float) -> float:
    """The cost model of --layout auto for one forward pass over groups: token slots plus attention area, weighted
    by attention_per_token (layout_cost), for padded, packed (rows shared as collate_packed shares them) or kv."""
    if layout == "padded":
        return layout_cost(sum(len(g.ids) for g in groups), max(len(r) for g in groups for r in g.ids),
                           attention_per_token)
    if layout == "packed":
        lengths = [packed_length(g) for g in groups]
        return layout_cost(len(pack_rows(lengths, max(lengths))), max(lengths), attention_per_token)
    return kv_cost(groups, attention_per_token)


def choose_layout(groups: list[TokenizedGroup], layout: str, attention_per_token: float, kv: bool = True) -> str:
    """The layout asked; for auto, the cheapest for this batch by batch_cost among padded, packed, and kv unless
    kv is False (the frozen-layer cache and gradient checkpointing need a single pass)."""
    if layout != "auto":
        return layout
    return min(("padded", "packed", "kv") if kv else ("padded", "packed"),
               key=lambda how: batch_cost(groups, how, attention_per_token))


def plan_batches(groups: list[TokenizedGroup], budget: int, layout: str, attention_per_token: float,
                 kv: bool = True) -> list[tuple[list[int], str]]:
    """The forward passes over groups: (group indices, layout) for each, within budget token slots per pass.

    padded and kv: groups sorted by their longest completion, filled while completions x longest stays within the
    budget. packed: groups sorted by packed length, filled while groups x longest stays within it (shared rows then
    take fewer slots). auto: both plans, the first with the cheapest layout for each pass (choose_layout), and the
    cheaper plan by batch_cost kept. A group that alone exceeds the budget gets a pass of its own."""
    def by_rows():
        return token_budget_batches([max(len(r) for r in g.ids) for g in groups], budget, [len(g.ids) for g in groups])

    by_packed = [] if layout in ("padded", "kv") else token_budget_batches([packed_length(g) for g in groups], budget)
    if layout == "packed":
        return [(idx, "packed") for idx in by_packed]
    if layout != "auto":
        return [(idx, layout) for idx in by_rows()]
    plans = [[(idx, choose_layout([groups[i] for i in idx], "auto", attention_per_token, kv)) for idx in by_rows()],
             [(idx, "packed") for idx in by_packed]]
    return min(plans, key=lambda plan: sum(batch_cost([groups[i] for i in idx], how, attention_per_token)
                                           for idx, how in plan))


def padding_share(batch: dict) -> tuple[int, int]:
    """(token slots processed, of which padding) of a collated batch (with the kv layout's prompt pass)."""
    slots = batch["input_ids"].numel()
    if "prompt" in batch:
        slots += batch["prompt"]["input_ids"].numel()
    return slots, slots - batch["tokens"]


def to_device(batch: dict, device) -> dict:
    """The batch's tensors (also those of the nested prompt pass) moved to device; the token lists stay."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if isinstance(v, dict) else v
            for k, v in batch.items()}


def collate_groups(groups: list[TokenizedGroup], pad_id: int, padding_side: str = "right",
                   layout: str = "padded") -> dict:
    """A batch of whole groups (padded rows, or packed: one row per group), with each completion's rank and its
    group's index in the batch.

    When a group states only some comparisons (a partial order), the batch also holds "pair_mask" (N, N), which
    the loss and metrics use instead of the ranks."""
    rows = [r for g in groups for r in g.ids]
    if layout not in LAYOUTS[:-1]:
        raise ValueError(f"layout {layout!r} unknown. Fix: use padded, packed or kv (auto is chosen per batch)")
    batch = (collate_padded(rows, pad_id, padding_side) if layout == "padded" else
             collate_packed(groups, pad_id) if layout == "packed" else collate_kv(groups, pad_id))
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
