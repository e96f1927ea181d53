"""The optimizer steps of a training run: each step's forward and backward in micro-batches, the NaN guard,
evaluations and checkpoints on the way, and a clean stop on a signal. `run.py` sets the run up and calls `loop`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.errors import CheckpointError, NonFiniteError
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.model import batch_outputs
from rankrm.progress import Progress
from rankrm.training.checkpoint import save_checkpoint
from rankrm.training.config import TrainConfig
from rankrm.training.objective import HeadLoss, micro_batch_loss
from rankrm.training.prefetch import EpochPlan, StepBatches, StepRecipe, step_prefetcher, unit_groups
from rankrm.training.sharding import agree_passes, backward, full_training_state, is_sharded, tie_reward_row
from rankrm.training.signals import TrainingInterrupted
from rankrm.training.state import Prepared, Run, RunState, StepStats
from rankrm.training.tracking import scalars
from rankrm.training.validation import all_sum, evaluate_during

log = logging.getLogger(__name__)
SCALAR = HeadLoss()  # the scalar head's pairwise loss: the K-wise loss of output 0


# -- one optimizer step -----------------------------------------------------------------------------------------


def backward_step(
    model,
    groups: list[TokenizedGroup],
    weight: float,
    *,
    micro_batch_tokens: int,
    layout: str,
    attention_per_token: float,
    pad_id: int,
    cache: FrozenLayerCache | None = None,
    accelerator=None,
    bf16: bool = False,
    kv: bool = True,
    segment_aware: bool = False,
    objective: HeadLoss | None = None,
    unit_ids: list[int] | None = None,
    prepared: StepBatches | None = None,
) -> StepStats:
    """Forward and backward over one step's groups in micro-batches of micro_batch_tokens padded tokens; gradients
    accumulate in .grad with each group weighted by `weight` (1/G for a step of G groups), so the update is the
    mean over the step's groups however they are batched. objective: the loss (training/objective.py: the ranking
    objective and the head's terms); unit_ids: the groups' indices among the run's training units (an ensemble's
    bootstrap weights are per unit); prepared: the step's micro-batches planned and collated ahead
    (training/prefetch.py, by the same recipe); else they are made here, on the critical path."""
    device = next(model.parameters()).device
    recipe = StepRecipe(micro_batch_tokens, layout, attention_per_token, pad_id, kv and cache is None, segment_aware)
    prepared = prepared or recipe.prepare(groups, device)
    if prepared.recipe != recipe:
        raise RuntimeError(f"a step prefetched as {prepared.recipe} is run as {recipe}")
    micro = prepared.micro
    out = StepStats(torch.zeros((), device=device), layouts=[how for _, how in micro], host_seconds=prepared.waited)
    # sharded, every pass is collective: a process with fewer micro-batches adds zero-weight passes over its first
    n_passes = agree_passes(len(micro), device) if is_sharded(model) else len(micro)
    for mi in range(n_passes):
        real = mi < len(micro)
        idx, how = micro[mi] if real else (micro[0][0][:1], micro[0][1])
        b = prepared.batches[mi] if real else recipe.collate([groups[j] for j in idx], how).to(device)
        sync = mi == n_passes - 1 or accelerator is None
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):  # FSDP: syncs each (stays sharded)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = batch_outputs(model, b, cache)  # (N, O): output 0 the reward
            units = [unit_ids[j] for j in idx] if unit_ids is not None else list(idx)
            sub, w = [groups[j] for j in idx], weight if real else 0.0
            step = micro_batch_loss(objective or SCALAR, model, outputs, b, sub, w, units)
            stats, loss = step.stats, step.loss
            backward(accelerator, model, loss, sync)  # DeepSpeed: the engine steps at the last pass
        if not real:
            continue
        out.tokens += b.real_tokens
        out.per_completion_tokens += sum(len(r) for j in idx for r in groups[j].ids)
        out.completions += len(b.end_index)
        out.loss += stats.loss.detach().sum()
        out.correct += stats.correct.sum()
        out.pairs += stats.pairs.detach().sum()
        if step.center is not None:
            out.center += step.center.sum()
    return out


@dataclass
class Agreed:
    """A step's figures summed over the processes in one all-reduce, so that every process acts alike: a NaN, a
    signal or a due save on any process counts for all."""

    loss: float  # the mean group loss of the step
    correct: float
    pairs: float
    nonfinite: bool
    stop: bool  # a stop signal reached some process
    save_due: bool  # --save-minutes has passed since the last save
    center: float = 0.0  # the mean group centering term C * mean (r_w + r_l)^2 (--center-rewards; not in loss)


def agree(accelerator, st: StepStats, groups: int, real: bool, norm: float, stop: bool, save_due: bool) -> Agreed:
    """The step's loss, pairs and flags over all processes; a zero-weight stand-in group (real False) counts
    nothing."""
    loss_sum, n, ok, n_pairs, bad, signal, due, center = all_sum(
        accelerator,
        [
            float(st.loss) if real else 0.0,
            groups if real else 0,
            st.correct if real else 0.0,
            st.pairs if real else 0.0,
            not math.isfinite(norm),
            stop,
            save_due,
            float(st.center) if real else 0.0,
        ],
    )
    step_loss = loss_sum / n
    return Agreed(step_loss, ok, n_pairs, bad > 0 or not math.isfinite(step_loss), signal > 0, due > 0, center / n)


# -- the loop: one batch element = one prompt with all its completions -----------------------------------------------


def loop(cfg: TrainConfig, parts: Prepared, run: Run, held, signals) -> None:
    """The optimizer steps from run.start to run.total_steps, with evaluations and checkpoints on the way; a bar on
    a terminal, a line every LOG_EVERY seconds in a log."""
    bar = Progress(
        "training",
        run.total_steps,
        "steps",
        enabled=parts.accelerator.is_local_main_process,
        initial=run.start,
        final_line=True,
        logger=log,
    )
    run.counters.t0 = time.time()
    parts.model.train()
    try:
        steps(cfg, parts, run, held, signals, bar)
    finally:
        bar.close()
    run.counters.train_seconds = run.counters.seconds()


def check_same_start(accelerator, start: int) -> None:
    """Each process found and loaded the checkpoint itself: they must stand at the same step."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    starts = gather_object([start])
    if len(set(starts)) > 1:
        raise CheckpointError(
            f"the processes resumed at different steps {starts} (a checkpoint directory that not "
            "every machine sees the same). Fix: put --output-dir on a file system all machines share, "
            "or give --resume the checkpoint directory itself"
        )


