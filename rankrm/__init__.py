"""rankrm: reward models trained on K-wise human rankings, the InstructGPT way."""

from .errors import DataError
from .groups import RankedGroup, split_by_prompt
from .loss import group_losses, kwise_loss
from .model import RewardModel
from .readers import read_groups

__version__ = "0.1.0"


def train(config):
    """Train a reward model from a TrainConfig (see rankrm.config); returns the metrics before and after."""
    from .train import train as _train

    return _train(config)


__all__ = ["DataError", "RankedGroup", "RewardModel", "group_losses", "kwise_loss", "read_groups",
           "split_by_prompt", "train"]
