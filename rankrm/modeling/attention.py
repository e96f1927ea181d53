"""Attention that fits each layout: a segment-aware function that computes only the (query, key) pairs a layout
allows, and which transformers attention implementations can run which layout.

`rankrm_varlen`, registered in transformers' AttentionInterface, reads the batch's Segments (segments.py): each
segment's queries and keys are gathered from the layer's (B, H, T, D) tensors, attended with bottom-right causal
alignment, and the outputs scattered back; no (B, T, T) mask is built or read. On CUDA in bf16/fp16 it runs
flash-attn's varlen kernel where flash_attn imports, else torch's (torch.nn.attention.varlen, flash inside); on a
CPU, or in fp32, an exact emulation: the segments padded to one length and attended by SDPA with a per-segment
mask, so the index construction is the same one the GPU kernels read. Prior art: the shared-prefix varlen form of
li-plus/flash-preference, and flash_attn_varlen_func's bottom-right causal alignment."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from rankrm.modeling.segments import Segments

VARLEN = "rankrm_varlen"
SEGMENT_AWARE = (VARLEN,)  # read batch.segments; no dense mask
DENSE_MASK = ("sdpa", "eager")  # apply a (B, 1, T, S) mask exactly as given (eager as an additive float mask)
# flash_attention_2/3/4 take no 4D mask; flex_attention adds a tensor mask to the scores instead of masking (a bool
# mask adds 0 or 1; measured: wrong rewards, then a crash in the packed layout). Both are right for padded rows.
ALL_LAYOUTS = ("padded", "packed", "kv", "auto")


def layouts_for(attn_implementation: str) -> tuple[str, ...]:
    """The layouts an attention implementation runs correctly: all for sdpa, eager and rankrm_varlen; padded only
    (a 2D padding mask, which transformers handles itself) for every other."""
    if attn_implementation in SEGMENT_AWARE or attn_implementation in DENSE_MASK:
        return ALL_LAYOUTS
    return ("padded",)


def layout_problem(attn_implementation: str, layout: str) -> str | None:
    """Why an attention implementation cannot run a layout (with the fix), or None when it can."""
    if layout in layouts_for(attn_implementation):
        return None
    what = "auto layout (which may choose packed or kv)" if layout == "auto" else f"{layout} layout"
    return (
        f"--attn-implementation {attn_implementation} cannot run the {what} correctly: it does not apply the "
        "(B, 1, T, S) mask that keeps a prompt's completions apart (flash_attention_* take no 4D mask, "
        "flex_attention adds it to the scores). Fix: use --attn-implementation "
        f"{VARLEN} (segment-aware: flash varlen on GPUs) or sdpa, or --layout padded"
    )


def kernel_name(query: torch.Tensor) -> str:
    """Which kernel rankrm_varlen runs for a query tensor: flash_attn, torch_varlen or sdpa_emulation."""
    if not (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)):
        return "sdpa_emulation"
    return "flash_attn" if importlib.util.find_spec("flash_attn") is not None else "torch_varlen"


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    rankrm_segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: (B, Hq, T, D) queries, (B, Hk, Tk, D) keys and values -> (B, T, Hq, D).

    Padding queries belong to no segment: their output is 0 (no reward is read there)."""
    seg = rankrm_segments
    if seg is None:
        raise ValueError(
            f"{VARLEN} attention needs the batch's segments (RewardModel.forward passes them). Fix: call the "
            "RewardModel on a rankrm Batch, or load the backbone with attn_implementation='sdpa' to use it alone"
        )
    if dropout > 0:
        raise ValueError(f"{VARLEN} attention runs without dropout. Fix: set the backbone's attention dropout to 0")
    b, hq, t, d = query.shape
    hk, tk = key.shape[1], key.shape[2]
    q = query.transpose(1, 2).reshape(b * t, hq, d)[seg.q_index]  # (Nq, Hq, D)
    k = key.transpose(1, 2).reshape(b * tk, hk, d)[seg.k_index]  # (Nk, Hk, D)
    v = value.transpose(1, 2).reshape(b * tk, hk, value.shape[-1])[seg.k_index]  # (Nk, Hk, Dv)
    scale = scaling if scaling is not None else d**-0.5
    how = kernel_name(q)
    if how == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        o = flash_attn_varlen_func(
            q, k, v, seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, softmax_scale=scale, causal=True
        )  # bottom-right causal alignment when lq != lk (flash-attn >= 2.1)
    elif how == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        o = varlen_attn(
            q, k, v, seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, scale=scale, window_size=(-1, 0), enable_gqa=hq != hk
        )
    else:
        o = emulate(q, k, v, seg, scale)
    out = o.new_zeros(b * t, hq, o.shape[-1]).index_copy(0, seg.q_index, o)  # (B * T, Hq, Dv)
    return out.view(b, t, hq, -1), None


def emulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float) -> torch.Tensor:
    """Exact varlen attention by SDPA: (Nq, Hq, D) packed queries, (Nk, Hk, D) keys -> (Nq, Hq, Dv).

    The segments are padded to (S, max_q) queries and (S, max_k) keys; query i of a segment with lq queries and lk
    keys sees keys j <= i + lk - lq (bottom-right causal) and j < lk. A padding query sees key 0 (no empty softmax
    row); its output is dropped."""
    lq, lk = seg.cu_q.diff().long(), seg.cu_k.diff().long()  # (S,), (S,)
    i = torch.arange(seg.max_q, device=q.device)  # (Lq,)
    j = torch.arange(seg.max_k, device=q.device)  # (Lk,)
    q_real = i[None, :] < lq[:, None]  # (S, Lq)
    k_real = j[None, :] < lk[:, None]  # (S, Lk)
    q_at = (seg.cu_q[:-1, None].long() + i).clamp(max=q.shape[0] - 1)  # (S, Lq): into the packed queries
    k_at = (seg.cu_k[:-1, None].long() + j).clamp(max=k.shape[0] - 1)  # (S, Lk)
    allowed = k_real[:, None, :] & (j[None, None, :] <= i[None, :, None] + (lk - lq)[:, None, None])  # (S, Lq, Lk)
    allowed[:, :, 0] |= ~q_real
    qs, ks, vs = q[q_at].transpose(1, 2), k[k_at].transpose(1, 2), v[k_at].transpose(1, 2)  # (S, H, L, D)
    o = F.scaled_dot_product_attention(
        qs, ks, vs, attn_mask=allowed[:, None], scale=scale, enable_gqa=qs.shape[1] != ks.shape[1]
    )  # (S, Hq, Lq, Dv)
    return o.transpose(1, 2)[q_real]  # (Nq, Hq, Dv): segment after segment, as q_index orders them


# SDPA takes grouped key/value heads itself (enable_gqa) from torch 2.5
SDPA_TAKES_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")
OWN_PASS = "rankrm_pass"  # the keyword RewardModel.forward gives sdpa: a rankrm pass, which sdpa_attention may change
# keywords backbones hand the attention function that transformers' sdpa function leaves unread (the mask already
# holds the sliding window); any other (softcap, position_bias, sinks, ...) goes to transformers' own function
SDPA_READS_NOT = {"sliding_window", "position_ids", "use_cache", "cache_position"}


def sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    rankrm_pass: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, with one change for rankrm's own passes on a CPU: a grouped-query backbone's
    keys and values go to SDPA as they are (enable_gqa), not repeated per query head.

    transformers repeats them (repeat_kv: a copy of every key and value per query head, summed back in the
    backward) whenever a mask is given, as CUDA's masked kernels would fall back to the math kernel for grouped
    heads. On a CPU, SDPA's flash kernel takes the mask and the grouped heads together, with the same outputs and
    gradients to the last bit (tests/modeling/test_attention.py); the copies were the kv layout's largest extra
    cost, its keys (P + T per completion row) five times its queries in benchmarks/throughput.py's K = 9 setting
    (docs/benchmarks.md). Everywhere else (CUDA, no mask, dropout, another caller) transformers' own function runs."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mine = rankrm_pass and SDPA_TAKES_GQA and query.device.type == "cpu" and attention_mask is not None
    if not mine or getattr(module, "num_key_value_groups", 1) == 1 or dropout > 0 or set(kwargs) - SDPA_READS_NOT:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None  # (B, T, Hq, Dv), as transformers' function returns it


def sdpa_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A pass's 4D bool mask as the additive float mask SDPA makes of it (0 allowed, -inf masked), made once for all
    the layers: on a CPU SDPA converts a bool mask in every layer (a torch.where over (B, 1, T, S), kept for the
    backward), and a float mask gives the same outputs and gradients to the last bit. A CPU outside autocast only,
    where the query's dtype is the weights' (dtype), which a float mask must have; elsewhere the mask as it is."""
    if mask.dim() != 4 or mask.dtype != torch.bool or mask.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


def register() -> None:
    """Make `rankrm_varlen` an attn_implementation every transformers backbone can load (Llama, Qwen2, GPT-2, ...),
    and `sdpa` sdpa_attention (transformers' own function for every caller but a rankrm pass);
    RewardModel.from_pretrained calls it (transformers is imported only then)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionInterface.register("sdpa", sdpa_attention)
