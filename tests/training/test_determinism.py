"""training/determinism.py: the seed repeats every generator, --threads fixes torch's thread count."""

import random

import numpy as np
import torch

from rankrm.training.determinism import setup_determinism


def test_the_same_seed_repeats_python_numpy_and_torch_and_the_thread_count_is_set():
    threads = torch.get_num_threads()
    try:
        draws = []
        for seed in (3, 3, 4):
            said = setup_determinism(seed, threads=1)
            draws.append((random.random(), float(np.random.rand()), torch.rand(3).tolist()))
            assert said == {"seed": seed, "threads": 1, "full_determinism": False}
        assert draws[0] == draws[1] and draws[0] != draws[2]
        assert setup_determinism(3)["threads"] == 1  # 0: leave torch's count as it is
    finally:
        torch.set_num_threads(threads)
