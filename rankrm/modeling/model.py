"""RewardModel: a pretrained backbone without its LM head, plus a scalar head read at each completion's last token."""

from __future__ import annotations

import functools
import inspect
import json
import math
from pathlib import Path

import torch
from torch import nn

from rankrm.data.encode import PAD_TOKEN, TextEncoder, add_pad_token
from rankrm.errors import ModelError, NonFiniteError, SettingsError
from rankrm.files import TMP_PREFIX, atomic_dir
from rankrm.modeling.attention import OWN_PASS, SEGMENT_AWARE, layout_problem, sdpa_mask
from rankrm.modeling.attention import register as register_attention
from rankrm.modeling.batch import Batch
from rankrm.modeling.card import CARD_FILE, model_card
from rankrm.modeling.heads import HeadSpec, add_reward_bias, label_config
from rankrm.modeling.hub import DEFAULT_MODEL, resolve
from rankrm.modeling.kvcache import select_rows
from rankrm.modeling.scoring import Scoring, batch_outputs, batch_rewards
from rankrm.modeling.segments import Segments
from rankrm.progress import library_bars

__all__ = ["RewardModel", "batch_outputs", "batch_rewards"]  # the batch paths live in scoring.py, imported from here

META_FILE = "rankrm.json"
# what a save writes; everything else in a model directory (a run's checkpoints, metrics, held-out data) is kept
MODEL_FILE_NAMES = (
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "merges.txt",
    META_FILE,
)
MODEL_FILE_PREFIXES = ("model", "pytorch_model", "tokenizer", "vocab")


def is_model_file(name: str) -> bool:
    """Whether a directory entry belongs to a saved model (replaced by the next save) rather than to its run."""
    return name in MODEL_FILE_NAMES or name.startswith(MODEL_FILE_PREFIXES)


def ensure_pad_token(hf, tokenizer) -> None:
    """Give the model a pad token distinct from EOS, so that Hugging Face's pooling (last non-pad token) reads EOS."""
    add_pad_token(tokenizer)  # a no-op when the model's TextEncoder added it already
    # rankrm's own pad token, added to this tokenizer, needs an embedding row (a saved reward model has one)
    if tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id >= hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    hf.config.pad_token_id = tokenizer.pad_token_id


