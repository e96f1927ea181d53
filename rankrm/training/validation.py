"""A run's held-out evaluations: each one's place in the run's history, trackers and log, and the evaluation dealt out
to the processes (every process in every forward under sharding) with the per-group statistics gathered, so each
metric is the one a single process computes."""

from __future__ import annotations

import time

import numpy as np
import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.evaluation.evaluate import EvalResult, Labels, evaluate_groups
from rankrm.evaluation.formatting import format_metrics
from rankrm.modeling.planning import plan_batches
from rankrm.training.config import TrainConfig
from rankrm.training.sharding import is_sharded, reshard
from rankrm.training.state import Prepared, Run
from rankrm.training.tracking import scalars


def evaluate_during(cfg: TrainConfig, parts: Prepared, run: Run, held, done: int, losses, accs, bar) -> None:
    """An evaluation at step `done`: into the run's history (with the training loss and accuracy since the last
    one), the trackers and the log."""
    t_eval = time.time()
    m = evaluate_shared(parts, held, cfg.eval_batch_tokens, cfg.layout).metrics
    run.counters.eval_seconds += time.time() - t_eval
    recent = losses[-cfg.eval_steps :]
    run.state.history.append(
        {
            "step": done,
            "epoch": done / run.steps_per_epoch,
            "train_loss": float(np.mean(recent)) if recent else None,  # None: all skipped
            "train_accuracy": accuracy_of(accs[-cfg.eval_steps :]),
            "completions_forwarded": run.counters.completions,
            "train_seconds": round(run.counters.seconds(), 2),
            **m,
        }
    )
    parts.accelerator.log(scalars("eval", m), step=done)
    bar.write(f"step {done}: {format_metrics(m)}")


def accuracy_of(steps: list[tuple[float, float]]) -> float | None:
    """The pair accuracy over some steps' (pairs ordered right, pairs); None when they state no pair."""
    n = sum(p for _, p in steps)
    return sum(c for c, _ in steps) / n if n else None


def all_sum(accelerator, values: list[float]) -> list[float]:
    """Each value summed over the processes (one all-reduce); flags given as bools come back as counts."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()


def evaluate_shared(
    parts: Prepared, groups: list[TokenizedGroup], batch_tokens: int, layout: str, progress: bool = False
) -> EvalResult:
    """evaluate_groups with its forward passes dealt out to the processes and the per-group statistics gathered.

    The passes are planned once, as one process plans them, and each process evaluates every world-th pass as a
    batch of its own (the same groups in the same order and layout), so each reward, hence every metric, is the one
    a single process computes."""
    accelerator, core, cache = parts.accelerator, parts.core, parts.cache
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return evaluate_groups(core, groups, batch_tokens, layout, cache, progress=progress)
    from accelerate.utils import gather_object

    plan = plan_batches(
        groups, batch_tokens, layout, core.attention_per_token, kv=cache is None, segment_aware=core.segment_aware
    )
    mine, share = [], plan[rank::world]
    extra = -(-len(plan) // world) - len(share) if is_sharded(core) else 0  # sharded: each forward is collective
    for k, (idx, how) in enumerate(share + plan[:1] * extra):  # one pass each: idx fits the budget by plan
        r = evaluate_groups(core, [groups[i] for i in idx], batch_tokens, how, cache, require_pairs=False)
        if k < len(share):  # a stand-in pass (sharded) is discarded
            mine.append((idx, r.correct, r.pairs, r.nll, r.rewards, r.members))
    if is_sharded(core):
        reshard(core)
    correct, pairs, nll = (np.zeros(len(groups)) for _ in range(3))
    rewards: list = [None] * len(groups)
    members: list = [None] * len(groups) if core.head_spec.kind == "ensemble" else []
    for idx, c, p, n, rw, mem in gather_object(mine):
        correct[idx], pairs[idx], nll[idx] = c, p, n
        for k, i in enumerate(idx):
            rewards[i] = rw[k]
            if members:
                members[i] = mem[k]
    return EvalResult(correct, pairs, nll, tuple(rewards), tuple(Labels.of(g) for g in groups), tuple(members))
