"""DeepSpeed ZeRO-2 and ZeRO-3 through Accelerate (configs/accelerate/deepspeed_zero2.yaml, deepspeed_zero3.yaml):
Accelerate builds DeepSpeed's engine from the recipe; rankrm drives it so that its run trains what one process does.

- Every backward is collective (ZeRO-2 reduce-scatters gradients at every backward, ZeRO-3 also gathers each
  layer's weights for every forward), so every process runs the same number of passes in a step and in an
  evaluation (sharding.agree_passes: zero-weight or discarded passes where a share is shorter).
- One gradient-accumulation boundary per step: the last pass. The engine then clips (at --max-grad-norm, written
  into its config), checks the gradient and steps the optimizer; a NaN or infinite gradient norm makes it drop the
  update itself, and rankrm's guard (stop, or --on-nonfinite skip) reads that norm back from it.
- The saved model and checkpoints are the full fp32 state gathered on rank 0 through DeepSpeed's tensor-fragment
  API (safe_get_full_fp32_param, safe_get_full_optimizer_state), in the formats a one-process run writes
  (safetensors + JSON, no pickle): a checkpoint resumes exactly on any number of processes, or on one, or under
  FSDP2. DeepSpeed's own checkpoints (torch.save files) are not used.
- Accelerate on a CPU machine (ACCELERATE_USE_CPU=1) would run plain DDP instead of the recipe's engine: rankrm
  builds the Accelerator without that setting and with a gloo process group, so the same recipe runs on CPU
  processes (tests) and GPUs.
Refused, with why: ZeRO stages 0 and 1, offloading, zero.Init at load (zero3_init_flag), a DeepSpeed JSON config
file, recipe gradient accumulation, fp16; LoRA and the kv layout (as under FSDP2: sharding.check_supported), ODIN's
length head under ZeRO-3 (its loss reads the head's rows after the forward, partitioned again by then). A tied
reward row (ensemble, weighted attributes) is re-set on the engine's fp32 master copy (tie_reward_row)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref

import torch
from torch import nn

from rankrm.errors import SettingsError
from rankrm.modeling.heads import tie_row

log = logging.getLogger(__name__)
_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the RewardModel -> its DeepSpeed engine
_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the engine -> trainable names, optimizer order
FIX = "Fix: use configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml as shipped"


def stage_from_launch(max_grad_norm: float, environ: dict | None = None) -> int | None:
    """The ZeRO stage the Accelerate recipe asks for (None: not DeepSpeed); refuses recipe settings rankrm does
    not honour, naming the setting and the fix."""
    env = os.environ if environ is None else environ  # at call time: datasets' map(num_proc) rebinds os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        raise SettingsError(
            "deepspeed_config_file in the recipe: rankrm reads the recipe's own deepspeed_config settings "
            f"(zero_stage, mixed_precision) and sets the engine's batch, accumulation and clipping itself. {FIX}"
        )
    stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (2, 3):
        raise SettingsError(
            f"zero_stage: {stage} is not run by rankrm (2 or 3; without sharding launch with "
            f"configs/accelerate/ddp.yaml). {FIX}"
        )
    for key, why in (
        ("OFFLOAD_OPTIMIZER_DEVICE", "offloading is not run by rankrm yet"),
        ("OFFLOAD_PARAM_DEVICE", "offloading is not run by rankrm yet"),
    ):
        if env.get(f"ACCELERATE_DEEPSPEED_{key}", "none").lower() != "none":
            raise SettingsError(
                f"{key.lower()}: {env[f'ACCELERATE_DEEPSPEED_{key}']} in the recipe: {why}. Fix: set it to none"
            )
    if stage == 3 and env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true").lower() == "true":  # Accelerate's default
        raise SettingsError(
            "zero3_init_flag: true in the recipe: rankrm builds the reward head and picks the trainable "
            "parameters on whole weights, which zero.Init would partition while they load. Fix: set it to false "
            "(every process loads the backbone, then the engine partitions it)"
        )
    if env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1") not in ("1", "auto"):
        raise SettingsError(
            "gradient_accumulation_steps in the recipe: rankrm accumulates over its micro-batches itself "
            "(--micro-batch-tokens; one optimizer step per --batch-size groups). Fix: set it to 1"
        )
    clip = env.get("ACCELERATE_GRADIENT_CLIPPING", "auto")
    if clip not in ("auto", "none") and float(clip) != max_grad_norm:
        raise SettingsError(
            f"gradient_clipping: {clip} in the recipe, but --max-grad-norm is {max_grad_norm:g}: the engine clips "
            "at rankrm's --max-grad-norm. Fix: remove gradient_clipping from the recipe (or pass the same value)"
        )
    if env.get("ACCELERATE_MIXED_PRECISION", "no") == "fp16":
        raise SettingsError("mixed_precision: fp16 with DeepSpeed is not run by rankrm. Fix: bf16 or 'no'")
    return stage


@contextlib.contextmanager
def engine_process_group(kwargs: dict):
    """Around Accelerator(**kwargs): without ACCELERATE_USE_CPU (under it Accelerate runs plain DDP on CPUs, not
    the recipe's engine) and, on a machine without GPUs, with a gloo process group; restored after. Accelerate
    also registers its ZeRO config with transformers, whose from_pretrained would then load a ZeRO-3 model
    partitioned (zero.Init) whatever zero3_init_flag says: unregistered, so the backbone loads whole."""
    from accelerate.utils import InitProcessGroupKwargs
    from transformers.integrations import unset_hf_deepspeed_config

    saved = os.environ.pop("ACCELERATE_USE_CPU", None)
    if not torch.cuda.is_available():
        kwargs = {**kwargs, "kwargs_handlers": [*kwargs.get("kwargs_handlers", []), InitProcessGroupKwargs("gloo")]}
        skip_shm_comm()
    try:
        yield kwargs
    finally:
        unset_hf_deepspeed_config()
        if saved is not None:
            os.environ["ACCELERATE_USE_CPU"] = saved


def skip_shm_comm() -> None:
    """DeepSpeed's CPU accelerator compiles its shared-memory all-reduce (deepspeed_shm_comm: a C++ op, JIT-built
    into ~/.cache/torch_extensions, 234 s measured on a busy 2-core machine, once per machine) when its comm
    backend starts, for tensor-parallel inference only (deepspeed.comm.inference_all_reduce); ZeRO's collectives
    go through torch.distributed (gloo), so the op changes nothing rankrm runs. Marked incompatible in the probed
    op table (deepspeed.ops.__compatible_ops__, which TorchBackend reads before it builds), it is not built.
    GPUs: the CUDA accelerator has no such op."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # the probed table, one dict kept by the module


