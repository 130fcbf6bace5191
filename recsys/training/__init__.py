"""Training: the loop, its state, sharded checkpoints, the run lock and bundle export."""

from recsys.training.checkpoint import CheckpointError
from recsys.training.export import export
from recsys.training.run_lock import RunLock, RunLockError
from recsys.training.state import TrainingState
from recsys.training.trainer import TrainResult, train

__all__ = [
    "CheckpointError",
    "RunLock",
    "RunLockError",
    "TrainResult",
    "TrainingState",
    "export",
    "train",
]
