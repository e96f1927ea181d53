"""Attention that fits each layout: rankrm_varlen's segments by hand, its CPU emulation against masked SDPA, its
rewards and gradients against the padded SDPA layout, and the attention implementations refused per layout."""

import pytest
import torch
import torch.nn.functional as F
from test_batch import groups_k2_to_9

from rankrm.data.encode import TokenizedGroup, tokenize_groups
from rankrm.loss import group_stats
from rankrm.modeling.attention import emulate, layout_problem, layouts_for
from rankrm.modeling.batch import collate
from rankrm.modeling.model import RewardModel, batch_rewards
from rankrm.modeling.planning import allowed_pairs, batch_cost, choose_layout, plan_batches
from rankrm.training.config import TrainConfig


def spans(seg) -> tuple[list, list]:
    """Each segment's query and key indices as lists."""
    cq, ck = seg.cu_q.tolist(), seg.cu_k.tolist()
    q = [seg.q_index[a:b].tolist() for a, b in zip(cq, cq[1:])]
    k = [seg.k_index[a:b].tolist() for a, b in zip(ck, ck[1:])]
    return q, k


def test_packed_segments_by_hand():
    """Row 5 6 | 7 2 | 8 9 2 (prompt [5, 6], completions [7, 2] and [8, 9, 2]): the prompt's queries see the prompt,
    each completion's see [prompt; itself]. Pairs, bottom-right causal: 2*2 - 1 + 2*4 - 1 + 3*5 - 3 = 22, the ones
    of the dense mask (1 + 2 + 3 + 4 + 3 + 4 + 5)."""
    b = collate([TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])], pad_id=0, layout="packed")
    assert spans(b.segments) == ([[0, 1], [2, 3], [4, 5, 6]], [[0, 1], [0, 1, 2, 3], [0, 1, 4, 5, 6]])
    assert (b.segments.max_q, b.segments.max_k) == (3, 5)
    assert b.segments.pairs == 22 == int(b.attention_mask.sum())


def test_kv_and_padded_segments_by_hand():
    """kv, groups ([5, 6] + [7, 2] | [8, 9, 2]) and ([3] + [4, 2] | [1, 2]): prompt pass rows of P = 2, completion
    rows of T = 3 whose keys are [P cached prompt slots | T own slots] (row i's at i * 5). Padded, left: rows
    [5, 6, 7, 2] and [pad, pad, 3, 2]: each row's real tokens."""
    g1 = TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1])
    g2 = TokenizedGroup([[3, 4, 2], [3, 1, 2]], [1, 0])
    b = collate([g1, g2], pad_id=0, layout="kv")
    assert spans(b.prompt.segments) == ([[0, 1], [2]], [[0, 1], [2]])
    assert spans(b.segments) == (
        [[0, 1], [3, 4, 5], [6, 7], [9, 10]],
        [[0, 1, 2, 3], [5, 6, 7, 8, 9], [10, 12, 13], [15, 17, 18]],
    )
    p = collate([TokenizedGroup([[5, 6, 7, 2], [3, 2]], [0, 1])], pad_id=0, padding_side="left")
    assert spans(p.segments) == ([[0, 1, 2, 3], [6, 7]], [[0, 1, 2, 3], [6, 7]])


def test_no_dense_mask_when_asked():
    """dense_mask=False: the packed and kv layouts carry a (B, T) mask of real tokens, the same ids and segments."""
    g = [TokenizedGroup([[5, 6, 7, 2], [5, 6, 8, 9, 2]], [0, 1]), TokenizedGroup([[3, 2], [3, 4, 2]], [1, 0])]
    for layout in ("packed", "kv"):
        dense, lean = collate(g, 0, layout), collate(g, 0, layout, dense_mask=False)
        assert lean.attention_mask.shape == lean.input_ids.shape
        assert lean.attention_mask.sum() == sum(len(x) for x in lean.input_ids.tolist()) - (lean.input_ids == 0).sum()
        assert torch.equal(lean.input_ids, dense.input_ids) and spans(lean.segments) == spans(dense.segments)
    assert collate(g, 0, "kv", dense_mask=False).prompt.attention_mask.tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_emulation_equals_sdpa_with_the_dense_mask(heads, kv_heads):
    """Random queries/keys through the packed layout's segments equal SDPA over the whole row with its dense mask,
    GQA included."""
    torch.manual_seed(0)
    groups = [
        TokenizedGroup([[1] * 5 + [3, 2], [1] * 5 + [4, 4, 4, 2], [1] * 5 + [2]], [0, 1, 1]),
        TokenizedGroup([[7, 8, 2], [7, 9, 9, 2]], [1, 0]),
        TokenizedGroup([[6] * 3 + [5] * 6 + [2], [6] * 3 + [2]], [0, 1]),
    ]
    b = collate(groups, 0, "packed")
    bsz, t = b.input_ids.shape
    q = torch.randn(bsz, heads, t, 8)
    k, v = torch.randn(bsz, kv_heads, t, 8), torch.randn(bsz, kv_heads, t, 8)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=b.attention_mask, enable_gqa=True)  # (B, H, T, D)
    want = want.transpose(1, 2).reshape(bsz * t, heads, 8)[b.segments.q_index]  # real queries, segment order
    seg = b.segments
    got = emulate(_flat(q)[seg.q_index], _flat(k)[seg.k_index], _flat(v)[seg.k_index], seg, 8**-0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B * T, H, D), as the attention function flattens a layer's tensors."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[-1])