def configure(accelerator, max_grad_norm: float) -> None:
    """The engine's settings that rankrm decides: one micro-batch of its own per engine backward (the step's size
    is rankrm's --batch-size), no engine-side accumulation, clipping at --max-grad-norm (0: none)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["train_batch_size"] = accelerator.num_processes
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = float(max_grad_norm)


def prepare(accelerator, model: nn.Module, optimizer, stage: int):
    """accelerator.prepare under DeepSpeed: the engine and its optimizer; the RewardModel is registered with its
    engine (is_sharded, the state gathering) and the trainable names kept in the optimizer's order."""
    name = {id(p): n for n, p in model.named_parameters()}
    names = [name[id(p)] for g in optimizer.param_groups for p in g["params"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    _ = model.attention_per_token  # read from the weights' sizes: cached now, ZeRO-3 leaves empty placeholders
    engine, wrapped = accelerator.prepare(model, optimizer)
    _engines[model], _names[engine] = engine, (names, sizes)
    total = sum(_numel(p) for p in model.parameters())
    world = accelerator.num_processes
    held = "parameters, gradients and optimizer state" if stage == 3 else "gradients and optimizer state"
    log.info(
        f"DeepSpeed ZeRO-{stage} over {world} processes: each holds 1/{world} of the {held} of "
        f"{total / 1e6:.2f}M parameters{'' if stage == 3 else ' (parameters whole on each)'}; "
        f"{'bf16' if engine.bfloat16_enabled() else 'fp32'} compute, fp32 master weights in the optimizer"
    )
    return engine, wrapped


def engine_of(model) -> object | None:
    """The DeepSpeed engine of a RewardModel or the engine itself (None: not under DeepSpeed)."""
    if model in _engines:
        return _engines[model]
    ds = sys.modules.get("deepspeed")
    return model if ds is not None and isinstance(model, ds.DeepSpeedEngine) else None


def backward(engine, loss: torch.Tensor, boundary: bool) -> None:
    """One pass's backward; at the step's last pass (the boundary) the engine reduces the gradients, clips them
    and steps the optimizer (or drops the update on a NaN or infinite norm)."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss)
    if boundary:
        engine.step()


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the RewardModel on rank 0, as a one-process run's state_dict (trained ones
    the optimizer's fp32 master weights); empty on the others. Collective (ZeRO-3 gathers): every process calls it."""
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    rank0 = torch.distributed.get_rank() == 0
    out = {}
    for n, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, nn.Parameter) and t.requires_grad:
            full = safe_get_full_fp32_param(t)
        elif hasattr(t, "ds_id"):  # a ZeRO-3 partitioned frozen parameter
            with zero.GatheredParameters([t]):
                full = t.detach().clone()
        else:
            full = t.detach()
        if rank0:
            out[n] = full.detach().to("cpu", copy=True)
    return out


def full_training_state(model) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainable weights (fp32 master) and AdamW's state_dict on rank 0 as a one-process run has them
    (parameters numbered in the optimizer's order); collective. The other ranks get empty dicts."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    engine = _engines[model]
    _link_optimizer_state(engine)
    params = dict(model.named_parameters())
    names, sizes = _names[engine]
    inner = engine.optimizer.optimizer  # the client AdamW, its groups holding the flat fp32 partitions
    steps = [s["step"] for s in inner.state.values() if "step" in s]
    trainable, state = {}, {}
    for i, n in enumerate(names):
        p = params[n]
        w = safe_get_full_fp32_param(p)
        moments = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")} if steps else {}
        trainable[n] = w.detach().cpu().clone()
        if steps:
            state[i] = {"step": steps[0].detach().cpu().clone(), **{k: v.cpu().clone() for k, v in moments.items()}}
    if torch.distributed.get_rank() != 0:
        return {}, {}
    groups, at = [], 0
    for g, size in zip(inner.param_groups, sizes):
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(at, at + size))})
        at += size
    return trainable, {"state": state, "param_groups": groups}


