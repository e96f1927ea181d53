"""What makes a run repeat itself: the seeds, the CPU thread count, and (--full-determinism) deterministic kernels.

On one machine, the same command, seed and software give bit-identical weights and metrics whatever else runs,
without any flag: every op rankrm's training uses on CPUs sums in an order fixed by the data and the thread count
(the one that did not, the kv layout's prompt gather, adds in index order now: modeling/kvcache.py). The float
arithmetic does depend on the thread count (torch splits matmuls and reductions by it), so --threads fixes it where
machines or launchers differ. On GPUs some kernels add with atomics; --full-determinism turns on PyTorch's
deterministic algorithms, as transformers' enable_full_determinism does (docs/reproducibility.md)."""

from __future__ import annotations

import os

import torch


def setup_determinism(seed: int, threads: int = 0, full: bool = False) -> dict:
    """Seed every generator, fix the intra-op thread count (0: leave torch's), and with full, deterministic
    kernels everywhere; returns what was set (for the run's log)."""
    from accelerate.utils import set_seed

    if full:
        # before any CUDA work: cuBLAS reads it when its handle is made; PyTorch refuses nondeterministic kernels
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)
    return {"seed": seed, "threads": torch.get_num_threads(), "full_determinism": full}
