"""Which groups go into which optimizer step and forward pass, and in which layout: the cost model of --layout auto.

Everything here works from token lengths only (no tensors), so training, evaluation and the benchmarks plan the
same way."""

from __future__ import annotations

import random

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.batch import pack_rows, packed_length


def epoch_steps(lengths: list[int], step_size: int, seed: int, epoch: int, sort_window: int = 0) -> list[list[int]]:
    """The steps of an epoch (lists of unit indices): a function of (seed, epoch), so a resumed run repeats it.

    sort_window = 0: consecutive slices of a shuffled order. sort_window = W > 0: the shuffled order is cut into
    windows of W steps, each window sorted by length and cut into steps, and the steps shuffled (the last, short
    step stays last): every step then holds units of similar length, so its micro-batches carry little padding,
    while each unit is still seen once per epoch and every step still has step_size units."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if sort_window > 0:
        chunk = sort_window * step_size
        order = [i for c in range(0, len(order), chunk) for i in sorted(order[c : c + chunk], key=lambda i: lengths[i])]
    steps = [order[i : i + step_size] for i in range(0, len(order), step_size)]
    if sort_window > 0:
        full = [st for st in steps if len(st) == step_size]
        rng.shuffle(full)
        steps = full + [st for st in steps if len(st) < step_size]
    return steps


def layout_cost(rows: int, length: int, attention_per_token: float) -> float:
    """Cost of a pass over rows x length token slots with a dense-mask kernel: the slots plus their attention
    square (a masked kernel computes every query-key tile), weighted by its cost.

    attention_per_token: FLOPs of one (query, key) pair relative to one token's matmul FLOPs (RewardModel's
    attention_per_token: 4 * hidden / (2 * non-embedding parameters per layer))."""
    return rows * length * (1 + attention_per_token * length)


def allowed_pairs(g: TokenizedGroup, layout: str) -> int:
    """The (query, key) pairs a segment-aware kernel computes for a group: padded, each row causal over itself,
    n (n + 1) / 2; packed and kv, the prompt once, p (p + 1) / 2, then each completion's t own queries over
    [prompt; itself], t p + t (t + 1) / 2."""
    if layout == "padded":
        return sum(len(r) * (len(r) + 1) // 2 for r in g.ids)
    p = g.prompt_length
    return p * (p + 1) // 2 + sum((len(r) - p) * p + (len(r) - p) * (len(r) - p + 1) // 2 for r in g.ids)


def slots(groups: list[TokenizedGroup], layout: str) -> int:
    """Token slots a pass processes in a layout, padding included (what every matmul costs)."""
    if layout == "padded":
        return sum(len(g.ids) for g in groups) * max(len(r) for g in groups for r in g.ids)
    if layout == "packed":
        lengths = [packed_length(g) for g in groups]
        return len(pack_rows(lengths, max(lengths))) * max(lengths)
    n = [g.prompt_length for g in groups]
    t = max(len(r) - k for g, k in zip(groups, n) for r in g.ids)
    return len(groups) * max(n) + sum(len(g.ids) for g in groups) * t


def kv_cost(groups: list[TokenizedGroup], attention_per_token: float) -> float:
    """The kv layout's cost with a dense-mask kernel: the prompt pass (G x P, attention P^2 per row) and the
    completion pass (N x T, attention T (P + T) per row)."""
    n = [g.prompt_length for g in groups]
    p_len, t = max(n), max(len(r) - k for g, k in zip(groups, n) for r in g.ids)
    rows = sum(len(g.ids) for g in groups)
    return len(groups) * layout_cost(1, p_len, attention_per_token) + rows * t * (1 + attention_per_token * (p_len + t))


def batch_cost(
    groups: list[TokenizedGroup], layout: str, attention_per_token: float, segment_aware: bool = False
) -> float:
    """The cost of one forward pass over groups in a layout (packed rows shared as collate shares them).

    segment_aware: the attention kernel computes only the pairs the layout allows (rankrm_varlen: allowed_pairs);
    else a dense-mask kernel computes each row's whole square."""
    if segment_aware:
        return slots(groups, layout) + attention_per_token * sum(allowed_pairs(g, layout) for g in groups)
    if layout == "padded":
        return layout_cost(
            sum(len(g.ids) for g in groups), max(len(r) for g in groups for r in g.ids), attention_per_token
        )
    if layout == "packed":
        lengths = [packed_length(g) for g in groups]
        return layout_cost(len(pack_rows(lengths, max(lengths))), max(lengths), attention_per_token)
    return kv_cost(groups, attention_per_token)


