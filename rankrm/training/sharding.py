"""FSDP2: PyTorch's `fully_shard` applied to the reward model directly (per decoder layer, then the root), as
torchtune and torchtitan apply it, so the same code runs on GPUs (nccl) and on CPU processes (gloo).

The engine is named by the Accelerate recipe the run is launched with (configs/accelerate/fsdp_*.yaml): a user of
`accelerate launch --config_file ...` expects the recipe to choose the engine, as it does for DDP. Accelerate 1.15
cannot run FSDP on CPUs (its plugin asks for a GPU), so rankrm reads the recipe's FSDP settings from the launcher's
environment, lets Accelerate set up the plain process group, and shards the model itself.

What sharding changes elsewhere, each with its reason:
- every forward and backward is collective (parameters are all-gathered per layer, gradients reduce-scattered), so
  every process runs the same number of passes in a step and in an evaluation (zero-weight or discarded passes
  where its share is shorter: `agree_passes`);
- gradients are reduce-scattered after every micro-batch, so a step's accumulated gradient stays sharded (1/N per
  process) instead of a whole unsharded copy held until the last micro-batch (what `set_requires_gradient_sync
  (False)` would keep: 4 bytes per parameter on every process, the memory sharding is there to save);
- checkpoints and the saved model are the full state gathered once into rank 0's CPU memory and written in the
  formats a one-process run writes, so a checkpoint resumes exactly on any number of processes (or on one);
- after an evaluation every gathered parameter is freed (`reshard`): shard-grad-op keeps them after a forward
  without backward, and its next step then trained 2.5e-3 away from one process (measured);
- heads: an ensemble's and a weighted attributes head's reward row is re-tied after each step on the gathered
  rows (tie_reward_row); ODIN's root stays gathered from forward to backward (shard_model);
- refused: LoRA (merged on whole weights for the save) and training with the kv layout (its prompt keys and values
  reach the backward outside the layers' outputs); off: the frozen-layer cache (it calls layers one by one).
Limits, not yet measured on GPUs: every process loads the whole backbone into CPU memory before sharding (no
meta-device loading), and rank 0 holds the full weights and AdamW state in CPU memory to save a checkpoint
(16 bytes per parameter: 96 GB for 6B); DCP's sharded safetensors storage would remove the second.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from rankrm.errors import SettingsError
from rankrm.modeling.heads import reward_mix, tie_row
from rankrm.training import zero

FULL, GRAD_OP = "full shard", "shard-grad-op"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sharding:
    """How the model is sharded: full shard (parameters resharded after each layer's forward, ZeRO-3-like) or
    shard-grad-op (parameters kept whole from forward to backward, ZeRO-2-like: less communication, more memory)."""

    name: str
    reshard_after_forward: bool


def engine_from_launch(environ: dict | None = None) -> Sharding | None:
    """The FSDP engine the Accelerate recipe asks for (None: not FSDP); refuses recipe settings rankrm does not
    honour, naming the setting and the fix."""
    environ = os.environ if environ is None else environ  # at call time: datasets' map(num_proc) rebinds os.environ
    if environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return None
    fix = "Fix: use configs/accelerate/fsdp_full_shard.yaml or fsdp_shard_grad_op.yaml as shipped"
    if environ.get("FSDP_VERSION", "1") == "2":
        reshard = environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
        if reshard not in ("true", "false"):
            raise SettingsError(f"fsdp_reshard_after_forward: {reshard!r} with fsdp_version 2 (true or false). {fix}")
        engine = Sharding(FULL if reshard == "true" else GRAD_OP, reshard == "true")
    else:  # an FSDP1 recipe: its strategy is what FSDP2 expresses as reshard_after_forward
        strategy = environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        known = {"FULL_SHARD": Sharding(FULL, True), "1": Sharding(FULL, True)}
        known |= {"SHARD_GRAD_OP": Sharding(GRAD_OP, False), "2": Sharding(GRAD_OP, False)}
        if strategy not in known:
            raise SettingsError(
                f"fsdp_sharding_strategy: {strategy} is not run by rankrm (FULL_SHARD or SHARD_GRAD_OP; for no "
                f"sharding launch with configs/accelerate/ddp.yaml). {fix}"
            )
        engine = known[strategy]
    for name, why in (
        ("OFFLOAD_PARAMS", "offloading to CPU memory is not applied by rankrm"),
        ("ACTIVATION_CHECKPOINTING", "pass rankrm's --gradient-checkpointing instead"),
    ):
        if environ.get(f"FSDP_{name}", "false").lower() == "true":
            raise SettingsError(f"fsdp_{name.lower()}: true in the recipe: {why}. Fix: set it to false")
    return engine


@contextlib.contextmanager
def plain_process_group():
    """Around Accelerator(): it sets up the plain process group (MULTI_GPU or MULTI_CPU) rather than its own FSDP
    plugin, which cannot start on CPUs; rankrm shards the model itself (shard_model). The launcher's setting is
    restored after, for the next run in the same process."""
    environ = os.environ  # at call time (see engine_from_launch)
    saved = environ.get("ACCELERATE_USE_FSDP")
    environ["ACCELERATE_USE_FSDP"] = "false"
    try:
        yield
    finally:
        if saved is None:
            environ.pop("ACCELERATE_USE_FSDP", None)
        else:
            environ["ACCELERATE_USE_FSDP"] = saved


@contextlib.contextmanager
def launch_context(engine: Sharding | None, stage: int | None, kwargs: dict):
    """Around Accelerator(**kwargs), yielding the kwargs to build it with: FSDP2 (plain_process_group), DeepSpeed
    (zero.engine_process_group) or DDP / one process (as given)."""
    if engine is not None:
        with plain_process_group():
            yield kwargs
    elif stage is not None:
        with zero.engine_process_group(kwargs) as kw:
            yield kw
    else:
        yield kwargs


def is_sharded(model: nn.Module) -> bool:
    """Whether fully_shard was applied to model, or it trains under a DeepSpeed ZeRO engine (the engine or its
    RewardModel): every forward and backward is then collective."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or zero.engine_of(model) is not None


def backward(accelerator, model: nn.Module, loss: torch.Tensor, last: bool) -> None:
    """One pass's backward: through the DeepSpeed engine (last: the step's accumulation boundary, where it steps),
    Accelerate (DDP, FSDP2) or plain autograd (no accelerator)."""
    engine = zero.engine_of(model)
    if accelerator is None:
        loss.backward()
    elif engine is not None:
        zero.backward(engine, loss, last)
    else:
        accelerator.backward(loss)


def check_supported(lora_r: int, layout: str, what: str = "FSDP", head: str = "scalar") -> None:
    """Refuse what sharding (what: FSDP, DeepSpeed ZeRO-2 or ZeRO-3) cannot run as asked."""
    if layout == "kv":
        raise SettingsError(
            f"--layout kv with {what}: the prompt's keys and values reach the backward outside the layers' outputs, "
            "where sharding gathers a layer's weights again. Fix: --layout auto (sharded, it trains with padded or "
            "packed rows, and evaluates with kv where cheaper), packed or padded"
        )
    if head == "odin" and what.endswith("ZeRO-3"):
        raise SettingsError(
            f"--length-head with {what}: ODIN's orthogonality term |w_q . w_l| reads the head's two rows after the "
            "forward, where ZeRO-3 has partitioned them again (each process holds an empty placeholder), and a "
            "gradient reaching them outside a module's forward is not reduced by the engine. Fix: launch it with "
            "configs/accelerate/deepspeed_zero2.yaml or fsdp_full_shard.yaml (both train it as one process does)"
        )
    if lora_r:
        raise SettingsError(
            f"--lora-r with {what}: the adapters are merged into the whole backbone for the saved model, which "
            "rankrm does not do on sharded weights yet. Fix: launch LoRA with configs/accelerate/ddp.yaml "
            f"(the frozen backbone can load in bf16: --dtype bf16), or train the whole model under {what}"
        )


def tie_reward_row(core) -> None:
    """heads.tie_reward_row on the head as it trains, after each step (collective: every process calls it): held
    whole (one process, DDP); sharded by FSDP2 (each process holds some of its rows, so the rows are gathered,
    tied, and each process's own written back); under ZeRO, the optimizer's fp32 master copy, which the engine
    copies into the model at its next step (zero.tie_reward_row)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    mix = reward_mix(core.head_spec)
    if mix is None:
        return
    if zero.engine_of(core) is not None:
        return zero.tie_reward_row(core.head, mix)
    for t in (core.head.weight, core.head.bias):
        if isinstance(t, DTensor):
            full = t.detach().full_tensor().clone()
            tie_row(full, mix)
            with torch.no_grad():
                t.to_local().detach().copy_(distribute_tensor(full, t.device_mesh, t.placements).to_local())
        elif t is not None:
            tie_row(t, mix)


def shard_model(model, engine: Sharding, accelerator, bf16: bool) -> nn.Module:
    """fully_shard each decoder layer, then the root (the RewardModel: embeddings, final norm, head), on a mesh of
    all processes; bf16: parameters all-gathered and computed in bf16, gradients reduced and kept in fp32.

    ODIN's orthogonality term reads the head's rows after the forward: its root stays gathered from forward to
    backward (FSDP2's own default for a root), so the term reads the whole rows and its gradient is reduced with
    the rest. Full shard would reshard it: the loss would then meet the sharded DTensor rows."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = accelerator.num_processes
    model.to(accelerator.device)
    mesh = init_device_mesh(accelerator.device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mesh": mesh, "reshard_after_forward": engine.reshard_after_forward}
    if policy is not None:
        kw["mp_policy"] = policy
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(
        model, **{**kw, "reshard_after_forward": kw["reshard_after_forward"] and model.head_spec.kind != "odin"}
    )
    total = sum(p.numel() for p in model.parameters())
    mine = sum(p.to_local().numel() for p in model.parameters())
    log.info(
        f"FSDP2 {engine.name} over {world} processes: each holds 1/{world} of {total / 1e6:.2f}M parameters "
        f"(this one {mine / 1e6:.2f}M: {len(layers)} decoder layers + the root sharded; "
        f"{'bf16 compute, fp32 master weights and gradient reduction' if bf16 else 'fp32'})"
    )
    return model


def decoder_layers(model) -> list[nn.Module]:
    """The backbone's repeated blocks (Llama, Qwen2, Mistral: .layers; GPT-2: .h): one FSDP unit each."""
    backbone = model.backbone
    for name in ("layers", "h", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return list(blocks)
    raise SettingsError(
        f"{type(backbone).__name__} has no list of decoder layers (.layers or .h) to shard one by one. "
        "Fix: launch with configs/accelerate/ddp.yaml"
    )


def reshard(model: nn.Module) -> None:
    """Free every gathered parameter. After forward passes without a backward (an evaluation) shard-grad-op keeps
    them whole, and its next training forward would then reuse them (and each process hold the whole model)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def agree_passes(n: int, device) -> int:
    """The most passes any process has (one all-reduce): each runs that many, since every pass is collective."""
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model gathered in CPU memory on rank 0 (empty on the others);
    collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if zero.engine_of(model) is not None:
        return zero.full_model_state(model)

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_training_state(model, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainable weights and the optimizer's state_dict, gathered on rank 0 as a one-process run has them
    (parameters numbered in the optimizer's order), so its checkpoint resumes on any number of processes;
    collective. The other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if zero.engine_of(model) is not None:
        return zero.full_training_state(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = full_model_state(model)
    osd = get_optimizer_state_dict(model, optimizer, options=options)
    if not weights:
        return {}, {}
    names = _optimizer_names(model, optimizer)
    number = {n: i for i, n in enumerate(names)}
    trainable = {n: weights[n] for n in names}
    state = {number[n]: s for n, s in osd["state"].items()}
    groups = [{**g, "params": [number[n] for n in g["params"]]} for g in osd["param_groups"]]
    return trainable, {"state": state, "param_groups": groups}


def load_training_state(model, optimizer, trainable: dict, optimizer_state: dict) -> None:
    """Shard a checkpoint's full trainable weights and optimizer state (a one-process state_dict) into the model
    and optimizer; every process calls it with the whole checkpoint."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if zero.engine_of(model) is not None:
        return zero.load_training_state(model, trainable, optimizer_state)
    names = _optimizer_names(model, optimizer)
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, {n: trainable[n] for n in names}, options=options)
    osd = {
        "state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def _optimizer_names(model, optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order a state_dict numbers them."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for g in optimizer.param_groups for p in g["params"]]
