"""The training run, top to bottom: data, model, optimizer, resume, the K-wise loop on Accelerate, the report.

`train(cfg)` reads as the story; each chapter is a function below it, the loop over the optimizer steps is in
loop.py and what the run carries (its state, counters, optimizer plan and result) in state.py. Only these modules
and the CLI see the TrainConfig: the components (batching, planning, the loss, the model, checkpoints) take plain
arguments. Lines go through `logging` (rankrm.training.*); only each machine's first process says them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rankrm.data.encode import TextEncoder
from rankrm.data.prepare import native_line
from rankrm.errors import SettingsError
from rankrm.evaluation.attributes import evaluate_attributes, format_attributes, train_means
from rankrm.evaluation.evaluate import EvalResult, compare
from rankrm.evaluation.formatting import format_length, format_metrics
from rankrm.evaluation.plots import plotting_missing, write_training_report
from rankrm.evaluation.uncertainty import format_spread
from rankrm.files import remove_leftovers
from rankrm.modeling.batch import collate
from rankrm.modeling.frozen import FrozenLayerCache
from rankrm.modeling.hub import resolve
from rankrm.modeling.lora import merge_lora
from rankrm.modeling.model import RewardModel
from rankrm.modeling.planning import plan_batches
from rankrm.training import sharding, zero
from rankrm.training.build import attribute_head_of, build_model, objective
from rankrm.training.checkpoint import RunLock, check_identity, find_checkpoint, load_checkpoint
from rankrm.training.config import TrainConfig
from rankrm.training.data import Data, check_tokens, load_data
from rankrm.training.determinism import setup_determinism
from rankrm.training.loop import loop
from rankrm.training.signals import StopSignals
from rankrm.training.state import Prepared, Run, RunState, TrainResult, plan_run
from rankrm.training.tracking import accelerator_kwargs, end_trackers, scalars, start_trackers
from rankrm.training.validation import all_sum, evaluate_shared

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> TrainResult:
    """Train a reward model on ranked groups; returns the metrics before and after (also in eval_results.json)."""
    return _train(cfg)


def _train(cfg: TrainConfig, frozen_store: dict | None = None) -> TrainResult:
    """train(), with frozen_store: a dict to keep the frozen layers' outputs in, shared by several runs on the same
    backbone (benchmarks/grouping.py); by default each run has its own."""
    from accelerate import Accelerator

    engine = sharding.engine_from_launch()  # FSDP2 as the recipe names it; rankrm shards the model itself
    stage = zero.stage_from_launch(cfg.max_grad_norm)  # DeepSpeed ZeRO-2/3: Accelerate builds its engine
    if engine is not None or stage is not None:
        what = "FSDP" if engine else f"DeepSpeed ZeRO-{stage}"
        sharding.check_supported(cfg.lora_r, cfg.layout, what, cfg.head_spec.kind)
    # bf16 is plain torch autocast around the forward, not Accelerate's setting, which is fixed once per process
    kwargs = accelerator_kwargs(cfg.report_to, cfg.output_dir)  # --report-to trackers
    with sharding.launch_context(engine, stage, kwargs) as kwargs:  # FSDP: on CPUs Accelerate's cannot start
        accelerator = Accelerator(**kwargs)
    check_launch(accelerator)
    out = Path(cfg.output_dir)
    lock = RunLock(out) if accelerator.is_main_process else contextlib.nullcontext()
    with replicas_quiet(accelerator), lock, StopSignals() as signals, contextlib.ExitStack() as ending:
        if accelerator.is_main_process:
            for p in remove_leftovers(out) + remove_leftovers(out / "checkpoints"):
                log.info(f"removed the leftover of an interrupted save: {p}")
        encoder = TextEncoder.from_pretrained(resolve(cfg.model), cfg.max_length)  # the run's one tokenizer
        data = load_data(cfg, encoder, accelerator.main_process_first)
        ending.callback(end_trackers, accelerator)  # flushed on every way out: done, an error, a signal
        start_trackers(accelerator, out, asdict(cfg))
        if cfg.plots and plotting_missing():
            log.info(f"note: no training report at the end: {plotting_missing()}, or pass --no-plots")
        set_up = setup_determinism(cfg.seed, cfg.threads, cfg.full_determinism)  # docs/reproducibility.md
        log.info(
            f"seed {cfg.seed}; {set_up['threads']} CPU threads{'; full determinism' if cfg.full_determinism else ''}"
        )
        head = attribute_head_of(cfg, data)
        model, trainable = build_model(cfg, encoder, head)
        if engine is not None:
            model = sharding.shard_model(model, engine, accelerator, cfg.autocast_bf16)  # before the optimizer
        check_tokens(model, data)
        run = plan_run(cfg, model, trainable, data.train)
        if stage is not None:  # DeepSpeed: the engine takes the model and optimizer (zero.py)
            zero.configure(accelerator, cfg.max_grad_norm)
            model, run.optimizer = zero.prepare(accelerator, model, run.optimizer, stage)
        elif engine is None:  # DDP; a sharded model is already on its device and its own engine
            model, run.optimizer = accelerator.prepare(model, run.optimizer)
        core = accelerator.unwrap_model(model)
        ckpt = find_checkpoint(cfg.resume, out / "checkpoints")
        if ckpt is not None:
            resume(ckpt, core, run)
        cache = frozen_layer_cache(cfg, core, frozen_store, data.held)
        parts = Prepared(accelerator, model, core, cache, objective(cfg, len(run.units), core.head_spec))
        if run.state.before is None:
            t0 = time.time()
            before = evaluate_shared(
                parts, data.held, cfg.eval_batch_tokens, cfg.layout, progress=accelerator.is_local_main_process
            )
            run.state.before = before.to_json()
            accelerator.log(scalars("eval", before.metrics), step=run.start)
            log.info(f"before training: {format_metrics(before.metrics)}  [{time.time() - t0:.0f}s]")
        loop(cfg, parts, run, data.held, signals)
        return finish(cfg, parts, run, data)


@contextlib.contextmanager
def replicas_quiet(accelerator):
    """Only each machine's first process logs rankrm's lines (as transformers' Trainer quiets its replicas): the
    others would repeat them; errors still show."""
    logger = logging.getLogger("rankrm")
    level = logger.level
    if not accelerator.is_local_main_process:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_launch(accelerator) -> None:
    """Refuse a launch that would not train as asked: processes that do not see each other."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SettingsError(
            f"launched as {launched} processes, but Accelerate runs {accelerator.num_processes}: each "
            "would train alone and write the same files. Fix: on CPUs launch with ACCELERATE_USE_CPU=1 "
            "accelerate launch --multi_gpu --num_processes N (plain --cpu starts one process)"
        )