def choose_layout(
    groups: list[TokenizedGroup],
    layout: str,
    attention_per_token: float,
    kv: bool = True,
    segment_aware: bool = False,
) -> str:
    """The layout asked; for auto, the cheapest for this batch by batch_cost among padded, packed, and kv unless
    kv is False (the frozen-layer cache and gradient checkpointing need a single pass)."""
    if layout != "auto":
        return layout
    return min(
        ("padded", "packed", "kv") if kv else ("padded", "packed"),
        key=lambda how: batch_cost(groups, how, attention_per_token, segment_aware),
    )


def token_budget_batches(lengths: list[int], budget: int, rows_per_item: list[int] | None = None) -> list[list[int]]:
    """Indices sorted by length and cut into batches whose padded size (rows x longest) stays within budget.

    With rows_per_item, each index stands for several rows (a group of K completions): an item is never split, and
    an item larger than the budget gets a batch of its own."""
    rows = rows_per_item or [1] * len(lengths)
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


def kv_budget_batches(groups: list[TokenizedGroup], order: list[int], budget: int) -> list[list[int]]:
    """Groups taken in `order`, cut into kv passes whose token slots (groups x longest prompt + completions x
    longest tail: both passes, as slots() counts them) stay within budget; a group larger than the budget gets a
    pass of its own."""
    batches, cur, p_len, t_len, rows = [], [], 0, 0, 0
    for i in order:
        g = groups[i]
        p, t = g.prompt_length, max(len(r) for r in g.ids) - g.prompt_length
        new_p, new_t, new_rows = max(p_len, p), max(t_len, t), rows + len(g.ids)
        if cur and (len(cur) + 1) * new_p + new_rows * new_t > budget:
            batches.append(cur)
            cur, new_p, new_t, new_rows = [], p, t, len(g.ids)
        cur.append(i)
        p_len, t_len, rows = new_p, new_t, new_rows
    if cur:
        batches.append(cur)
    return batches


def refill_kv(
    groups: list[TokenizedGroup], plan: list[tuple[list[int], str]], budget: int
) -> list[tuple[list[int], str]]:
    """A plan whose kv passes are sized by the kv slots they really take: each run of consecutive kv passes (sized
    as padded rows, K (P + T) slots a group) refilled by kv_budget_batches in the same order. A kv group takes
    P + K T slots, so a pass then holds up to K times as many groups and a step runs fewer passes (each pass costs
    a fixed overhead: two backbone calls, the cache's setup, kernel launches). Other passes are kept as they are."""
    out, run = [], []
    for idx, how in [*plan, ([], "end")]:
        if how == "kv":
            run += idx
            continue
        out += [(b, "kv") for b in kv_budget_batches(groups, run, budget)] if run else []
        run = []
        if how != "end":
            out.append((idx, how))
    return out


def plan_batches(
    groups: list[TokenizedGroup],
    budget: int,
    layout: str,
    attention_per_token: float,
    kv: bool = True,
    segment_aware: bool = False,
) -> list[tuple[list[int], str]]:
    """The forward passes over groups: (group indices, layout) for each, within budget token slots per pass.

    padded: groups sorted by their longest completion, filled while completions x longest stays within the budget;
    kv likewise, then refilled by the slots a kv pass takes (refill_kv: groups x longest prompt + completions x
    longest tail). packed: groups sorted by packed length, filled while groups x longest stays within it (shared
    rows then take fewer slots). auto: both plans, the first with the cheapest layout for each pass (choose_layout)
    and its kv passes refilled, and the cheaper plan by batch_cost kept (segment_aware: the attention counted as
    batch_cost counts it). A group that alone exceeds the budget gets a pass of its own."""

    def by_rows():
        return token_budget_batches([max(len(r) for r in g.ids) for g in groups], budget, [len(g.ids) for g in groups])

    def by_packed():
        return token_budget_batches([packed_length(g) for g in groups], budget)

    if layout == "packed":
        return [(idx, "packed") for idx in by_packed()]
    if layout == "kv":
        return refill_kv(groups, [(idx, "kv") for idx in by_rows()], budget)
    if layout != "auto":
        return [(idx, layout) for idx in by_rows()]
    plans = [
        refill_kv(
            groups,
            [
                (idx, choose_layout([groups[i] for i in idx], "auto", attention_per_token, kv, segment_aware))
                for idx in by_rows()
            ],
            budget,
        ),
        [(idx, "packed") for idx in by_packed()],
    ]

    def cost(plan):
        return sum(batch_cost([groups[i] for i in idx], how, attention_per_token, segment_aware) for idx, how in plan)

    return min(plans, key=cost)
