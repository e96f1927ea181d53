"""modeling/planning.py: an epoch's steps, micro-batches within a token budget, every group once, and the layouts' cost model."""

import random

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.batch import packed_length
from rankrm.modeling.planning import (
    allowed_pairs,
    batch_cost,
    choose_layout,
    layout_cost,
    plan_batches,
    slots,
    token_budget_batches,
)


def test_epoch_steps_with_length_buckets_keep_every_unit_once_and_group_similar_lengths():
    from rankrm.modeling.planning import epoch_steps

    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(203)]
    plain = epoch_steps(lengths, 8, seed=1, epoch=0)
    bucketed = epoch_steps(lengths, 8, seed=1, epoch=0, sort_window=5)
    for steps in (plain, bucketed):
        assert sorted(i for st in steps for i in st) == list(range(203))
        assert [len(st) for st in steps] == [8] * 25 + [3]
    spread = lambda steps: sum(max(lengths[i] for i in st) - min(lengths[i] for i in st) for st in steps)  # noqa: E731
    assert spread(bucketed) < spread(plain) / 3
    assert bucketed == epoch_steps(lengths, 8, seed=1, epoch=0, sort_window=5)  # a resumed run repeats it
    assert bucketed != epoch_steps(lengths, 8, seed=1, epoch=1, sort_window=5)


def test_token_budget_batches_fill_by_length_within_the_budget_and_never_split_an_item():
    """Lengths 5, 3, 8, 2 sorted: 2, 3 (2 rows x 3 = 6 <= 10), then 5 would make 3 x 5 = 15 > 10, a batch of its
    own, and 8 with it 2 x 8 = 16 > 10: [[3, 1], [0], [2]]. With rows per item 2, 1, 2, 1 and lengths 3, 10, 2, 4
    (budget 12): 2 then 3 make 4 rows x 3 = 12, the 4 would make 5 x 4 = 20, the 10 alone is 10."""
    assert token_budget_batches([5, 3, 8, 2], 10) == [[3, 1], [0], [2]]
    assert token_budget_batches([3, 10, 2, 4], 12, [2, 1, 2, 1]) == [[2, 0], [3], [1]]
    assert token_budget_batches([20, 1], 10) == [[1], [0]]  # longer than the budget: a batch of its own


TWO = TokenizedGroup(ids=[[1, 2, 3, 4], [1, 2, 3, 5, 6]], ranks=[0, 1])  # prompt 1 2 3; replies 1 and 2 tokens


def test_the_layouts_cost_model_on_one_group_worked_by_hand():
    """Prompt p = 3, replies t = 1 and 2 (rows of 4 and 5 tokens), attention weight a = 0.5.
    padded: 2 rows x 5 slots, cost 10 (1 + 0.5 x 5) = 35; causal pairs 4 x 5 / 2 + 5 x 6 / 2 = 25.
    packed: 3 + 1 + 2 = 6 slots in one row, cost 6 (1 + 0.5 x 6) = 24; pairs 3 x 4 / 2 + (3 + 1) + (6 + 3) = 19.
    kv: 3 prompt slots + 2 rows x 2, 7 slots; cost 3 (1 + 1.5) + 2 x 2 (1 + 0.5 x 5) = 7.5 + 14 = 21.5.
    Dense masks: kv is cheapest, packed without kv; counting only allowed pairs: packed 6 + 9.5 = 15.5 beats kv
    7 + 9.5 = 16.5 and padded 10 + 12.5 = 22.5."""
    assert TWO.prompt_length == 3 and packed_length(TWO) == 6
    assert layout_cost(2, 5, 0.5) == 35.0
    assert [allowed_pairs(TWO, how) for how in ("padded", "packed", "kv")] == [25, 19, 19]
    assert [slots([TWO], how) for how in ("padded", "packed", "kv")] == [10, 6, 7]
    assert [batch_cost([TWO], how, 0.5) for how in ("padded", "packed", "kv")] == [35.0, 24.0, 21.5]
    assert [batch_cost([TWO], how, 0.5, segment_aware=True) for how in ("padded", "packed", "kv")] == [22.5, 15.5, 16.5]
    assert choose_layout([TWO], "auto", 0.5) == "kv" and choose_layout([TWO], "auto", 0.5, kv=False) == "packed"
    assert choose_layout([TWO], "auto", 0.5, segment_aware=True) == "packed"
    assert choose_layout([TWO], "padded", 0.5) == "padded"  # a layout asked is kept


def test_plan_batches_puts_every_group_in_one_pass_within_the_budget():
    """Longest rows 5, 3, 10 with 2, 3, 2 completions, budget 20: the 3-token group (3 x 3 = 9) cannot take the
    5-token one (5 rows x 5 = 25), which cannot take the 10-token one (4 x 10 = 40); the last fills 2 x 10 = 20."""
    groups = [
        TokenizedGroup(ids=[[1, 2, 3, 4], [1, 2, 3, 5, 6]], ranks=[0, 1]),
        TokenizedGroup(ids=[[7, 8, 9], [7, 8, 1], [7, 8, 2]], ranks=[0, 1, 2]),
        TokenizedGroup(ids=[list(range(10)), list(range(9)) + [20]], ranks=[1, 0]),
    ]
    assert plan_batches(groups, 20, "padded", 0.5) == [([1], "padded"), ([0], "padded"), ([2], "padded")]
    for layout in ("padded", "packed", "kv", "auto"):
        plan = plan_batches(groups, 20, layout, 0.5)
        assert sorted(i for idx, _ in plan for i in idx) == [0, 1, 2]
        for idx, how in plan:
            assert len(idx) == 1 or slots([groups[i] for i in idx], how) <= 20
    assert plan_batches(groups, 1000, "padded", 0.5) == [([1, 0, 2], "padded")]  # all fit: one pass, by length
