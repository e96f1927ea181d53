"""The training entry point end to end on tiny models: learning a known rule, resuming, the CLI, bad input."""

import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, assert_trained, synthetic_groups, write_jsonl
from safetensors.torch import load_file

from rankrm.cli import main
from rankrm.data.encode import tokenize_groups
from rankrm.data.groups import RankedGroup
from rankrm.modeling.batch import packed_length
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.run import train
from rankrm.training.state import TrainResult


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return write_jsonl(d / "train.jsonl", synthetic_groups(240, 1)), write_jsonl(
        d / "eval.jsonl", synthetic_groups(60, 2)
    )


def tiny_cfg(model_dirs, synth, out, **kw):
    base = dict(
        model=str(model_dirs["llama-chat"]),
        train_data=[str(synth[0])],
        eval_data=[str(synth[1])],
        output_dir=str(out),
        epochs=4,
        learning_rate=3e-3,
        batch_size=8,
        max_length=64,
        seed=0,
        warmup_ratio=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_learns_a_known_rule_to_95_percent(model_dirs, synth, tmp_path, caplog, monkeypatch):
    """Also: the library's lines come through logging, and a run loads one tokenizer and tokenizes each
    completion once (counted on the real tokenizer class, while the run prepares its own store)."""
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    loads, texts = [], []
    real_load, real_call = AutoTokenizer.from_pretrained.__func__, PreTrainedTokenizerBase.__call__

    def load(cls, *a, **kw):
        loads.append(a[0])
        return real_load(cls, *a, **kw)

    def call(self, text=None, *a, **kw):
        texts.extend([text] if isinstance(text, str) else list(text or []))
        return real_call(self, text, *a, **kw)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(load))
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", call)
    caplog.set_level(logging.INFO, logger="rankrm")
    res = train(tiny_cfg(model_dirs, synth, tmp_path / "run", data_cache=str(tmp_path / "cache"), num_proc=1))
    monkeypatch.undo()
    assert len(loads) == 1  # the run's TextEncoder, which the model reads through too
    rows = [json.loads(x) for f in synth for x in f.read_text().splitlines()]
    times = Counter(c for r in rows for c in r["completions"])  # a completion may recur in another group
    assert all(sum(t.endswith(c + "<|im_end|>") for t in texts) == n for c, n in times.items())  # each once
    assert isinstance(res, TrainResult) and res.after == res["after"]
    said = {r.name for r in caplog.records}, caplog.messages
    assert {"rankrm.training.run", "rankrm.data.prepare", "rankrm.training.loop"} <= said[0]
    for line in ("train data:", "model:", "tokens:", "before training:", "after training:", "tokens read:", "trained"):
        assert any(m.startswith(line) for m in said[1]), line
    assert any(m.startswith("training: 120/120 steps") for m in said[1])  # the progress line at the end
    assert res["before"]["accuracy"] < 0.8
    assert res["after"]["accuracy"] >= 0.95, res["after"]
    assert res["after"]["log_loss"] < res["before"]["log_loss"]
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["after"]["accuracy"] == res["after"]["accuracy"]
    assert saved == res.to_json()
    # the saved model scores as it did at the end of training
    m = RewardModel.from_pretrained(str(tmp_path / "run"))
    rows = [json.loads(x) for x in synth[1].read_text().splitlines()]
    g = rows[0]
    rewards = m.score([g["prompt"]] * 4, g["completions"])
    best, worst = g["ranks"].index(0), g["ranks"].index(3)
    assert rewards[best] > rewards[worst]


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(model_dirs, synth, tmp_path):
    kw = dict(epochs=1, max_steps=6, save_steps=3, keep_checkpoints=5, train_layers=1)
    full = train(tiny_cfg(model_dirs, synth, tmp_path / "full", **kw))
    # a run stopped at step 3: the same schedule (max_steps 6), but it only gets as far as its first checkpoint
    ckpt = tmp_path / "full" / "checkpoints" / "step-3"
    assert ckpt.is_dir()
    resumed = train(tiny_cfg(model_dirs, synth, tmp_path / "resumed", resume=str(ckpt), **kw))
    assert resumed["after"]["accuracy"] == full["after"]["accuracy"]
    assert resumed["after"]["log_loss"] == pytest.approx(full["after"]["log_loss"], rel=1e-6)
    a = RewardModel.from_pretrained(str(tmp_path / "full"))
    b = RewardModel.from_pretrained(str(tmp_path / "resumed"))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    # and the resumed run really did start at step 3, with a model different from the start
    fresh = RewardModel.from_pretrained(str(model_dirs["llama-chat"]))
    assert not torch.allclose(fresh.backbone.layers[-1].mlp.up_proj.weight, b.backbone.layers[-1].mlp.up_proj.weight)