def resume(ckpt: Path, core: RewardModel, run: Run) -> None:
    """Load a verified checkpoint of this same run: trainable weights, optimizer, schedule, run state."""
    blob = load_checkpoint(ckpt)
    check_identity(ckpt, blob["identity"], run.identity)
    if sharding.is_sharded(core):  # the checkpoint holds the full state, as one process has it: sharded here
        sharding.load_training_state(core, run.optimizer, blob["trainable"], blob["optimizer"])
    else:
        with torch.no_grad():
            for n, p in core.named_parameters():
                if n in blob["trainable"]:
                    p.copy_(blob["trainable"][n])
        run.optimizer.load_state_dict(blob["optimizer"])
    run.scheduler.load_state_dict(blob["scheduler"])
    run.start, run.state = blob["step"], RunState.from_json(blob["run_state"])
    log.info(f"resumed from {ckpt} at step {run.start}")


def frozen_layer_cache(cfg: TrainConfig, core: RewardModel, store: dict | None, tok_eval) -> FrozenLayerCache | None:
    """The frozen-layer cache when only the top layers train (not with the kv layout, which makes two passes),
    kept only if its replay matches a full forward on the first held-out batch."""
    if not cfg.frozen_cache_on:
        return None
    if sharding.is_sharded(core):  # it calls the layers outside the root's forward, where FSDP gathers their weights
        log.info(
            "sharded (FSDP2, ZeRO): the frozen layers run at every step (the frozen-layer cache is off under sharding)"
        )
        return None
    if cfg.layout == "kv":
        log.info(
            "layout kv: the frozen layers run at every step (their cache needs one forward pass per batch; "
            "--layout auto, packed or padded keep it)"
        )
        return None
    cache = FrozenLayerCache(core.backbone, cfg.train_layers, cfg.frozen_cache_gb * 2**30)
    if store is not None:
        cache.store = store
        cache.held = sum(t.numel() * t.element_size() for t in store.values())
    idx, how = plan_batches(tok_eval, cfg.eval_batch_tokens, cfg.layout, core.attention_per_token, kv=False)[0]
    batch = collate([tok_eval[i] for i in idx], core.tokenizer.pad_token_id, how)
    err = cache.verify(core, batch.to(next(core.parameters()).device))
    if err > 1e-3:
        log.warning(
            f"warning: frozen-layer cache disagrees with a full forward (relative error {err:.1e}) on this "
            "backbone; training without it"
        )
        return None
    log.info(f"frozen layers run once per sequence (cache checked against a full forward: relative error {err:.1e})")
    return cache