def _rewards_and_grads(model, tok, layout, dense_mask=True, padding_side="right"):
    b = collate(tok, model.tokenizer.pad_token_id, layout, padding_side, dense_mask=dense_mask)
    model.zero_grad()
    r = batch_rewards(model, b)
    group_stats(r, b.ranks, b.group_index, b.num_groups).loss.sum().backward()
    return r.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_varlen_rewards_and_gradients_equal_padded_sdpa(model_dirs, arch):
    """K = 2..9, ties, mixed lengths, GQA (Llama and Qwen2 shapes: 4 query heads on 2 key/value heads): every layout
    through rankrm_varlen, with and without the dense mask built, equals the padded SDPA layout to 1e-4 in fp32."""
    torch.manual_seed(0)
    path = str(model_dirs[f"{arch}-chat"])
    ref = RewardModel.from_pretrained(path, max_length=256, attn_implementation="sdpa")
    m = RewardModel.from_pretrained(path, max_length=256, attn_implementation="rankrm_varlen")
    m.load_state_dict(ref.state_dict())  # the same fresh head
    assert m.hf.config._attn_implementation == "rankrm_varlen"
    tok, _ = tokenize_groups(ref, groups_k2_to_9())
    want_r, want_g = _rewards_and_grads(ref, tok, "padded")
    assert want_r.std() > 0 and want_g
    cases = [("padded", True, "right"), ("padded", True, "left"), ("packed", False, "right"), ("kv", False, "right")]
    for layout, dense, side in cases + [("packed", True, "right")]:
        r, g = _rewards_and_grads(m, tok, layout, dense, side)
        torch.testing.assert_close(r, want_r, rtol=1e-4, atol=1e-5, msg=f"{layout} rewards")
        assert g.keys() == want_g.keys()
        for n, w in want_g.items():
            torch.testing.assert_close(g[n], w, rtol=1e-4, atol=1e-5, msg=f"{layout} {n}")


def test_varlen_needs_the_batch_segments(model_dirs):
    """The backbone alone, without rankrm's batch, cannot know the segments: a clear error, not a wrong answer."""
    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), attn_implementation="rankrm_varlen")
    with pytest.raises(ValueError, match="needs the batch's segments"):
        m.backbone(input_ids=torch.tensor([[5, 6, 7]]))


def test_flex_attention_is_refused_where_it_would_be_wrong(model_dirs, tmp_path, capsys):
    """transformers' flex path adds a bool 4D mask to the scores (0 or 1) instead of masking; with a packed batch it
    gave wrong rewards, then crashed (exit 134/139). Refused at start for packed, kv and auto (exit 2, the fix named),
    and by the model for a packed batch; padded rows (a 2D mask, turned into a block mask by transformers) stay
    allowed (equal to sdpa to 2e-8 when probed by hand; not run here: its first CPU call compiles for minutes)."""
    from rankrm.cli import main

    assert layouts_for("flex_attention") == layouts_for("flash_attention_2") == ("padded",)
    assert layouts_for("rankrm_varlen") == layouts_for("sdpa") == ("padded", "packed", "kv", "auto")
    for layout in ("packed", "kv", "auto"):
        assert "Fix: use --attn-implementation rankrm_varlen" in layout_problem("flex_attention", layout)
        with pytest.raises(ValueError, match="flex_attention cannot run the"):
            TrainConfig(train_data=["x.jsonl"], attn_implementation="flex_attention", layout=layout)
    code = main(
        ["train", "--train-data", "x.jsonl", "--model", str(tmp_path), "--attn-implementation", "flex_attention"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--attn-implementation flex_attention cannot run the auto" in err and "Traceback" not in err
    TrainConfig(train_data=["x.jsonl"], attn_implementation="flex_attention", layout="padded")  # accepted
    flex = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), attn_implementation="flex_attention")
    tok, _ = tokenize_groups(flex, groups_k2_to_9()[:2])
    with pytest.raises(ValueError, match="cannot run the packed layout"):
        batch_rewards(flex, collate(tok, flex.tokenizer.pad_token_id, "packed"))


def test_allowed_pairs_are_the_pairs_the_segments_hold():
    """The cost model's count of a segment-aware kernel's work is what the collated segments hold, per layout."""
    g = [
        TokenizedGroup([[1] * 7 + [3, 2], [1] * 7 + [4] * 5 + [2]], [0, 1]),
        TokenizedGroup([[5, 6, 2], [5, 2]], [1, 0]),
    ]
    for layout in ("padded", "packed", "kv"):
        b = collate(g, 0, layout)
        held = b.segments.pairs + (b.prompt.segments.pairs if b.prompt is not None else 0)
        assert held == sum(allowed_pairs(x, layout) for x in g), layout
    # by hand, packed: prompt 7 (28 pairs), tails 2 and 6 over it: 2 * 7 + 3 + 6 * 7 + 21; group 2: 1 + (2 + 3) + 1 + 1
    assert [allowed_pairs(x, "packed") for x in g] == [28 + 17 + 63, 1 + 5 + 2]


