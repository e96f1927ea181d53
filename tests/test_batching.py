"""Batch layouts: the packed layout (prompt forwarded once, 4D mask) gives the padded layout's rewards and grads."""

import random

import pytest
import torch

from rankrm.batching import (TokenizedGroup, choose_layout, collate_groups, collate_kv, collate_packed, layout_cost,
                             padding_share, shared_prefix, tokenize_groups)
from rankrm.freeze import FrozenPrefix
from rankrm.groups import RankedGroup
from rankrm.loss import group_losses
from rankrm.model import RewardModel

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


def test_shared_prefix_keeps_each_row_its_last_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix([[1, 2], [1, 2, 3]]) == 1  # a row that is a prefix of another keeps its last token
    assert shared_prefix([[7, 8]]) == 1


def test_packed_batch_layout_by_hand():
    """Group: prompt [5, 6], completions [7, 2] and [8, 9, 2] (2 = EOS). Packed row: 5 6 7 2 8 9 2, positions
    0 1 2 3 2 3 4; completion 2 (index 4..6) sees the prompt (0, 1) and itself, never completion 1 (2, 3)."""
    b = collate_packed([TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 2, 8, 9, 2]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    assert b["end_index"].tolist() == [3, 6]
    m = b["attention_mask"][0, 0].int().tolist()
    assert m[6] == [1, 1, 0, 0, 1, 1, 1]
    assert m[3] == [1, 1, 1, 1, 0, 0, 0]
    assert m[1] == [1, 1, 0, 0, 0, 0, 0]


def test_kv_batch_layout_by_hand():
    """Groups: prompt [5, 6] with completions [7, 2] and [8, 9, 2]; prompt [3] with [4, 2] and [1, 2] (2 = EOS).
    Prompt pass: rows [5, 6] and [3, pad]. Completion pass: rows [7, 2], [8, 9, 2], [4, 2], [1, 2], positions
    continuing their prompt's; keys = [prompt slots | own row]."""
    g1 = TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])
    g2 = TokenizedGroup([[3, 4, 2], [3, 1, 2]], [1, 0])
    b = collate_kv([g1, g2], pad_id=0)
    pr = b["prompt"]
    assert pr["input_ids"].tolist() == [[5, 6], [3, 0]] and pr["group_index"].tolist() == [0, 0, 1, 1]
    assert pr["attention_mask"][1, 0].int().tolist() == [[1, 0], [0, 1]]  # the pad query sees only itself
    assert b["input_ids"].tolist() == [[7, 2, 0], [8, 9, 2], [4, 2, 0], [1, 2, 0]]
    assert b["position_ids"].tolist() == [[2, 3, 0], [2, 3, 4], [1, 2, 0], [1, 2, 0]]
    assert b["end_index"].tolist() == [1, 5, 7, 10]
    m = b["attention_mask"][:, 0].int()
    assert m[1].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert m[2].tolist() == [[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]]  # not g2's prompt pad; pad sees itself
    assert padding_share(b) == (4 + 12, 4 + 12 - (3 + 2 + 3 + 2 + 2))