# -- evaluation after training, and the saved model ---------------------------------------------------------------


def finish(cfg: TrainConfig, parts: Prepared, run: Run, data: Data) -> TrainResult:
    """Evaluate after training, save the model with its metrics and held-out data as one directory, report."""
    accelerator, core, out = parts.accelerator, parts.core, Path(cfg.output_dir)
    before = EvalResult.from_json(run.state.before)
    after = evaluate_shared(
        parts, data.held, cfg.eval_batch_tokens, cfg.layout, progress=accelerator.is_local_main_process
    )
    accelerator.log(scalars("eval", after.metrics), step=run.total_steps)
    if core.head_spec.kind == "attributes":  # per-attribute RMSE, Pearson, Spearman against the constant-mean baseline
        names = core.head_spec.names
        after.metrics["attributes"] = evaluate_attributes(
            core, data.held, names, train_means(data.train, names), cfg.eval_batch_tokens, cfg.layout, parts.cache
        )
    c = run.counters
    tokens, per_completion, completions = all_sum(accelerator, [c.tokens, c.per_completion_tokens, c.completions])
    result = TrainResult(
        before=before.metrics,
        after=after.metrics,
        change=compare(before, after),
        steps=run.total_steps,
        train_groups=len(data.train),
        eval_groups=len(data.held),
        regime=cfg.regime,
        completions_forwarded=int(completions),
        skipped_nonfinite_steps=run.state.skipped_nonfinite,
        train_seconds=round(c.train_seconds, 1),
        train_tokens_per_second=round(tokens / max(c.train_seconds, 1e-9), 1),
        train_tokens=int(tokens),
        train_tokens_per_completion_layout=int(per_completion),
        data={"train": data.report.summary()},
        history=run.state.history,
        config=asdict(cfg),
    )
    state = sharding.full_model_state(core) if sharding.is_sharded(core) else None  # gathered on rank 0, all take part
    if accelerator.is_main_process:
        if cfg.lora_r:
            merge_lora(core)  # the saved model is a plain Hugging Face model
        heldout = "".join(native_line(r) for r in data.held.records())
        results = json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"
        core.save_pretrained(
            out, extra_files={"eval_results.json": results, "heldout.jsonl": heldout}, state_dict=state
        )
        if cfg.plots:  # after the model: kept by its later saves (not a model file), and a plot cannot cost it
            write_training_report(out / "report", before, after, result.to_json())
    accelerator.wait_for_everyone()
    report(result, run.total_steps - run.start, out)
    return result


def report(r: TrainResult, steps: int, out: Path) -> None:
    """The run's last lines: the metrics before and after, their change, the time and the tokens read."""
    ch = r.change
    log.info(f"before training: {format_metrics(r.before)}")
    log.info(f"after training:  {format_metrics(r.after)}")
    for line in format_length(r.after["length"], r.after["accuracy"]) if "length" in r.after else ():
        (log.warning if line.startswith("warning:") else log.info)(line)  # the length baseline, and its warning
    if "attributes" in r.after:
        log.info("held-out attributes:\n" + "\n".join(format_attributes(r.after["attributes"])))
    for line in format_spread(r.after["ensemble"]) if r.after.get("ensemble") else ():
        log.info(line)
    log.info(
        f"change: accuracy {ch['accuracy_gain']:+.4f} (95% CI {ch['accuracy_gain_ci95'][0]:+.3f} .. "
        f"{ch['accuracy_gain_ci95'][1]:+.3f}), log loss {ch['log_loss_change']:+.4f} (95% CI "
        f"{ch['log_loss_change_ci95'][0]:+.4f} .. {ch['log_loss_change_ci95'][1]:+.4f}); paired bootstrap over "
        f"held-out prompts"
    )
    if r.train_tokens:
        log.info(
            f"tokens read: {r.train_tokens} (each group's shared prompt once where the layout shares it); one row "
            f"per completion would have read {r.train_tokens_per_completion_layout} "
            f"({r.train_tokens_per_completion_layout / r.train_tokens:.2f}x)"
        )
    log.info(
        f"trained {steps} steps in {r.train_seconds:.0f}s ({r.train_tokens_per_second:.0f} tokens/s); model saved "
        f"to {out}"
    )