def test_train_layers_freezes_all_but_the_top(model_dirs, synth, tmp_path):
    from rankrm.modeling.frozen import select_trainable

    m = RewardModel.from_pretrained(str(model_dirs["gpt2-chat"]))
    names = select_trainable(m, 1)
    assert names and all(n.startswith(("hf.transformer.h.1.", "hf.transformer.ln_f.", "hf.score.")) for n in names)
    assert any(n.startswith("hf.transformer.ln_f.") for n in names)
    assert select_trainable(m, 0) == ["hf.transformer.ln_f.weight", "hf.transformer.ln_f.bias", "hf.score.weight"]


def test_cli_trains_from_a_yaml_config_and_evaluates(model_dirs, synth, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {model_dirs['qwen2-chat']}\ntrain-data: {synth[0]}\neval_fraction: 0.25\n"
        f"max-steps: 2\nbatch-size: 4\nlearning-rate: 1e-3\nmax-length: 64\nseed: 1\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--output-dir", str(out), "--seed", "3"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    # the flag wins over the YAML key; YAML fills the rest; '1e-3' (a string to PyYAML) is read as a number
    assert res["config"]["seed"] == 3 and res["config"]["batch_size"] == 4
    assert res["config"]["learning_rate"] == 1e-3 and res["steps"] == 2
    assert res["eval_groups"] == 60  # a quarter of the 240 prompts
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(synth[1]), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["groups"] == 60 and m["pairs"] == 60 * 6 and 0 <= m["accuracy"] <= 1 and m["log_loss"] > 0


def test_cli_bad_data_names_file_and_line_and_writes_nothing(model_dirs, synth, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", synthetic_groups(3, 5) + ['{"prompt": "x", "completions": ["a"]}'])
    out = tmp_path / "run"
    code = main(["train", "--model", str(model_dirs["llama-chat"]), "--train-data", str(bad), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl:4:" in err and "'completions'" in err and "Fix:" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_unknown_yaml_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train-data: x.jsonl\nlearning_rat: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown setting 'learning_rat'" in capsys.readouterr().err


def test_shuffled_pairs_regime_forwards_each_completion_k_minus_1_times(model_dirs, synth, tmp_path):
    """240 groups of K=4 (6 pairs each): grouped forwards 960 completions an epoch in 30 steps of 8 prompts;
    shuffled-pairs forwards the 1,440 pairs' 2,880 completions in 30 steps of 48 comparisons."""
    kw = dict(epochs=1, train_layers=0, eval_data=[str(synth[1])])
    g = train(tiny_cfg(model_dirs, synth, tmp_path / "g", regime="grouped", **kw))
    s = train(tiny_cfg(model_dirs, synth, tmp_path / "s", regime="shuffled-pairs", **kw))
    assert (g["steps"], g["completions_forwarded"]) == (30, 960)
    assert (s["steps"], s["completions_forwarded"]) == (30, 2880)
    backbone, top = model_dirs["llama-chat"], lambda n: n.startswith("model.norm.")  # train_layers 0: norm + head
    assert_trained(g, backbone, tmp_path / "g", top)
    assert_trained(s, backbone, tmp_path / "s", top)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("g", "s"))
    assert not torch.equal(a["model.norm.weight"], b["model.norm.weight"])  # the regimes really train differently


def test_bf16_autocast_trains(model_dirs, synth, tmp_path):
    res = train(tiny_cfg(model_dirs, synth, tmp_path / "b", max_steps=2, bf16=True))
    assert_trained(res, model_dirs["llama-chat"], tmp_path / "b", lambda n: True)  # the whole model trains


def _step_gradients(model_dirs, rows, arch="llama-chat", attn=None, checkpointing=False, frozen=False, **cfg_kw):
    from rankrm.data.encode import tokenize_groups
    from rankrm.data.groups import RankedGroup
    from rankrm.evaluation.evaluate import evaluate_groups
    from rankrm.modeling.frozen import FrozenLayerCache, layer_stack, select_trainable
    from rankrm.training.loop import backward_step

    cfg_kw.setdefault("layout", "padded")
    torch.manual_seed(0)
    m = RewardModel.from_pretrained(str(model_dirs[arch]), max_length=64, attn_implementation=attn)
    m.train()
    if checkpointing:
        m.enable_checkpointing()
    groups, _ = tokenize_groups(m, [RankedGroup(r["prompt"], tuple(r["completions"]), tuple(r["ranks"])) for r in rows])
    cache = None
    if frozen:  # train the top layer only, the frozen ones replayed from the cache the first pass filled
        select_trainable(m, 1)
        cache = FrozenLayerCache(m.backbone, 1)
        evaluate_groups(m, groups, layout=cfg_kw["layout"], cache=cache)
        m.train()

    calls = []
    inner = next(layer_stack(m.backbone)[1][-1].children())  # inside the layer: rerun when it is recomputed
    inner.register_forward_hook(lambda *a: calls.append(1))
    out = backward_step(
        m,
        groups,
        1 / len(groups),
        micro_batch_tokens=cfg_kw.get("micro_batch_tokens", 4096),
        layout=cfg_kw["layout"],
        attention_per_token=m.attention_per_token,
        pad_id=m.tokenizer.pad_token_id,
        cache=cache,
        kv=not checkpointing,
    )
    passes = sum(2 if how == "kv" else 1 for how in out.layouts)  # kv: a prompt pass, then a completion pass
    assert len(calls) == (2 if checkpointing else 1) * passes  # checkpointing: recomputed in the backward pass
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "variant",
    [
        dict(micro_batch_tokens=40),
        dict(layout="packed"),
        dict(layout="kv"),
        dict(layout="auto"),
        dict(layout="kv", arch="qwen2-chat"),
        dict(checkpointing=True),
        dict(attn="eager"),
        dict(arch="gpt2-chat"),
        dict(frozen=True, layout="packed", micro_batch_tokens=100),
    ],
)
def test_the_step_gradient_is_the_same_whatever_the_batching(model_dirs, variant):
    """One step of 8 groups (K = 2..4, ties) as one forward pass (padded), one pass per group (a 40-token budget),
    packed rows, kv, auto, with checkpointing, eager attention, or replayed from the frozen-layer cache: the gradient is
    the mean over the step's groups of each group's loss gradient, either way."""
    rows = synthetic_groups(8, 7, k=4)
    for i, r in enumerate(rows):  # mixed K and a tie
        r["completions"], r["ranks"] = r["completions"][: 2 + i % 3], r["ranks"][: 2 + i % 3]
    rows[0]["ranks"][0] = rows[0]["ranks"][1] = 0
    rows[0]["completions"].append("good good good")
    rows[0]["ranks"].append(1)
    arch = variant.pop("arch", "llama-chat")
    base = {k: variant[k] for k in ("frozen",) if k in variant}
    want_stats, want = _step_gradients(model_dirs, rows, arch=arch, **base)
    got_stats, got = _step_gradients(model_dirs, rows, arch=arch, **variant)
    assert len(got) == len(want) > 3 and any(g.abs().sum() > 0 for g in want.values())
    for n, g in want.items():
        torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-6, msg=n)
    assert float(got_stats.loss) == pytest.approx(float(want_stats.loss), rel=1e-5)
    assert got_stats.completions == want_stats.completions == sum(len(r["completions"]) for r in rows)


def test_training_with_buckets_packing_and_checkpointing_runs(model_dirs, synth, tmp_path):
    res = train(
        tiny_cfg(
            model_dirs,
            synth,
            tmp_path / "r",
            max_steps=3,
            length_sort_window=4,
            layout="auto",
            gradient_checkpointing=True,
            train_layers=1,
        )
    )
    assert_trained(
        res, model_dirs["llama-chat"], tmp_path / "r", lambda n: n.startswith(("model.layers.1.", "model.norm."))
    )


def test_train_into_a_log_file_shows_progress_lines_and_no_carriage_return(model_dirs, synth, tmp_path):
    """`rankrm train ... > log 2>&1` (not a terminal): progress as log lines, no tqdm frames; the tokens read in the
    packed layout count each group's prompt once, against every row's tokens for one row per completion."""
    out, log = tmp_path / "run", tmp_path / "train.log"
    args = ["--model", str(model_dirs["llama-chat"]), "--train-data", str(synth[0]), "--eval-data", str(synth[1])]
    args += ["--output-dir", str(out), "--epochs", "1", "--batch-size", "8", "--max-length", "64", "--layout", "packed"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "rankrm", "train", *args, "--no-plots"], stdout=f, stderr=f, env=env
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    lines = text.splitlines()
    assert any(x.startswith("training: 30/30 steps (") and "loss" in x and "tokens/s" in x for x in lines), text
    i = [next(j for j, x in enumerate(lines) if x.startswith(p)) for p in ("train data:", "before training:", "after")]
    assert i == sorted(i)  # in the order the run says them
    res = json.loads((out / "eval_results.json").read_text())
    after = lines.index(next(x for x in lines if x.startswith("after training:")))
    length = res["after"]["length"]  # the length baseline follows the final metrics, its warning when not beaten
    assert lines[after + 1].startswith(f"length: the model {res['after']['accuracy']:.4f}; the longer completion wins")
    assert (length.get("warning") in lines) == bool(length.get("warning"))
    model = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=64)
    groups = [json.loads(x) for x in synth[0].read_text().splitlines()]
    tok, _ = tokenize_groups(
        model, [RankedGroup(g["prompt"], tuple(g["completions"]), tuple(g["ranks"])) for g in groups]
    )
    assert res["train_tokens"] == sum(packed_length(g) for g in tok)  # one epoch: every group once
    assert res["train_tokens_per_completion_layout"] == sum(g.tokens for g in tok)
    assert res["train_tokens"] < res["train_tokens_per_completion_layout"]
    ratio = res["train_tokens_per_completion_layout"] / res["train_tokens"]
    assert f"one row per completion would have read {res['train_tokens_per_completion_layout']} ({ratio:.2f}x)" in text