def test_auto_counts_the_pairs_a_segment_aware_kernel_computes():
    """K = 9, prompt 5, tails of 199 (eight) and 150 (one), attention pair = 1/100 of a token's matmuls. A dense-mask
    kernel computes the packed row's square, 1747 x (1 + 17.47) = 32267: kv wins (5.25 + 9 x 199 x 3.04 = 5450.6).
    A segment-aware kernel computes the allowed pairs only, 15 + 8 (199 x 5 + 199 x 200 / 2) + (150 x 5 + 150 x 151 / 2)
    = 179250 for packed and kv alike: packed then wins on slots (1747 against kv's 5 + 9 x 199 = 1796)."""
    tails = [[i] * 198 + [2] for i in range(3, 11)] + [[11] * 149 + [2]]
    g = TokenizedGroup([[1] * 5 + t for t in tails], list(range(9)))
    assert g.prompt_length == 5 and allowed_pairs(g, "packed") == allowed_pairs(g, "kv") == 179250
    assert batch_cost([g], "packed", 1e-2) == pytest.approx(1747 * 18.47)
    assert batch_cost([g], "kv", 1e-2) == pytest.approx(5.25 + 9 * 199 * 3.04)
    assert choose_layout([g], "auto", 1e-2) == "kv"
    assert batch_cost([g], "packed", 1e-2, segment_aware=True) == pytest.approx(1747 + 1792.5)
    assert batch_cost([g], "kv", 1e-2, segment_aware=True) == pytest.approx(1796 + 1792.5)
    assert choose_layout([g], "auto", 1e-2, segment_aware=True) == "packed"
    assert plan_batches([g, g], 10_000, "auto", 1e-2) == [([0, 1], "kv")]
    assert plan_batches([g, g], 10_000, "auto", 1e-2, segment_aware=True) == [([0, 1], "packed")]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rankrm_sdpa_leaves_grouped_heads_unrepeated(model_dirs, arch, monkeypatch):
    """A rankrm pass through sdpa on a CPU hands SDPA the 2 key/value heads of the 4 query heads as they are
    (enable_gqa) instead of transformers' repeat_kv copies: repeat_kv then runs 0 times (it ran in every layer
    before). In every layout (K = 2..9, ties, mixed lengths, left padding) the rewards equal transformers' own sdpa
    function's to the last bit, and the gradients to 1e-6 relative (1e-7 absolute for entries near 0): SDPA adds a
    key/value head's gradient over its query heads inside the kernel, in another order than repeat_kv's backward
    sums the copies (measured: the key, value, norm and embedding gradients differ by at most 6e-8)."""
    from transformers import AttentionInterface
    from transformers.integrations import sdpa_attention as hf_sdpa

    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs[f"{arch}-chat"]), max_length=256)
    tok, _ = tokenize_groups(m, groups_k2_to_9())
    repeats = []
    repeat_kv = hf_sdpa.repeat_kv
    monkeypatch.setattr(hf_sdpa, "repeat_kv", lambda x, n: repeats.append(n) or repeat_kv(x, n))
    cases = [("padded", "right"), ("padded", "left"), ("packed", "right"), ("kv", "right")]
    ours = {case: _rewards_and_grads(m, tok, case[0], padding_side=case[1]) for case in cases}
    assert repeats == []
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", hf_sdpa.sdpa_attention_forward)
    for case in cases:
        want_r, want_g = _rewards_and_grads(m, tok, case[0], padding_side=case[1])
        r, g = ours[case]
        assert want_r.std() > 0 and torch.equal(r, want_r), case
        assert g.keys() == want_g.keys()
        for n, w in want_g.items():
            torch.testing.assert_close(g[n], w, rtol=1e-6, atol=1e-7, msg=f"{case} {n}")
        assert not all(torch.equal(g[n], want_g[n]) for n in g)  # another summation order, not the same path
    assert repeats and set(repeats) == {2}  # transformers' own path repeated the heads


def test_rankrm_sdpa_is_transformers_own_for_other_callers(model_dirs, monkeypatch):
    """A backbone called without rankrm's batch (another library's model in the same process, as TRL's in
    benchmarks/throughput.py) gets transformers' sdpa function unchanged: repeat_kv runs, as it always did."""
    from transformers.integrations import sdpa_attention as hf_sdpa

    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    repeats = []
    repeat_kv = hf_sdpa.repeat_kv
    monkeypatch.setattr(hf_sdpa, "repeat_kv", lambda x, n: repeats.append(n) or repeat_kv(x, n))
    m.backbone(input_ids=torch.tensor([[5, 6, 7], [5, 6, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert repeats == [2, 2] * 2  # keys and values, in each of the 2 layers
