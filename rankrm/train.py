"""The training run, top to bottom: data, model, optimizer, the K-wise loop on Accelerate, evaluation, saving."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .batching import collate_groups, plan_batches, shuffled_pairs, to_device, tokenize_groups
from .config import TrainConfig
from .evaluate import EvalResult, compare, evaluate
from .freeze import FrozenPrefix, select_trainable
from .groups import ReadReport, overlap, split_by_prompt, write_native
from .lora import add_lora, merge_lora
from .loss import group_losses, group_pair_stats
from .model import RewardModel
from .readers import read_groups

log = logging.getLogger("rankrm")
CKPT_FILE = "checkpoint.pt"


def disable_dropout(model: nn.Module) -> None:
    """Reward models train without dropout (as TRL's RewardTrainer does by default): the loss compares rewards."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def check_prefix(model, prefix: FrozenPrefix, b: dict, say) -> FrozenPrefix | None:
    """Compare the cached replay with a full forward on one batch; keep the cache only if they agree."""
    with torch.no_grad():
        full = prefix.forward(model, b)  # fills the cache
        replayed = prefix.forward(model, b)
    err = float((full - replayed).abs().max() / full.abs().max().clamp(min=1e-6))
    if err > 1e-3:
        prefix.store.clear()
        say(f"warning: frozen-layer cache disagrees with a full forward (relative error {err:.1e}) on this "
            "backbone; training without it")
        return None
    say(f"frozen layers run once per sequence (cache checked against a full forward: relative error {err:.1e})")
    return prefix


def epoch_steps(lengths: list[int], step_size: int, seed: int, epoch: int, buckets: int = 0) -> list[list[int]]:
    """The steps of an epoch (lists of unit indices): a function of (seed, epoch), so a resumed run repeats it.

    buckets = 0: consecutive slices of a shuffled order. buckets = B > 0: the shuffled order is cut into chunks of
    B steps, each chunk sorted by length and cut into steps, and the steps shuffled (the last, short step stays
    last): every step then holds units of similar length, so its micro-batches carry little padding, while each
    unit is still seen once per epoch and every step still has step_size units."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if buckets > 0:
        chunk = buckets * step_size
        order = [i for c in range(0, len(order), chunk) for i in sorted(order[c:c + chunk], key=lambda i: lengths[i])]
    steps = [order[i:i + step_size] for i in range(0, len(order), step_size)]
    if buckets > 0:
        full = [st for st in steps if len(st) == step_size]
        rng.shuffle(full)
        steps = full + [st for st in steps if len(st) < step_size]
    return steps


def backward_step(model, groups, weight: float, cfg: TrainConfig, attention_per_token: float, pad_id: int,
                  prefix: FrozenPrefix | None = None, accelerator=None) -> dict:
    """Forward and backward over one step's groups, in micro-batches of cfg.micro_batch_tokens with cfg.layout;
    the gradients accumulate in .grad with each group weighted by `weight` (1/G for a step of G groups), so the
    update is the mean over the step's groups however they are batched. Returns the summed loss (a tensor, to
    avoid a sync), correct and stated pairs, tokens and completions forwarded, and the layout of each micro-batch."""
    device = next(model.parameters()).device
    micro = plan_batches(groups, cfg.micro_batch_tokens, cfg.layout, attention_per_token,
                         kv=prefix is None and not cfg.gradient_checkpointing)
    out = {"loss": torch.zeros((), device=device), "correct": 0.0, "pairs": 0.0, "tokens": 0, "completions": 0,
           "layouts": [layout for _, layout in micro]}
    for mi, (idx, layout) in enumerate(micro):
        b = to_device(collate_groups([groups[j] for j in idx], pad_id, layout=layout), device)
        out["tokens"] += sum(len(r) for j in idx for r in groups[j].ids)
        out["completions"] += sum(len(groups[j].ids) for j in idx)
        sync = mi == len(micro) - 1 or accelerator is None
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                if prefix is None:
                    rewards = model(b["input_ids"], b["attention_mask"], b["position_ids"], b["end_index"],
                                    b.get("prompt"))  # (N,)
                else:
                    rewards = prefix.forward(model, b)  # (N,)
            losses, _ = group_losses(rewards, b["ranks"], b["group_index"], len(idx), b.get("pair_mask"))  # (g,)
            if accelerator is None:
                (losses.sum() * weight).backward()
            else:
                accelerator.backward(losses.sum() * weight)
        out["loss"] += losses.detach().sum()
        c, p, _ = group_pair_stats(rewards.detach(), b["ranks"], b["group_index"], len(idx), b.get("pair_mask"))
        out["correct"] += c.sum()
        out["pairs"] += p.sum()
    return out


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return f


def find_checkpoint(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume != "latest":
        path = Path(cfg.resume)
        if not (path / CKPT_FILE).is_file():
            raise ValueError(f"{path}: not a rankrm checkpoint (no {CKPT_FILE}). Fix: pass a directory from "
                             f"{cfg.output_dir}/checkpoints/, or --resume latest")
        return path
    found = sorted((Path(cfg.output_dir) / "checkpoints").glob("step-*/" + CKPT_FILE),
                   key=lambda p: int(p.parent.name.split("-")[1]))
    return found[-1].parent if found else None


def save_checkpoint(cfg, model, optimizer, scheduler, step: int, state: dict) -> Path:
    """Write trainable weights, optimizer and scheduler state and the run state, atomically; prune old ones."""
    root = Path(cfg.output_dir) / "checkpoints"
    path, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"trainable": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "state": state, "config": asdict(cfg)}, tmp / CKPT_FILE)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    done = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-cfg.keep_checkpoints] if cfg.keep_checkpoints > 0 else []:
        shutil.rmtree(old)
    return path


def _result_to_json(r: EvalResult) -> dict:
    return {"correct": r.correct.tolist(), "pairs": r.pairs.tolist(), "nll": r.nll.tolist()}


def _result_from_json(d: dict) -> EvalResult:
    return EvalResult(np.array(d["correct"]), np.array(d["pairs"]), np.array(d["nll"]))


def _fmt(m: dict) -> str:
    return (f"accuracy {m['accuracy']:.4f} [{m['accuracy_ci95'][0]:.3f}, {m['accuracy_ci95'][1]:.3f}]  "
            f"log loss {m['log_loss']:.4f}  ({m['groups']} prompts, {m['pairs']} pairs)")


def train(cfg: TrainConfig, frozen_cache: dict | None = None) -> dict:
    """Train a reward model on ranked groups; returns the metrics before and after (also in eval_results.json).

    frozen_cache: a dict to keep the frozen layers' outputs in, shared by several runs on the same backbone
    (benchmarks/grouping.py); by default each run has its own."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    # bf16 is plain torch autocast around the forward, not Accelerate's setting, which is fixed once per process
    accelerator = Accelerator()
    say = accelerator.print
    out = Path(cfg.output_dir)
    ckpt = find_checkpoint(cfg)

    # -- data: read, validate, split by prompt ------------------------------------------------------------------
    report = ReadReport()
    groups = read_groups(cfg.train_data, cfg.format, report, skip_invalid=cfg.skip_invalid)
    say(f"train data: {report.summary()}")
    if cfg.eval_data:
        eval_report = ReadReport()
        held = read_groups(cfg.eval_data, cfg.format, eval_report, skip_invalid=cfg.skip_invalid)
        say(f"eval data: {eval_report.summary()}")
        leaks = overlap(groups, held)
        if leaks:
            say(f"warning: {leaks} held-out groups share a prompt or conversation with the training data")
        train_groups = groups
    else:
        train_groups, held = split_by_prompt(groups, cfg.eval_fraction, cfg.seed)
    if cfg.max_train_groups and cfg.max_train_groups < len(train_groups):
        rng = random.Random(cfg.seed)
        train_groups = [train_groups[i] for i in sorted(rng.sample(range(len(train_groups)), cfg.max_train_groups))]
        say(f"using {cfg.max_train_groups} of the training groups (--max-train-groups)")
    n_pairs = sum(len(g.comparisons()) for g in train_groups)
    say(f"split by prompt: {len(train_groups)} training groups ({n_pairs} comparisons), {len(held)} held out")

    # -- model ---------------------------------------------------------------------------------------------------
    set_seed(cfg.seed)
    model = RewardModel.from_pretrained(cfg.model, max_length=cfg.max_length,
                                        attn_implementation=cfg.attn_implementation)
    disable_dropout(model)
    trainable = (add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets) if cfg.lora_r
                 else select_trainable(model, cfg.train_layers))
    if cfg.gradient_checkpointing:
        model.enable_checkpointing()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    what = ("the whole model" if cfg.train_layers < 0 and not cfg.lora_r else
            f"LoRA adapters (r={cfg.lora_r}, alpha={cfg.lora_alpha}) + head" if cfg.lora_r else
            f"the top {cfg.train_layers} layers + final norm + head")
    say(f"model: {cfg.model} ({type(model.hf).__name__}); training {what}: {n_train / 1e6:.2f}M of "
        f"{n_all / 1e6:.1f}M parameters; max length {cfg.max_length}; {'bf16 autocast' if cfg.bf16 else 'fp32'}; "
        f"{model.hf.config._attn_implementation} attention; layout {cfg.layout}"
        f"{'; gradient checkpointing' if cfg.gradient_checkpointing else ''}")
    tok_train, cut_train = tokenize_groups(model, train_groups)
    tok_eval, cut_eval = tokenize_groups(model, held)
    say(f"tokens: {sum(g.tokens for g in tok_train)} training, {sum(g.tokens for g in tok_eval)} held out; "
        f"prompts cut from the left to fit --max-length: {cut_train} training and {cut_eval} held-out completions")

    # -- optimizer and schedule ----------------------------------------------------------------------------------
    head_names = {n for n, _ in model.named_parameters() if n.startswith("hf.score")}
    params = dict(model.named_parameters())
    param_groups = [{"params": [params[n] for n in trainable if n not in head_names], "lr": cfg.learning_rate},
                    {"params": [params[n] for n in trainable if n in head_names],
                     "lr": cfg.head_learning_rate or cfg.learning_rate}]
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], weight_decay=cfg.weight_decay)
    # the units of an optimizer step: whole groups, or (shuffled-pairs) single comparisons, as many per step as
    # batch_size groups hold on average, so both regimes take the same steps over the same comparisons
    if cfg.regime == "shuffled-pairs":
        units = shuffled_pairs(tok_train)
        step_size = max(1, round(cfg.batch_size * len(units) / len(tok_train)))
        say(f"regime shuffled-pairs: {len(units)} comparisons as separate examples, {step_size} per step")
    else:
        units, step_size = tok_train, cfg.batch_size
    steps_per_epoch = math.ceil(len(units) / step_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, warmup, total_steps))
    # the scheduler stays outside prepare(): a step here is one global step whatever the number of processes
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    device = accelerator.device

    state = {"history": []}
    start = 0
    if ckpt is not None:
        blob = torch.load(ckpt / CKPT_FILE, map_location="cpu", weights_only=False)
        missing = set(trainable) ^ set(blob["trainable"])
        if missing:
            raise ValueError(f"{ckpt}: checkpoint's trainable parameters differ from this run's ({len(missing)} "
                             "names). Fix: resume with the same --model and --train-layers")
        with torch.no_grad():
            for n, p in core.named_parameters():
                if n in blob["trainable"]:
                    p.copy_(blob["trainable"][n])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        start, state = blob["step"], blob["state"]
        say(f"resumed from {ckpt} at step {start}")

    prefix = None
    if cfg.cache_frozen and cfg.train_layers >= 0 and not cfg.lora_r and cfg.layout == "kv":
        say("layout kv: the frozen layers run at every step (their cache needs one forward pass per batch; "
            "--layout auto, packed or padded keep it)")
    elif cfg.cache_frozen and cfg.train_layers >= 0 and not cfg.lora_r:
        prefix = FrozenPrefix(core.backbone, cfg.train_layers)
        if frozen_cache is not None:
            prefix.store = frozen_cache

    # -- evaluation before training ------------------------------------------------------------------------------
    if "before" in state:
        before = _result_from_json(state["before"])
    else:
        t0 = time.time()
        before = evaluate(core, tok_eval, cfg.eval_batch_tokens, progress=accelerator.is_local_main_process,
                          prefix=prefix, layout=cfg.layout)
        state["before"] = _result_to_json(before)
        say(f"before training: {_fmt(before.metrics)}  [{time.time() - t0:.0f}s]")

    # -- the loop: one batch element = one prompt with all its completions ------------------------------------------
    world, rank = accelerator.num_processes, accelerator.process_index
    pad_id = core.tokenizer.pad_token_id
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=total_steps, initial=start, desc="training", disable=not accelerator.is_local_main_process)
    run_loss, run_correct, run_pairs = [], 0.0, 0.0
    t0, tokens_seen, forwarded, eval_seconds = time.time(), 0, 0, 0.0
    model.train()
    unit_lengths, plan = [sum(len(r) for r in u.ids) for u in units], {}
    for step in range(start, total_steps):
        epoch, i = divmod(step, steps_per_epoch)
        if epoch not in plan:
            plan = {epoch: epoch_steps(unit_lengths, step_size, cfg.seed, epoch, cfg.length_buckets)}
        step_ids = plan[epoch][i]  # this step's groups
        mine_ids = step_ids[rank::world]  # this process's share
        weight = world / len(step_ids)  # each group weighs 1/G after DDP averages over the processes
        if not mine_ids:  # more processes than groups in this step: take part with a zero-weight group
            mine_ids, weight = step_ids[:1], 0.0
        mine = [units[j] for j in mine_ids]
        if prefix is not None and step == start:
            first = plan_batches(mine, cfg.micro_batch_tokens, cfg.layout, core.attention_per_token, kv=False)[0]
            b = to_device(collate_groups([mine[j] for j in first[0]], pad_id, layout=first[1]), device)
            prefix = check_prefix(model, prefix, b, say)
        st = backward_step(model, mine, weight, cfg, core.attention_per_token, pad_id, prefix, accelerator)
        step_loss = st["loss"]
        tokens_seen, forwarded = tokens_seen + st["tokens"], forwarded + st["completions"]
        run_correct, run_pairs = run_correct + st["correct"], run_pairs + st["pairs"]
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable_params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        run_loss.append(float(step_loss) / len(mine))  # one sync per step, for the progress bar
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(run_loss[-20:]):.4f}", acc=f"{float(run_correct / max(run_pairs, 1)):.3f}",
                        lr=f"{scheduler.get_last_lr()[0]:.2e}", epoch=f"{(step + 1) / steps_per_epoch:.2f}")
        done = step + 1
        if cfg.eval_steps and done % cfg.eval_steps == 0 and done < total_steps:
            t_eval = time.time()
            m = evaluate(core, tok_eval, cfg.eval_batch_tokens, prefix=prefix, layout=cfg.layout).metrics
            eval_seconds += time.time() - t_eval
            state["history"].append({"step": done, "epoch": done / steps_per_epoch,
                                     "train_loss": float(np.mean(run_loss[-cfg.eval_steps:])),
                                     "completions_forwarded": forwarded,
                                     "train_seconds": round(time.time() - t0 - eval_seconds, 2), **m})
            bar.write(f"step {done}: {_fmt(m)}")
        if (cfg.save_steps and done % cfg.save_steps == 0 and done < total_steps) or done == total_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(cfg, core, optimizer, scheduler, done, state)
    bar.close()
    elapsed = time.time() - t0 - eval_seconds  # training time, periodic evaluations left out

    # -- evaluation after training, and the saved model -----------------------------------------------------------
    after = evaluate(core, tok_eval, cfg.eval_batch_tokens, progress=accelerator.is_local_main_process,
                     prefix=prefix, layout=cfg.layout)
    results = {"before": before.metrics, "after": after.metrics, "change": compare(before, after),
               "steps": total_steps, "train_groups": len(tok_train), "eval_groups": len(tok_eval),
               "regime": cfg.regime, "completions_forwarded": forwarded,
               "train_seconds": round(elapsed, 1), "train_tokens_per_second": round(tokens_seen / max(elapsed, 1e-9), 1),
               "data": {"train": report.summary()}, "history": state["history"], "config": asdict(cfg)}
    if accelerator.is_main_process:
        if cfg.lora_r:
            merge_lora(core)  # the saved model is a plain Hugging Face model
        core.save_pretrained(out)
        write_native(held, out / "heldout.jsonl")  # the held-out prompts, to evaluate or normalize on later
        (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    ch = results["change"]
    say(f"before training: {_fmt(before.metrics)}")
    say(f"after training:  {_fmt(after.metrics)}")
    say(f"change: accuracy {ch['accuracy_gain']:+.4f} (95% CI {ch['accuracy_gain_ci95'][0]:+.3f} .. "
        f"{ch['accuracy_gain_ci95'][1]:+.3f}), log loss {ch['log_loss_change']:+.4f} (95% CI "
        f"{ch['log_loss_change_ci95'][0]:+.4f} .. {ch['log_loss_change_ci95'][1]:+.4f}); paired bootstrap over "
        f"held-out prompts")
    say(f"trained {total_steps - start} steps in {elapsed:.0f}s ({results['train_tokens_per_second']:.0f} tokens/s); "
        f"model saved to {out}")
    return results