def test_tokens_read_count_a_shared_prompt_once_in_the_packed_and_kv_layouts(model_dirs):
    """Two groups, worked by hand. A: rows [p p p a a E], [p p p b b b E], [p p p c E]: 3 shared prompt tokens
    (the longest prefix all rows share, leaving each its last token); 6 + 7 + 5 = 18 tokens as rows, 3 + 3 + 4 + 2
    = 12 packed. B: rows [q q d E], [q q e e E]: 2 shared; 4 + 5 = 9 as rows, 2 + 2 + 3 = 7 packed. One row per
    completion reads 27; packed and kv (a prompt pass, then the completions' own tokens) read 19."""
    from rankrm.data.encode import TokenizedGroup
    from rankrm.training.loop import backward_step

    m = RewardModel.from_pretrained(str(model_dirs["llama-chat"]), max_length=64)
    e = m.tokenizer.eos_token_id
    p, q, a, b, c, d, x = 20, 21, 30, 31, 32, 33, 34
    groups = [
        TokenizedGroup([[p, p, p, a, a, e], [p, p, p, b, b, b, e], [p, p, p, c, e]], [0, 1, 2]),
        TokenizedGroup([[q, q, d, e], [q, q, x, x, e]], [1, 0]),
    ]
    read = {}
    for layout in ("padded", "packed", "kv"):
        st = backward_step(
            m,
            groups,
            0.5,
            micro_batch_tokens=4096,
            layout=layout,
            attention_per_token=0.0,
            pad_id=m.tokenizer.pad_token_id,
        )
        read[layout] = (st.layouts, st.tokens, st.per_completion_tokens, st.completions)
    assert read == {
        "padded": (["padded"], 27, 27, 5),
        "packed": (["packed"], 19, 27, 5),
        "kv": (["kv"], 19, 27, 5),
    }


