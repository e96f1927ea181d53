"""Batch layouts: the packed and kv layouts (prompt forwarded once) give the padded layout's rewards and grads."""

import random

import pytest
import torch

from rankrm.data.encode import TokenizedGroup, shared_prefix_length, tokenize_groups
from rankrm.data.groups import RankedGroup
from rankrm.errors import SettingsError
from rankrm.loss import group_stats
from rankrm.modeling.batch import collate
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.model import RewardModel, batch_rewards
from rankrm.modeling.planning import choose_layout, layout_cost, plan_batches

WORDS = "the sky is blue and the grass is green while a cat sleeps on a warm red rock by the sea".split()


def groups_k2_to_9(seed=0):
    """One group for each K from 2 to 9, mixed prompt and completion lengths, some ties, some shared starts."""
    rng = random.Random(seed)
    out = []
    for k in range(2, 10):
        prompt = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 30)))}]
        comps = []
        while len(comps) < k:
            c = ("The " if rng.random() < 0.3 else "") + " ".join(rng.choices(WORDS, k=rng.randint(1, 25)))
            if c not in comps:
                comps.append(c)
        ranks = [rng.randint(0, k - 1) for _ in range(k)]
        ranks[0], ranks[1] = 0, k  # at least one comparison
        out.append(RankedGroup(prompt, tuple(comps), tuple(ranks)))
    return out


def rows(mask: torch.Tensor) -> list:
    """A (B, 1, T, S) bool mask as nested 0/1 lists, (B, T, S)."""
    return mask[:, 0].int().tolist()


def test_shared_prefix_length_keeps_each_row_its_last_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # a row that is a prefix of another keeps its last token
    assert shared_prefix_length([[7, 8]]) == 1
    assert TokenizedGroup([[1, 2, 3, 4], [1, 2, 5]], [0, 1]).prompt_length == 2


def test_shared_prefix_length_finds_the_first_difference_in_any_row():
    """The binary search over slices: the first position where any row differs from the first, by hand."""
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7], [1, 2, 9, 4, 5, 6]]) == 2  # row 3, at 2
    assert shared_prefix_length([[4, 1, 2], [5, 1, 2]]) == 0  # no shared token
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6, 7, 8, 0]] * 8 + [[1, 2, 3, 4, 5, 6, 7, 0, 0]]) == 7
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 6]]) == 4  # every row: its last


def test_padded_batch_layout_by_hand():
    """Rows [5, 6, 7, 2] and [3, 2] (2 = EOS), left-padded: positions count real tokens only, so the padding does
    not shift them; end_index is each row's last token, flat in (2 x 4)."""
    b = collate([TokenizedGroup([[5, 6, 7, 2], [3, 2]], [0, 1])], pad_id=0, layout="padded", padding_side="left")
    assert b.input_ids.tolist() == [[5, 6, 7, 2], [0, 0, 3, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert b.end_index.tolist() == [3, 7]
    assert b.ranks.tolist() == [0, 1] and b.group_index.tolist() == [0, 0] and b.num_groups == 1
    assert b.layout == "padded" and b.prompt is None and b.pair_counts is None
    assert b.sequences == [(0, ((0, 4),)), (1, ((2, 2),))]
    assert (b.slots, b.real_tokens) == (8, 6)


def test_packed_batch_layout_by_hand():
    """Group: prompt [5, 6], completions [7, 2] and [8, 9, 2] (2 = EOS). Packed row: 5 6 7 2 8 9 2, positions
    0 1 2 3 2 3 4; completion 2 (index 4..6) sees the prompt (0, 1) and itself, never completion 1 (2, 3)."""
    b = collate([TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])], pad_id=0, layout="packed")
    assert b.input_ids.tolist() == [[5, 6, 7, 2, 8, 9, 2]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    assert b.end_index.tolist() == [3, 6]
    assert rows(b.attention_mask) == [
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 1, 0],
            [1, 1, 0, 0, 1, 1, 1],
        ]
    ]
    assert b.ranks.tolist() == [0, 1] and b.group_index.tolist() == [0, 0]
    assert b.layout == "packed" and b.prompt is None and b.pair_counts is None
    assert b.sequences == [(0, ((0, 2), (2, 2))), (0, ((0, 2), (4, 3)))]  # (row, [prompt span, own tail span])
    assert (b.slots, b.real_tokens) == (7, 7)