def steps(cfg: TrainConfig, parts: Prepared, run: Run, held, signals, bar: Progress) -> None:
    """Each optimizer step: this process's share of the step's groups, backward, the NaN guard, the update, then
    evaluation and checkpoints when due; a stop signal ends the run after the checkpoint."""
    accelerator, core = parts.accelerator, parts.core
    world, rank = accelerator.num_processes, accelerator.process_index
    check_same_start(accelerator, run.start)
    params = [p for p in parts.model.parameters() if p.requires_grad]
    lengths = (
        run.units.lengths.tolist()
        if hasattr(run.units, "lengths")  # a prepared store's, without reading it
        else [sum(len(r) for r in u.ids) for u in run.units]
    )
    losses, accs, correct, pairs = [], [], 0.0, 0.0  # accs: (pairs ordered right, pairs) per step
    plan = EpochPlan(lengths, run.step_size, run.steps_per_epoch, cfg.seed, cfg.length_sort_window)

    def share(step: int) -> tuple[list[int], float]:
        step_ids = plan.step(step)  # this step's groups
        mine_ids, weight = step_ids[rank::world], world / len(step_ids)  # each group weighs 1/G after DDP's mean
        if not mine_ids:  # more processes than groups in this step: take part with a zero-weight group
            mine_ids, weight = step_ids[:1], 0.0
        return mine_ids, weight

    ahead = step_prefetcher(cfg, parts, run, share)  # the next step's batches collated while this one runs
    last_save = run.counters.t0
    for step in range(run.start, run.total_steps):
        mine_ids, weight = share(step)
        mine = unit_groups(run.units, mine_ids)
        st = backward_step(
            parts.model,
            mine,
            weight,
            micro_batch_tokens=cfg.micro_batch_tokens,
            layout=cfg.layout,
            attention_per_token=core.attention_per_token,
            pad_id=core.tokenizer.pad_token_id,
            cache=parts.cache,
            accelerator=accelerator,
            bf16=cfg.autocast_bf16,
            kv=not cfg.gradient_checkpointing and not is_sharded(core),  # FSDP: sharding.check_supported
            segment_aware=core.segment_aware,
            objective=parts.objective,
            unit_ids=mine_ids,
            prepared=ahead.get(step),
        )
        norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        due = bool(cfg.save_minutes and time.time() - last_save >= 60 * cfg.save_minutes)
        ag = agree(accelerator, st, len(mine), weight > 0, float(norm), bool(signals.requested), due)
        lr = run.scheduler.get_last_lr()[0]  # this step's
        if ag.nonfinite:
            nonfinite(cfg, run.state, step, ag.loss, float(norm))
        else:
            run.optimizer.step()
            tie_reward_row(core)  # an ensemble's mean, a weighted reward follow (else a no-op); sharded or whole
            losses.append(ag.loss)
            accs.append((ag.correct, ag.pairs))
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.counters.add(st)
        correct, pairs = correct + ag.correct, pairs + ag.pairs
        bar.update(
            1,
            loss=f"{np.mean(losses[-20:]) if losses else float('nan'):.4f}",
            acc=f"{correct / max(pairs, 1):.3f}",
            **({"center": f"{ag.center:.4f}"} if cfg.center_rewards else {}),
            lr=f"{run.scheduler.get_last_lr()[0]:.2e}",
            epoch=f"{(step + 1) / run.steps_per_epoch:.2f}",
            **{"tokens/s": f"{run.counters.tokens / max(run.counters.seconds(), 1e-9):.0f}"},
        )
        done = step + 1
        logged = {"learning_rate": lr, "epoch": done / run.steps_per_epoch}  # to the --report-to trackers
        if not ag.nonfinite:
            logged.update(loss=ag.loss, accuracy=ag.correct / ag.pairs if ag.pairs else math.nan)
            if cfg.center_rewards:
                logged.update(center_loss=ag.center)
        accelerator.log(scalars("train", logged), step=done)
        if cfg.eval_steps and done % cfg.eval_steps == 0 and done < run.total_steps:
            evaluate_during(cfg, parts, run, held, done, losses, accs, bar)
        if (cfg.save_steps and done % cfg.save_steps == 0) or done == run.total_steps or ag.stop or ag.save_due:
            checkpoint(cfg, parts, run, done)
            last_save = time.time()
        if ag.stop:
            # the signal may have reached another process only (under a launcher): report it as SIGTERM here
            raise TrainingInterrupted(
                signals.requested or 15, done, Path(cfg.output_dir) / "checkpoints" / f"step-{done}"
            )


