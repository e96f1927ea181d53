"""The runs benchmarks/throughput.py times side by side: rankrm's trainer step in a layout, TRL's RewardTrainer on the
pairwise expansion, their peak memory, and the synthetic groups both train on. Each run returns its wall seconds and
its process CPU seconds (every thread: the prefetch thread's too) over the same timed steps."""

from __future__ import annotations

import ctypes
import gc
import os
import random
import tempfile
import threading
import time
from math import comb

import torch

from rankrm.data.encode import TokenizedGroup
from rankrm.modeling.model import RewardModel
from rankrm.training.config import TrainConfig
from rankrm.training.loop import backward_step
from rankrm.training.prefetch import Prefetcher, StepRecipe

MICRO_BATCH_TOKENS = TrainConfig(train_data=["synthetic"]).micro_batch_tokens  # `rankrm train`'s default


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at entry, in MiB (self.mib)."""

    def __init__(self, device):
        self.device, self.mib = device, 0.0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so this run's peak shows
            except OSError:
                pass
            self.base = self.peak = self.rss()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self.done.set()
            self.thread.join()
            peak = max(self.peak, self.rss())
        self.mib = (peak - self.base) / 2**20


def synthetic_groups(k: int, p: int, c: int, n: int, vocab: list[int], eos: int, seed: int) -> list[TokenizedGroup]:
    """n groups: a prompt of p random tokens shared by k completions of c tokens (c - 1 random, then EOS), ranked
    in a random order."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.choice(vocab) for _ in range(p)]
        ranks = list(range(k))
        rng.shuffle(ranks)
        out.append(
            TokenizedGroup([prompt + [rng.choice(vocab) for _ in range(c - 1)] + [eos] for _ in range(k)], ranks)
        )
    return out


def run_rankrm(
    model: RewardModel, steps: list[list[TokenizedGroup]], layout: str, device, prefetch: bool = True
) -> dict:
    """The trainer's step over `steps`; with prefetch, each next step planned and collated in the background
    thread as `rankrm train` does (training/prefetch.py). host_share: the planning and collating left on the
    critical path (the wait for the thread, or all of it inline), as a share of the timed steps' time."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    recipe = StepRecipe(MICRO_BATCH_TOKENS, layout, model.attention_per_token, model.tokenizer.pad_token_id)
    ahead = Prefetcher(lambda s: recipe.prepare(steps[s], device), len(steps)) if prefetch else None
    ends, cpu, chosen, host = [], [], set(), []
    with PeakMemory(device) as mem:
        for s, groups in enumerate(steps):
            st = backward_step(
                model,
                groups,
                1 / len(groups),
                micro_batch_tokens=MICRO_BATCH_TOKENS,
                layout=layout,
                attention_per_token=model.attention_per_token,
                pad_id=model.tokenizer.pad_token_id,
                prepared=ahead.get(s) if ahead else None,
            )
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            ends.append(time.perf_counter())
            cpu.append(time.process_time())
            host.append(st.host_seconds)
            chosen.update(st.layouts)  # the layouts the micro-batches ran in
    del opt
    return {
        "seconds": ends[-1] - ends[0],
        "cpu_seconds": cpu[-1] - cpu[0],
        "timed_steps": len(steps) - 1,
        "peak_mib": mem.mib,
        "layouts_used": "+".join(sorted(chosen)),
        "host_share": sum(host[1:]) / (ends[-1] - ends[0]),
    }


def run_trl(model_dir: str, tokenizer, steps: list[list[TokenizedGroup]], device, train_embeddings: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    ends, cpu = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync(device)
            ends.append(time.perf_counter())
            cpu.append(time.process_time())

    k = len(steps[0][0].ids)
    pairs = [
        {"chosen_ids": g.ids[w], "rejected_ids": g.ids[l]}
        for groups in steps
        for g in groups
        for w, l in g.comparisons()
    ]
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    hf.get_input_embeddings().requires_grad_(train_embeddings)
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=comb(k, 2),
            gradient_accumulation_steps=len(steps[0]),
            max_steps=len(steps),
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=False,
            max_length=None,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            logging_steps=10**9,
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
            seed=0,
        )
        trainer = RewardTrainer(
            model=hf, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, callbacks=[Clock()]
        )
        with PeakMemory(device) as mem:
            trainer.train()
    del trainer, hf
    return {
        "seconds": ends[-1] - ends[0],
        "cpu_seconds": cpu[-1] - cpu[0],
        "timed_steps": len(ends) - 1,
        "peak_mib": mem.mib,
    }
