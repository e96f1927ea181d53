"""rankrm: reward models trained on K-wise human rankings, the InstructGPT way.

The public API. The library lives in subpackages whose arrows point one way (tests/test_imports.py):
errors, files, loss < data < modeling < evaluation, serving < training < cli."""

from rankrm._version import __version__
from rankrm.data.encode import TokenizedGroup, tokenize_groups
from rankrm.data.groups import RankedGroup, ReadReport
from rankrm.data.readers import read_groups
from rankrm.data.splits import split_by_prompt, write_native
from rankrm.errors import DataError
from rankrm.evaluation.evaluate import EvalResult, compare, evaluate
from rankrm.loss import GroupStats, Objective, group_stats, kwise_loss, objective_loss, plackett_luce
from rankrm.modeling.model import RewardModel
from rankrm.modeling.normalize import normalize
from rankrm.serving.client import LocalReward, RewardClient
from rankrm.training.config import TrainConfig
from rankrm.training.run import train
from rankrm.training.state import TrainResult

__all__ = [
    "__version__",
    "DataError",
    "EvalResult",
    "GroupStats",
    "LocalReward",
    "Objective",
    "RankedGroup",
    "ReadReport",
    "RewardClient",
    "RewardModel",
    "TokenizedGroup",
    "TrainConfig",
    "TrainResult",
    "compare",
    "evaluate",
    "group_stats",
    "kwise_loss",
    "normalize",
    "objective_loss",
    "plackett_luce",
    "read_groups",
    "split_by_prompt",
    "tokenize_groups",
    "train",
    "write_native",
]