def load_training_state(model, trainable: dict, optimizer_state: dict) -> None:
    """A checkpoint's full trainable weights and AdamW state (a one-process state_dict) into the engine's
    partitions; every process calls it with the whole checkpoint."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    engine = _engines[model]
    names, _ = _names[engine]
    inner = engine.optimizer.optimizer
    saved = optimizer_state["state"]
    if saved:  # AdamW makes its state at the first step: made here so that the fragments have a place
        step = next(iter(saved.values()))["step"]
        for flat in _flat_partitions(engine):
            inner.state[flat] = {
                "step": step.clone(),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }
        _link_optimizer_state(engine)
    params = dict(model.named_parameters())
    for i, n in enumerate(names):
        safe_set_full_fp32_param(params[n], trainable[n].to(params[n].device))
        _set_model_weight(params[n], trainable[n])
        for k in ("exp_avg", "exp_avg_sq"):
            if saved:
                s = saved[i] if i in saved else saved[str(i)]
                safe_set_full_optimizer_state(params[n], s[k].to(params[n].device), k)
    for g, s in zip(inner.param_groups, optimizer_state["param_groups"]):
        g.update({k: v for k, v in s.items() if k != "params"})


def tie_reward_row(head: nn.Linear, mix: torch.Tensor) -> None:
    """heads.tie_row on the head's fp32 master weights (the optimizer's partitions, gathered) and on the model's
    own copy, which the forward reads; collective. Tied on the model's copy alone, it would be overwritten by the
    untied master copy at the next step."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    for p in (head.weight, head.bias):
        if p is not None:
            full = safe_get_full_fp32_param(p).detach().clone()
            tie_row(full, mix)
            safe_set_full_fp32_param(p, full)
            _set_model_weight(p, full)


def _flat_partitions(engine) -> list[torch.Tensor]:
    """The flat fp32 partitions AdamW keeps its state under: ZeRO-3 sets them into its groups only while it steps."""
    opt = engine.optimizer
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):  # ZeRO-3, ZeRO-2
        if getattr(opt, name, None):
            return list(getattr(opt, name))
    return [p for g in opt.optimizer.param_groups for p in g["params"]]


def _set_model_weight(p: nn.Parameter, value: torch.Tensor) -> None:
    """The model's own copy of a weight, which the forward reads (safe_set_full_fp32_param sets the optimizer's
    master copy only; the engine copies master to model at its next step). ZeRO-2: whole on every process;
    ZeRO-3: gathered, set on rank 0 and partitioned again (collective)."""
    from deepspeed import zero

    if not hasattr(p, "ds_id"):
        with torch.no_grad():
            p.copy_(value.to(p.device, p.dtype))
        return
    with zero.GatheredParameters([p], modifier_rank=0):
        if torch.distributed.get_rank() == 0:
            with torch.no_grad():
                p.copy_(value.to(p.device, p.dtype))


def _link_optimizer_state(engine) -> None:
    """Point each parameter's ZeRO-2 fragment at AdamW's state again. DeepSpeed 0.19 links them once, after the
    first group's first step, so the groups after it (rankrm's head has a group of its own, at its own rate) have
    no moments to gather ("exp_avg not found in optimizer state fragment"). ZeRO-3 reads the state directly."""
    opt = engine.optimizer
    if hasattr(opt, "_hp_optimizer_states_linked") and hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _numel(p: torch.Tensor) -> int:
    """A parameter's full size (ZeRO-3 keeps an empty placeholder and its partition: ds_numel)."""
    return int(getattr(p, "ds_numel", p.numel()))