@pytest.mark.parametrize("layout", ["packed", "kv"])
def test_training_with_the_segment_aware_attention_equals_sdpa(model_dirs, synth, tmp_path, layout):
    """rankrm_varlen trains through the loop and the evaluation without dense masks (collate's dense_mask=False,
    segment-aware planning), and ends where the dense-mask SDPA run ends: the same held-out figures, weights within
    1e-4 after 4 steps. The two compute the same attention in another summation order (rewards agree to ~1e-8); AdamW
    then moves a weight whose gradient is near 0 by up to the learning rate whatever its size, so a last-bit
    difference there shows as ~1e-5 (measured: 1.06e-5 in one of 2048 entries, kv)."""
    from safetensors.torch import load_file

    kw = dict(max_steps=4, layout=layout, train_layers=-1)
    ref = train(tiny_cfg(model_dirs, synth, tmp_path / "sdpa", attn_implementation="sdpa", **kw))
    lean = train(tiny_cfg(model_dirs, synth, tmp_path / "varlen", attn_implementation="rankrm_varlen", **kw))
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("sdpa", "varlen"))
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    assert lean["after"]["pairs"] == ref["after"]["pairs"] > 0
    assert lean["after"]["log_loss"] == pytest.approx(ref["after"]["log_loss"], abs=1e-5)
