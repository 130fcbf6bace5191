"""Match features: one relevance score per (user, item) from a frozen model, fed to the ranker.

A match feature (the SESA concept-space score, the omni-modal similarity of the item to the
user's history) is computed from what every example row already holds: the user id, the raw
item ids of the user's history (most recent last) and the candidate item id. The ranker reads
the scores of its match features, in config order, as its ``(B, M)`` ``match`` input.

Training, evaluation and serving compute them through the same ``MatchFeature.score``, so a
served score and the offline score of the same example agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class MatchFeature(Protocol):
    """One frozen scorer; ``name`` is how configs and manifests refer to it (``"sesa"``)."""

    name: str

    def score(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
    ) -> torch.Tensor:
        """Scores of ``B`` (user, item) pairs.

        Args:
            user_ids: ``(B,)`` object array of user ids (str).
            histories: ``B`` lists of raw item ids the user interacted with before the example,
                oldest first (may be empty).
            item_ids: ``(B,)`` object array of candidate item ids (str); ids the scorer has
                never seen still get a score (cold items fall back to content or a bias).

        Returns:
            ``(B,)`` float32, finite, no gradient.
        """
        ...


def match_matrix(
    features: Sequence[MatchFeature],
    user_ids: np.ndarray,
    histories: Sequence[Sequence[str]],
    item_ids: np.ndarray,
) -> torch.Tensor:
    """The ranker's ``(B, M)`` match input: every feature's scores, one column each, in order."""
    if not features:
        return torch.zeros((len(item_ids), 0), dtype=torch.float32)
    columns = []
    for feature in features:
        with torch.no_grad():
            column = feature.score(user_ids, histories, item_ids).to(torch.float32)
        if column.shape != (len(item_ids),):
            raise ValueError(
                f"match feature {feature.name!r}: score must be ({len(item_ids)},), "
                f"got {tuple(column.shape)}"
            )
        columns.append(column)
    return torch.stack(columns, dim=1)
