"""The training state saved in every checkpoint: where the run is and what it has measured.

``TrainingState`` is the checkpoint schema. It is stored as a plain dict (numbers, strings,
lists, dicts) so a checkpoint loads with ``torch.load(weights_only=True)`` and reads as JSON.
The position is counted in examples (``epoch_examples``, summed over ranks) rather than in
batches, so a run resumed with another batch size or world size continues at the same row of
the epoch's order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class TrainingStateError(ValueError):
    """A saved state that does not fit this schema; the message names the field."""


@dataclass
class TrainingState:
    """Everything about a run that is not a tensor.

    Attributes:
        kind: ``cfg.model.kind`` (``"ranker"`` or ``"two_tower"``).
        metric_name: the validation metric that picks the best epoch (higher is better).
        model_kwargs: JSON constructor arguments that rebuild the model (see ``bundle``).
        fingerprint: what resume depends on (``recsys.training.fingerprint``).
        config: the whole run config, as JSON.
        epoch: the epoch in progress (or the next one when ``epoch_examples == 0``).
        epoch_examples: examples of ``epoch`` already trained, all ranks together.
        epoch_start_step: the value of ``step`` when ``epoch`` started.
        step: optimizer steps taken since the start of the run.
        losses: training loss of every step (mean over ranks).
        metrics: one dict per finished epoch: ``epoch``, ``train_loss``, ``train_examples``,
            ``examples_per_s`` and the validation metrics.
        best_epoch, best_metric: the best finished epoch so far (``-1``/``None`` before one).
        bad_epochs: finished epochs since the best one.
        done: early stopping has ended the run.
    """

    kind: str
    metric_name: str
    model_kwargs: dict[str, Any]
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    epoch: int = 0
    epoch_examples: int = 0
    epoch_start_step: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float | None = None
    bad_epochs: int = 0
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (safe for ``weights_only`` loading and for JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TrainingState:
        """Rebuild a state saved by :meth:`to_dict`; ``where`` (the file) prefixes errors."""
        if not isinstance(data, dict):
            raise TrainingStateError(
                f"{where}: training state is {type(data).__name__}, not a dict"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise TrainingStateError(
                f"{where}: training state has missing fields {missing} and unknown fields {unknown}"
            )
        return cls(**data)
