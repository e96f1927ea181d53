"""rankrm: reward models trained on K-wise human rankings, the InstructGPT way.

The public API, imported eagerly on purpose: `rankrm.train`, `rankrm.evaluate` and `rankrm.normalize` are functions
that share their names with submodules, and binding them here, after their submodules are loaded, keeps them
functions whatever is imported later (`import rankrm.train` then finds the submodule loaded and rebinds nothing)."""

from ._version import __version__

from .batch import TokenizedGroup, tokenize_groups
from .client import LocalReward, RewardClient
from .config import TrainConfig
from .errors import DataError
from .groups import RankedGroup, ReadReport
from .splits import split_by_prompt, write_native
from .evaluate import EvalResult, compare, evaluate
from .loss import GroupStats, group_stats, kwise_loss
from .model import RewardModel
from .normalize import normalize
from .readers import read_groups
from .train import train

__all__ = ["__version__", "DataError", "EvalResult", "GroupStats", "LocalReward", "RankedGroup", "ReadReport", "RewardClient",
           "RewardModel", "TokenizedGroup",
           "TrainConfig", "compare", "evaluate", "group_stats", "kwise_loss", "normalize", "read_groups",
           "split_by_prompt", "tokenize_groups", "train", "write_native"]