def test_kv_batch_layout_by_hand():
    """Groups: prompt [5, 6] with completions [7, 2] and [8, 9, 2]; prompt [3] with [4, 2] and [1, 2] (2 = EOS).
    Prompt pass: rows [5, 6] and [3, pad]. Completion pass: rows [7, 2], [8, 9, 2], [4, 2], [1, 2], positions
    continuing their prompt's; keys = [prompt slots | own row]. Slots: 2 x 2 prompt + 4 x 3 completion = 16, of
    which 3 + 9 are tokens."""
    g1 = TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])
    g2 = TokenizedGroup([[3, 4, 2], [3, 1, 2]], [1, 0])
    b = collate([g1, g2], pad_id=0, layout="kv")
    pr = b.prompt
    assert pr.input_ids.tolist() == [[5, 6], [3, 0]]
    assert pr.position_ids.tolist() == [[0, 1], [0, 1]]
    assert pr.group_index.tolist() == [0, 0, 1, 1]
    assert rows(pr.attention_mask) == [[[1, 0], [1, 1]], [[1, 0], [0, 1]]]  # the pad query sees only itself
    assert b.input_ids.tolist() == [[7, 2, 0], [8, 9, 2], [4, 2, 0], [1, 2, 0]]
    assert b.position_ids.tolist() == [[2, 3, 0], [2, 3, 4], [1, 2, 0], [1, 2, 0]]
    assert b.end_index.tolist() == [1, 5, 7, 10]
    assert rows(b.attention_mask) == [
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]],  # a pad query sees only itself
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
        [[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]],  # never g2's prompt pad
        [[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
    ]
    assert b.ranks.tolist() == [0, 1, 1, 0] and b.group_index.tolist() == [0, 0, 1, 1] and b.num_groups == 2
    assert b.layout == "kv" and b.pair_counts is None
    assert b.sequences == []  # two passes: nothing for the frozen-layer cache
    assert (b.slots, b.slots - b.real_tokens) == (4 + 12, 4 + 12 - (3 + 2 + 3 + 2 + 2))


def test_packed_rows_hold_several_groups_kept_apart():
    """Groups of packed lengths 9, 4 and 4: the two short ones share a row (FFD, rows no longer than 9); a token
    sees only its own group; positions restart at 0 for each group; rewards come back in group order."""
    g1 = TokenizedGroup([[5, 6, 6, 6, 7, 2], [5, 6, 6, 6, 8, 9, 2]], [0, 1])
    g2 = TokenizedGroup([[3, 2], [3, 4, 2]], [1, 0])
    g3 = TokenizedGroup([[1, 2], [1, 1, 2]], [0, 0])
    b = collate([g1, g2, g3], pad_id=0, layout="packed")
    assert b.input_ids.tolist() == [[5, 6, 6, 6, 7, 2, 8, 9, 2], [3, 2, 4, 2, 1, 2, 1, 2, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 4, 5, 6], [0, 1, 1, 2, 0, 1, 1, 2, 0]]
    assert b.end_index.tolist() == [5, 8, 10, 12, 14, 16]
    assert rows(b.attention_mask) == [
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],  # g1: prompt 5 6 6 6, then 7 2, then 8 9 2
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 1, 0, 0],
            [1, 1, 1, 1, 0, 0, 1, 1, 0],
            [1, 1, 1, 1, 0, 0, 1, 1, 1],
        ],
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],  # g2: prompt 3, then 2, then 4 2
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0, 0],  # g3: prompt 1 (never g2's tokens), then 2, then 1 2
            [0, 0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 1, 0, 0],
            [0, 0, 0, 0, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 1],
        ],
    ]  # padding sees itself only
    assert b.ranks.tolist() == [0, 1, 1, 0, 0, 0] and b.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert b.num_groups == 3 and b.layout == "packed" and b.prompt is None and b.pair_counts is None
    assert b.sequences == [
        (0, ((0, 4), (4, 2))),
        (0, ((0, 4), (6, 3))),
        (1, ((0, 1), (1, 1))),
        (1, ((0, 1), (2, 2))),
        (1, ((4, 1), (5, 1))),
        (1, ((4, 1), (6, 2))),
    ]
    # the spans gather each completion's whole row, the frozen-layer cache's key
    assert FrozenLayerCache.keys(b) == [tuple(r) for g in (g1, g2, g3) for r in g.ids]
    assert (b.slots, b.real_tokens) == (18, 17)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_kv_rewards_and_gradients_match_padded(model_dirs, arch, attn):
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs[f"{arch}-chat"]), max_length=256, attn_implementation=attn)
    assert m.hf.config._attn_implementation == attn
    tok, _ = tokenize_groups(m, groups_k2_to_9())
    out = {}
    for layout in ("padded", "packed", "kv"):
        b = collate(tok, m.tokenizer.pad_token_id, layout)
        if layout == "packed":
            assert b.input_ids.shape[0] < len(tok)  # some groups share a row
        m.zero_grad()
        r = batch_rewards(m, b)
        group_stats(r, b.ranks, b.group_index, b.num_groups).loss.sum().backward()
        out[layout] = (r.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, b.slots)
    assert out["padded"][0].std() > 0 and out["padded"][1]  # the comparisons below can fail
    for layout in ("packed", "kv"):
        torch.testing.assert_close(out[layout][0], out["padded"][0], rtol=1e-4, atol=1e-5)
        assert out[layout][1].keys() == out["padded"][1].keys()
        for n, g in out["padded"][1].items():
            torch.testing.assert_close(out[layout][1][n], g, rtol=1e-4, atol=1e-5, msg=f"{layout} {n}")
        assert out[layout][2] < out["padded"][2]  # and it processed fewer token slots


