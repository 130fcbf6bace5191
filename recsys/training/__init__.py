"""Training: the loop, checkpoints, multi-process sharding and bundle export."""

from recsys.training.export import export
from recsys.training.trainer import TrainResult, train

__all__ = ["TrainResult", "export", "train"]