def test_packed_rows_hold_several_groups_kept_apart():
    """Groups of packed lengths 9, 4 and 4: the two short ones share a row (FFD, rows no longer than 9); a token
    sees only its own group; positions restart at 0 for each group; rewards come back in group order."""
    g1 = TokenizedGroup([[5, 6, 6, 6, 7, 2], [5, 6, 6, 6, 8, 9, 2]], [0, 1])
    g2 = TokenizedGroup([[3, 2], [3, 4, 2]], [1, 0])
    g3 = TokenizedGroup([[1, 2], [1, 1, 2]], [0, 0])
    b = collate_packed([g1, g2, g3], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 6, 6, 7, 2, 8, 9, 2], [3, 2, 4, 2, 1, 2, 1, 2, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 4, 5, 6], [0, 1, 1, 2, 0, 1, 1, 2, 0]]
    assert b["end_index"].tolist() == [5, 8, 10, 12, 14, 16]
    m = b["attention_mask"][1, 0].int().tolist()
    assert m[4] == [0, 0, 0, 0, 1, 0, 0, 0, 0]  # g3's prompt token: not g2's tokens
    assert m[7] == [0, 0, 0, 0, 1, 0, 1, 1, 0]  # g3's second completion: its prompt and itself
    assert m[3] == [1, 0, 1, 1, 0, 0, 0, 0, 0]
    assert m[8] == [0, 0, 0, 0, 0, 0, 0, 0, 1]  # padding sees itself only
    assert [p[:2] for p in b["pieces"]] == [(0, ((0, 4), (4, 2))), (0, ((0, 4), (6, 3))), (1, ((0, 1), (1, 1))),
                                            (1, ((0, 1), (2, 2))), (1, ((4, 1), (5, 1))), (1, ((4, 1), (6, 2)))]
    assert [p[2] for p in b["pieces"]] == [tuple(r) for g in (g1, g2, g3) for r in g.ids]  # keyed by their rows
    assert collate_packed([g1, g2, g3], pad_id=0, share_rows=False)["input_ids"].shape == (3, 9)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rewards_and_gradients_match_padded(model_dirs, arch, attn):
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs[f"{arch}-chat"]), max_length=256)
    m.hf.config._attn_implementation = attn
    tok, _ = tokenize_groups(m, groups_k2_to_9())
    assert sum(len(g.ids[0]) for g in tok) > 0
    out = {}
    for layout in ("padded", "packed", "kv"):
        b = collate_groups(tok, m.tokenizer.pad_token_id, layout=layout)
        if layout == "packed":
            assert b["input_ids"].shape[0] < len(tok)  # some groups share a row
        m.zero_grad()
        r = m(b["input_ids"], b["attention_mask"], b["position_ids"], b["end_index"], b.get("prompt"))
        losses, _ = group_losses(r, b["ranks"], b["group_index"], len(tok))
        losses.sum().backward()
        out[layout] = (r.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None},
                       padding_share(b)[0])
    for layout in ("packed", "kv"):
        torch.testing.assert_close(out[layout][0], out["padded"][0], rtol=1e-4, atol=1e-5)
        for n, g in out["padded"][1].items():
            torch.testing.assert_close(out[layout][1][n], g, rtol=1e-4, atol=1e-5, msg=f"{layout} {n}")
        assert out[layout][2] < out["padded"][2]  # and it processed fewer token slots


def test_packed_layout_goes_through_the_frozen_layer_cache(model_dirs):
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=256)
    tok, _ = tokenize_groups(m, groups_k2_to_9())
    padded = collate_groups(tok, m.tokenizer.pad_token_id)
    packed = collate_groups(tok, m.tokenizer.pad_token_id, layout="packed")
    with torch.no_grad():
        want = m(padded["input_ids"], padded["attention_mask"], padded["position_ids"], padded["end_index"])
        prefix = FrozenPrefix(m.backbone, 1)
        first, again = prefix.forward(m, packed), prefix.forward(m, packed)
        # in other company the groups share rows differently; each group's cached states still apply
        few = collate_groups(tok[:5], m.tokenizer.pad_token_id, layout="packed")
        place = {p[2]: p[:2] for p in packed["pieces"]}
        assert any(place[p[2]] != p[:2] for p in few["pieces"])
        assert prefix.has(p[2] for p in few["pieces"])
        other = prefix.forward(m, few)
        # the cache holds rows, whatever layout filled it: rows cached from a padded batch replay in a packed one
        from_padded = FrozenPrefix(m.backbone, 1)
        from_padded.forward(m, padded)
        calls = []
        hook = m.backbone.layers[0].register_forward_hook(lambda *a: calls.append(1))  # a frozen layer
        crossed = from_padded.forward(m, packed)
        hook.remove()
    assert not calls  # replayed, not recomputed
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other, want[:sum(len(g.ids) for g in tok[:5])], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(crossed, want, rtol=1e-4, atol=1e-5)


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
    assert layout_cost(9, 205, 1e-2) < layout_cost(1, 1805, 1e-2)
    assert choose_layout([long_comps], "packed", 1e-2) == "packed"
