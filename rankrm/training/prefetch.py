"""The host work of an optimizer step (planning its micro-batches, collating them, copying them to the device),
done for the next step in a background thread while this step's forward and backward run.

On a GPU a small model's step takes milliseconds of device time, and the Python work around it (the cost model's
plan, the collated tensors and masks) would otherwise be the step: the device waits while the host collates. The
thread plans and collates step s + 1 while step s computes (torch releases the GIL in its kernels), so the
critical path keeps only the wait for a step whose batches are not ready yet. The batches are the ones the loop
would collate itself, in the same order, so a run gives the same model with or without it (docs/benchmarks.md, "Host work per step").

The epoch's plan (which groups go into which step) is made once per epoch (EpochPlan), as the loop made it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.batch import Batch, collate
from rankrm.modeling.planning import epoch_steps, plan_batches
from rankrm.training.config import TrainConfig
from rankrm.training.sharding import is_sharded
from rankrm.training.state import Prepared, Run


@dataclass
class StepRecipe:
    """How backward_step plans and collates a step; the same settings whether a thread or the loop does it."""

    micro_batch_tokens: int
    layout: str
    attention_per_token: float
    pad_id: int
    kv: bool = True
    segment_aware: bool = False

    def prepare(self, groups: list[TokenizedGroup], device) -> StepBatches:
        """Plan the step's micro-batches and collate each (segments only for a segment-aware attention), on
        device."""
        t0 = time.perf_counter()
        micro = plan_batches(
            groups, self.micro_batch_tokens, self.layout, self.attention_per_token, self.kv, self.segment_aware
        )
        batches = [self.collate([groups[j] for j in idx], how).to(device) for idx, how in micro]
        seconds = time.perf_counter() - t0
        return StepBatches(micro, batches, self, seconds, seconds)

    def collate(self, groups: list[TokenizedGroup], how: str) -> Batch:
        aware = self.segment_aware
        return collate(groups, self.pad_id, how, dense_mask=not aware, with_segments=aware)


@dataclass
class StepBatches:
    """One step's micro-batches: (group indices, layout) each, as plan_batches gives them, with the collated
    batches on the device. prepare_seconds: the host time planning and collating took; waited: the part of it the
    training loop waited for (all of it when prepared inline, the rest of it when a background thread ran ahead)."""

    micro: list[tuple[list[int], str]]
    batches: list[Batch]
    recipe: StepRecipe
    prepare_seconds: float = 0.0
    waited: float = 0.0


@dataclass
class EpochPlan:
    """The steps of each epoch (unit indices), made once per epoch by epoch_steps, for the loop and the thread.

    Only the latest two epochs are kept: the thread may plan the first step of the next epoch while the loop
    finishes this one."""

    lengths: list[int]
    step_size: int
    steps_per_epoch: int
    seed: int
    sort_window: int
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self, step: int) -> list[int]:
        """The unit indices of a global step."""
        epoch, i = divmod(step, self.steps_per_epoch)
        with self._lock:
            if epoch not in self._epochs:
                self._epochs[epoch] = epoch_steps(self.lengths, self.step_size, self.seed, epoch, self.sort_window)
                for old in [e for e in self._epochs if e < epoch - 1]:
                    del self._epochs[old]
            return self._epochs[epoch][i]


class Prefetcher:
    """Prepares steps in one background thread, `ahead` steps in advance of the one the loop asks for.

    prepare(step) must be a pure function of the step (the same batches whichever thread runs it, whenever);
    an error it raises comes out of get() for that step."""

    def __init__(self, prepare: Callable[[int], StepBatches], last: int, ahead: int = 1):
        self.prepare, self.last, self.ahead = prepare, last, ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankrm-prefetch")
        self.pending: dict[int, Future] = {}

    def get(self, step: int) -> StepBatches:
        """Step `step`'s batches (waiting for the thread if it has not finished them), and the next steps queued."""
        t0 = time.perf_counter()
        fut = self.pending.pop(step, None) or self.pool.submit(self.prepare, step)
        for s in range(step + 1, min(step + 1 + self.ahead, self.last)):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.prepare, s)
        out = fut.result()
        out.waited = time.perf_counter() - t0
        if step + 1 >= self.last:  # the last step: nothing more to prepare
            self.close()
        return out

    def close(self) -> None:
        """Drop what was queued; a step being prepared finishes on its own (it holds no lock the loop needs)."""
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a loop left early (a signal, a NaN): its thread ends with the prefetcher
        if hasattr(self, "pool"):
            self.close()


def unit_groups(units: Sequence, ids: list[int]) -> list[TokenizedGroup]:
    """The TokenizedGroups of some units (a list, or a prepared store's view read from its memory map)."""
    return [units[j] for j in ids]


def step_prefetcher(
    cfg: TrainConfig, parts: Prepared, run: Run, share: Callable[[int], tuple[list[int], float]]
) -> Prefetcher:
    """The training loop's Prefetcher: plans and collates step s + 1 as backward_step would (the same recipe, which
    backward_step checks) while step s runs, with the loop's own share of each step (share)."""
    core, device = parts.core, next(parts.model.parameters()).device
    kv = not cfg.gradient_checkpointing and not is_sharded(core) and parts.cache is None
    recipe = StepRecipe(
        cfg.micro_batch_tokens,
        cfg.layout,
        core.attention_per_token,
        core.tokenizer.pad_token_id,
        kv,
        core.segment_aware,
    )
    return Prefetcher(lambda step: recipe.prepare(unit_groups(run.units, share(step)[0]), device), run.total_steps)
