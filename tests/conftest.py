"""Tiny tokenizers and models built offline from configs: Llama, Qwen2 and GPT-2 shapes with random weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "rankrm" / "shipped"
OASST_TREES = SHIPPED / "oasst_en_100_tree.jsonl"
OASST_FLAT = SHIPPED / "oasst1_en_validation.jsonl"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYNTH_WORDS = ["good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird"]


def _corpus() -> list[str]:
    texts = []
    with open(OASST_TREES, encoding="utf-8") as f:
        for line in list(f)[:30]:
            texts.append(json.loads(line)["prompt"]["text"])
    return texts + [" ".join(SYNTH_WORDS)] * 20 + ["User: Assistant: System:"] * 5


def build_tokenizer(out: Path, chat_template: bool, pad_is_eos: bool, vocab_size: int = 400):
    """A byte-level BPE tokenizer (vocab 400 by default) trained on a little real text, saved as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>" if pad_is_eos else "<|endoftext|>",
    )
    if chat_template:
        tok.chat_template = CHATML
    tok.save_pretrained(out)
    return tok


def build_model_dir(out: Path, arch: str, tok, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """A randomly initialised causal LM of the given shape, saved with its tokenizer, as a pretrained backbone."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    vocab = len(tok)
    common = dict(
        vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    elif arch == "qwen2":
        cfg = Qwen2Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(cfg)
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Prepared stores go to a directory of this test session (also for the CLI processes tests start)."""
    import os

    path = tmp_path_factory.mktemp("data-cache")
    old = os.environ.get("RANKRM_DATA_CACHE")
    os.environ["RANKRM_DATA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RANKRM_DATA_CACHE", None)
    else:
        os.environ["RANKRM_DATA_CACHE"] = old


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for name, chat, pad_eos in [("chat", True, False), ("plain", False, False), ("pad_eos", True, True)]:
        out[name] = build_tokenizer(root / name, chat, pad_eos)
    return out


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizers_dir):
    """Backbone directories: {arch}-{tokenizer kind} for llama/qwen2/gpt2 and chat/plain/pad_eos."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ("llama", "qwen2", "gpt2"):
        for kind, tok in tokenizers_dir.items():
            dirs[f"{arch}-{kind}"] = build_model_dir(root / f"{arch}-{kind}", arch, tok)
    return dirs


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def synthetic_groups(n: int, seed: int, k: int = 4):
    """A known preference rule: the more times a completion says 'good', the better it ranks (equal counts tie)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        counts = rng.sample(range(5), k)  # distinct counts of 'good', so no group is all tied
        comps = []
        for c in counts:
            words = ["good"] * c + [rng.choice(SYNTH_WORDS[2:]) for _ in range(6 - c)]
            rng.shuffle(words)
            comps.append(" ".join(words))
        ranks = [sorted(counts, reverse=True).index(c) for c in counts]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Say something good, please (#{seed}-{len(rows)})."}],
                "completions": comps,
                "ranks": ranks,
            }
        )
    return rows


def assert_trained(res, backbone_dir, run_dir, trains) -> None:
    """'It trained', as TRL's tests say it: every backbone parameter that trains (trains(name) is True) changed and
    every other one is bit-equal to the backbone's, and the held-out log loss fell. The head starts fresh, so it is
    not in the backbone to compare with."""
    from safetensors.torch import load_file

    before = load_file(str(Path(backbone_dir) / "model.safetensors"))
    after = load_file(str(Path(run_dir) / "model.safetensors"))
    common = [n for n in after if n in before and before[n].shape == after[n].shape]
    assert common, "no backbone parameter found in the saved model"
    stayed = [n for n in common if trains(n) and torch.equal(before[n], after[n])]
    moved = [n for n in common if not trains(n) and not torch.equal(before[n], after[n])]
    assert not stayed, f"trainable parameters that did not change: {stayed}"
    assert not moved, f"frozen parameters that changed: {moved}"
    assert any(trains(n) for n in common), "nothing trainable to check"
    assert res["after"]["log_loss"] < res["before"]["log_loss"], (res["before"], res["after"])