class RewardModel(Scoring, nn.Module):
    """A Hugging Face backbone without its LM head plus a linear head (heads.py; output 0 is the reward r(x, y)),
    read at y's last token (EOS). Its scoring methods (score, score_groups, ...) are in scoring.py."""

    def __init__(
        self,
        hf_model,
        tokenizer=None,
        max_length: int = 1024,
        *,
        encoder: TextEncoder | None = None,
        head: HeadSpec | None = None,
    ):
        """tokenizer and max_length make the model's TextEncoder; or give the encoder itself (its tokenizer and max
        length), the one a training run prepared its data with. head: what the head's outputs mean (scalar)."""
        super().__init__()
        register_attention()  # a backbone built by hand (not from_pretrained) reaches rankrm's sdpa too
        encoder = encoder or TextEncoder(tokenizer, max_length)
        ensure_pad_token(hf_model, encoder.tokenizer)
        if not isinstance(getattr(hf_model, "score", None), nn.Linear):
            raise ModelError(
                f"{type(hf_model).__name__} has no last-token 'score' head; rankrm supports decoder "
                "backbones whose sequence-classification head reads the last token (Llama, Qwen2, "
                "GPT-2, Mistral, ...)."
            )
        head = head or HeadSpec()
        if hf_model.score.out_features != head.num_outputs:
            raise ModelError(
                f"the model's head has {hf_model.score.out_features} outputs, its {head.kind} head description "
                f"{head.num_outputs}. Fix: load it with RewardModel.from_pretrained, which reads rankrm.json's 'head'"
            )
        self.hf = hf_model
        self.encoder = encoder
        self.head_spec = head
        self.normalization: dict | None = None  # statistics of the demonstrations, once normalized (rankrm.json)
        self.calibration: dict | None = None  # the temperature folded into the weights (rankrm.json)

    # -- loading and saving ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        dtype=torch.float32,
        max_length: int | None = None,
        attn_implementation: str | None = None,
        encoder: TextEncoder | None = None,
        head: HeadSpec | None = None,
    ):
        """Load a saved reward model, or a pretrained LM (hub id or local path) with a new head (`head`: scalar).

        attn_implementation: sdpa, eager, ... as transformers names them (None: transformers' default, sdpa).
        encoder: the TextEncoder to read through (a training run's, loaded once for its data and its model), instead
        of the directory's tokenizer loaded again; it decides the max length. A saved model's head is the one its
        rankrm.json describes (a missing description: scalar); a different `head` for it is refused. Custom model
        code is never run (transformers' trust_remote_code stays off)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve(name_or_path)
        meta = {}
        if (Path(path) / META_FILE).is_file():
            meta = json.loads((Path(path) / META_FILE).read_text())
            saved = HeadSpec.from_json(meta.get("head"), str(Path(path) / META_FILE))
            if head is not None and head != saved:
                raise SettingsError(
                    f"{path} holds a trained {saved.kind} head ({saved.num_outputs} outputs); a {head.kind} head "
                    f"({head.num_outputs} outputs) was asked for. Fix: leave the head setting out to use the saved "
                    "one, or start from the base LM to train another head"
                )
            head = saved
        head = head or HeadSpec()
        if encoder is not None and max_length not in (None, encoder.max_length):
            raise ValueError(f"max_length {max_length} and the encoder's {encoder.max_length} differ: give one")
        if encoder is None:
            encoder = TextEncoder(AutoTokenizer.from_pretrained(path), max_length or meta.get("max_length", 1024))
        verbosity = hf_logging.get_verbosity()
        if not meta:  # a fresh head is expected to be missing from an LM checkpoint: no load report for it
            hf_logging.set_verbosity_error()
        register_attention()  # rankrm_varlen, and sdpa's rankrm passes (attention.py)
        try:
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            with library_bars("transformers"):  # its "Loading weights" bar: on a terminal only
                hf = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=head.num_outputs, dtype=dtype, **extra
                )
        finally:
            hf_logging.set_verbosity(verbosity)
        label_config(hf.config, head)
        model = cls(hf, encoder=encoder, head=head)
        model.normalization = meta.get("normalization")
        model.calibration = meta.get("calibration")
        return model

    def check_finite(self, state_dict: dict | None = None) -> None:
        """Refuse weights holding NaN or infinity (a diverged run): such a model is never saved."""
        tensors = state_dict.items() if state_dict is not None else self.named_parameters()
        bad = [n for n, p in tensors if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad or not math.isfinite(self.reward_bias):
            raise NonFiniteError(
                f"the model holds non-finite values ({len(bad)} tensors, e.g. {(bad or ['reward_bias'])[0]}"
                "); not saved. Fix: lower the learning rate, or resume from an earlier checkpoint"
            )

    def write(self, out: Path, state_dict: dict | None = None) -> None:
        """Write the model's files into an existing directory (save_pretrained makes that atomic); state_dict:
        the weights to write instead of the module's (a sharded model's, gathered), named as in this module."""
        self.hf.config.problem_type = "regression"  # serving engines (vLLM) then return the raw reward, no sigmoid
        if state_dict is not None:
            state_dict = {n.removeprefix("hf."): t for n, t in state_dict.items()}
        with library_bars("transformers"):  # its "Writing model shards" bar: on a terminal only
            self.hf.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
        self.tokenizer.save_pretrained(out)
        meta = {
            "format": "rankrm-reward-model",
            "max_length": self.max_length,
            "eos_token": self.tokenizer.eos_token,
            "pad_token": self.tokenizer.pad_token,
            "chat_template": bool(self.tokenizer.chat_template),
            "normalization": self.normalization,
            "calibration": self.calibration,
            "head": self.head_spec.to_json(),
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def save_pretrained(
        self, out_dir, extra_files: dict[str, str] | None = None, state_dict: dict | None = None
    ) -> None:
        """Save a plain Hugging Face directory (safetensors, config, tokenizer, chat template) plus rankrm.json.

        The directory is replaced as a whole (files.atomic_dir): a reader sees the old model or the new one, never a
        mix. Entries that are not model files (a run's checkpoints, metrics, held-out data) are kept; extra_files
        (name -> text) are written with the model; state_dict: the weights to write (Module.state_dict names)
        instead of the module's own, as a sharded model's are gathered."""
        self.check_finite(state_dict)
        out, extra = Path(out_dir), extra_files or {}
        keep = (
            tuple(
                p.name
                for p in out.iterdir()
                if not is_model_file(p.name) and p.name not in extra and not p.name.startswith(TMP_PREFIX)
            )
            if out.is_dir()
            else ()
        )
        with atomic_dir(out, keep=keep) as tmp:
            self.write(tmp, state_dict)
            for name, text in extra.items():
                (tmp / name).write_text(text)
            if CARD_FILE not in extra:  # the model card, from the metrics saved with the model (or kept beside it)
                results = tmp / "eval_results.json" if "eval_results.json" in extra else out / "eval_results.json"
                (tmp / CARD_FILE).write_text(self.card(out.name, results))

    def card(self, name: str, results_file: Path) -> str:
        """The directory's README.md (modeling/card.py): the held-out metrics of results_file when it exists."""
        results = json.loads(results_file.read_text()) if results_file.is_file() else None
        base = (results or {}).get("config", {}).get("model") or getattr(self.hf.config, "_name_or_path", None)
        return model_card(name, base or None, results, self.normalization, self.calibration)

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

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.encoder.max_length = value

    @property
    def adds_bos(self) -> bool:
        return self.encoder.adds_bos

    def render_prompt(self, prompt) -> str:
        """The prompt as text (TextEncoder.render_prompt)."""
        return self.encoder.render_prompt(prompt)

    def render(self, prompt, completion: str) -> str:
        """Exactly the text the backbone reads for (prompt, completion), ending with the EOS token."""
        return self.encoder.render(prompt, completion)

    def tokenize(self, prompts, completions) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each rendered pair, cut from the left to max_length (TextEncoder.tokenize)."""
        return self.encoder.tokenize(prompts, completions)

    # -- forward -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def _cache_argument(self) -> str:
        """The backbone's name for a key/value cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
        return "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"

    @property
    def segment_aware(self) -> bool:
        """Whether the attention reads the batch's segments (rankrm_varlen): collate then needs no dense mask
        (collate's dense_mask=False), and the cost model counts allowed pairs (plan_batches' segment_aware)."""
        return self.hf.config._attn_implementation in SEGMENT_AWARE

    def _attention(self, mask: torch.Tensor, segments: Segments | None) -> dict:
        """The attention arguments of one backbone pass: the batch's segments for a segment-aware function (which
        transformers hands the mask unread); else the mask as the implementation takes it: eager adds a 4D mask to the
        scores (allowed 0, masked the most negative float); sdpa, marked as a rankrm pass (attention.sdpa_attention:
        grouped key/value heads unrepeated on a CPU), takes it as SDPA's additive mask, made once for all layers on a
        CPU where every layer computes in one dtype (attention.sdpa_mask); the others take the bool mask as it is."""
        impl = self.hf.config._attn_implementation
        if impl in SEGMENT_AWARE:
            return {"attention_mask": mask, "rankrm_segments": segments}
        if mask.dim() == 4 and impl == "eager":
            dtype = next(self.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        if impl == "sdpa":  # a rankrm pass (attention.sdpa_attention), its mask converted once (sdpa_mask)
            dtypes = {p.dtype for p in self.hf.parameters()}  # bf16 frozen layers under fp32 trained ones: mixed
            return {"attention_mask": sdpa_mask(mask, dtypes.pop()) if len(dtypes) == 1 else mask, OWN_PASS: True}
        return {"attention_mask": mask}

    def forward(self, batch: Batch) -> torch.Tensor:
        """The head's outputs (N, O) at the flat positions batch.end_index of the (B, T) batch; output 0 is the reward,
        reward_bias included (heads.add_reward_bias).

        The kv layout (batch.prompt): a first pass over each group's prompt keeps its keys and values; every
        completion row then attends to its group's (gathered by prompt.group_index) and its own tokens."""
        impl = self.hf.config._attn_implementation
        if problem := layout_problem(impl, batch.layout):
            raise SettingsError(problem)
        if batch.layout != "padded" and impl not in SEGMENT_AWARE and batch.attention_mask.dim() != 4:
            raise RuntimeError(f"a {batch.layout} batch collated with dense_mask=False needs a segment-aware attention")
        kw = {"use_cache": False}
        if batch.prompt is not None:
            p, name = batch.prompt, self._cache_argument
            first = self.backbone(
                input_ids=p.input_ids,
                position_ids=p.position_ids,
                use_cache=True,
                **self._attention(p.attention_mask, p.segments),
            )
            cache = getattr(first, name)
            select_rows(cache, p.group_index)  # (G, ...) -> (N, ...): each row its group's prompt
            kw = {"use_cache": True, name: cache}
        hidden = self.backbone(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            **self._attention(batch.attention_mask, batch.segments),
            **kw,
        ).last_hidden_state  # (B, T, H)
        h_end = hidden.reshape(-1, hidden.shape[-1])[batch.end_index]  # (N, H)
        return add_reward_bias(self.head(h_end).float(), self.reward_bias, self.head_spec)  # (N, O)