def nonfinite(cfg: TrainConfig, state: RunState, step: int, loss: float, norm: float) -> None:
    """A NaN or infinite loss or gradient: stop with the step named, or (--on-nonfinite skip) drop the update."""
    what = f"step {step + 1}: loss {loss}, gradient norm {norm}"
    if cfg.on_nonfinite == "stop":
        raise NonFiniteError(
            f"{what}: training stopped, no model saved (the last checkpoint, if any, is intact). "
            f"Fix: lower --learning-rate (now {cfg.learning_rate:g}), or pass --on-nonfinite skip to "
            "drop such steps"
        )
    state.skipped_nonfinite += 1
    log.warning(f"warning: {what}: update skipped (--on-nonfinite skip; {state.skipped_nonfinite} so far)")


def checkpoint(cfg: TrainConfig, parts: Prepared, run: Run, step: int) -> None:
    """Every process reaches here; the main process writes the checkpoint (sharded: the state gathered to it)."""
    accelerator, core = parts.accelerator, parts.core
    accelerator.wait_for_everyone()
    gathered = full_training_state(core, run.optimizer) if is_sharded(core) else None  # collective
    if accelerator.is_main_process:
        trainable, optimizer_state = gathered or (
            {n: p for n, p in core.named_parameters() if p.requires_grad},
            run.optimizer.state_dict(),
        )
        save_checkpoint(
            Path(cfg.output_dir) / "checkpoints",
            step,
            trainable,
            optimizer_state,
            run.scheduler.state_dict(),
            run.state.to_json(),
            run.identity,
            cfg.keep_checkpoints,
        )
    accelerator.wait_for_everyone()