def test_packed_layout_goes_through_the_frozen_layer_cache(model_dirs):
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=256)
    tok, _ = tokenize_groups(m, groups_k2_to_9())
    pad_id = m.tokenizer.pad_token_id
    padded = collate(tok, pad_id)
    packed = collate(tok, pad_id, "packed")
    with torch.no_grad():
        want = batch_rewards(m, padded)
        cache = FrozenLayerCache(m.backbone, 1)
        first, again = batch_rewards(m, packed, cache), batch_rewards(m, packed, cache)
        # in other company the groups share rows differently; each group's cached states still apply
        few = collate(tok[:5], pad_id, "packed")
        place = dict(zip(cache.keys(packed), packed.sequences))
        assert any(place[k] != s for k, s in zip(cache.keys(few), few.sequences))
        assert all(k in cache.store for k in cache.keys(few))
        other = batch_rewards(m, few, cache)
        # the cache holds sequences, whatever layout filled it: those cached from a padded batch replay in a packed one
        from_padded = FrozenLayerCache(m.backbone, 1)
        from_padded.outputs(m, padded)
        calls = []
        hook = m.backbone.layers[0].register_forward_hook(lambda *a: calls.append(1))  # a frozen layer
        crossed = from_padded.outputs(m, packed)[:, 0]
        hook.remove()
        assert FrozenLayerCache(m.backbone, 1).verify(m, packed) < 1e-4  # a fresh cache: a full forward, then replay
    assert not calls  # replayed, not recomputed
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other, want[: sum(len(g.ids) for g in tok[:5])], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(crossed, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(SettingsError, match="kv layout"):  # two passes per batch: the cache cannot replay them
        cache.outputs(m, collate(tok, pad_id, "kv"))


def test_auto_layout_packs_long_prompts_and_pads_long_completions():
    """Long shared prompt (200) and short completions (5): packed 200 + 4*5 tokens against 4*205 padded.
    Short prompt (5), long completions (200 each, K=9): padded 9 rows of 205; packed one row of 1805 whose
    attention area costs more than it saves once an attention pair costs as much as a token's matmuls / 100; kv
    forwards the prompt once and attends over 205 keys per completion token, cheaper than both."""
    long_prompt = TokenizedGroup([[1] * 200 + [i] * 4 + [2] for i in range(3, 7)], [0, 1, 2, 3])
    long_comps = TokenizedGroup([[1] * 5 + [i] * 199 + [2] for i in range(3, 12)], list(range(9)))
    assert choose_layout([long_prompt], "auto", 3e-4, kv=False) == "packed"
    assert choose_layout([long_prompt], "auto", 3e-4) in ("packed", "kv")
    assert choose_layout([long_comps], "auto", 1e-2, kv=False) == "padded"
    assert choose_layout([long_comps], "auto", 1e-2) == "kv"
    # by hand: padded 9 x 205 x (1 + 0.01 x 205) = 5627.25; one packed row 1805 x (1 + 0.01 x 1805) = 34385.25
    assert layout_cost(9, 205, 1e-2) == pytest.approx(5627.25) and layout_cost(1, 1805, 1e-2) == pytest.approx(34385.25)


def test_kv_passes_are_sized_by_the_slots_they_take():
    """Groups of a prompt of 8 and 3 completions of 4 more tokens: 36 slots as padded rows, 8 + 3 x 4 = 20 in the
    kv layout. Budget 60: one group per pass by padded rows (72 > 60), three by kv slots (3 x 8 + 9 x 4 = 60); the
    fourth gets a pass of its own. In a mixed plan only the runs of consecutive kv passes are refilled, around a
    padded pass kept as it is; a group larger than the budget keeps a pass of its own."""
    from rankrm.modeling.planning import kv_budget_batches, refill_kv, slots

    g = [TokenizedGroup([[1] * 8 + [i] * 3 + [2] for i in range(3, 6)], [0, 1, 2]) for _ in range(5)]
    assert slots(g[:3], "kv") == 60 and slots(g[:3], "padded") == 108
    assert plan_batches(g[:4], 60, "kv", 1e-3) == [([0, 1, 2], "kv"), ([3], "kv")]
    assert plan_batches(g[:4], 60, "padded", 1e-3) == [
        ([0], "padded"),
        ([1], "padded"),
        ([2], "padded"),
        ([3], "padded"),
    ]
    mixed = [([0], "kv"), ([1], "kv"), ([4], "padded"), ([2], "kv"), ([3], "kv")]
    assert refill_kv(g, mixed, 60) == [([0, 1], "kv"), ([4], "padded"), ([2, 3], "kv")]
    assert kv_budget_batches(g, [0, 1, 2], 19) == [[0], [1], [2]]  # each alone exceeds 19 slots


def test_a_kv_batch_without_a_shared_prompt_token_is_collated_padded(model_dirs):
    """Rows cut from the left by different amounts can share no first token: a kv prompt pass of length 0 made the
    model fail (a reshape of 0 elements); such a batch reads as padded rows, with the padded layout's rewards."""
    from rankrm.modeling.model import RewardModel, batch_rewards

    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    g = TokenizedGroup([[5, 6, 7, 2], [8, 9, 2]], [0, 1])
    assert g.prompt_length == 0
    kv = collate([g], m.tokenizer.pad_token_id, "kv")
    assert kv.layout == "padded" and kv.prompt is None
    padded = collate([g], m.tokenizer.pad_token_id, "padded")
    torch.testing.assert_close(batch_rewards(m, kv), batch_rewards(m, padded), rtol=0, atol=0)
    mixed = [g, TokenizedGroup([[3, 4, 5, 2], [3, 4, 6, 2]], [1, 0])]  # one group shares a prompt: kv stays kv
    mixed_kv = collate(mixed, m.tokenizer.pad_token_id, "kv")
    assert mixed_kv.layout == "kv"
    torch.testing.assert_close(
        batch_rewards(m, mixed_kv),
        batch_rewards(m, collate(mixed, m.tokenizer.pad_token_id, "padded")),
        atol=1e-5,
        rtol=0,
    )
