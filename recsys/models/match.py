"""Match features: one relevance score per (user, item) from a frozen model, fed to the ranker.

A match feature (the SESA concept-space score, the omni-modal similarity of the item to the
user's history) is computed from what every example row already holds: the user id, the raw
item ids of the user's history (most recent last) and the candidate item id. The ranker reads
the scores of its match features, in config order, as its ``(B, M)`` ``match`` input.

Training, evaluation and serving compute them through the same ``MatchFeature.score``, so a
served score and the offline score of the same example agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from recsys.config import ModelConfig


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


def load_match_features(model: ModelConfig) -> list[MatchFeature]:
    """The match features ``model.match`` names, loaded from their bundles, in column order.

    ``sesa``: the bundle's concept space without its id biases (``ConceptSpace.match_feature``:
    those memorise the labels the ranker trains on); ``omni``: the cosine of the item's omni vector
    with the mean of the user's last history items, standardised by the training rows' mean and
    std stored with the table (``recsys.omni.match_feature``). A bundle
    root stands for its newest version.
    """
    from recsys.bundle import newest_version, version_dirs

    features: list[MatchFeature] = []
    for source in model.match:
        path = Path(source.bundle)
        if not (path / "bundle.json").is_file() and version_dirs(path):
            path = newest_version(path)
        if source.name == "sesa":
            from recsys.concepts.checkpoint import load_space

            feature: Any = load_space(path).match_feature()
        else:
            from recsys.bundle import load_bundle
            from recsys.omni.match_feature import OmniMatchFeature

            load_bundle(path)  # checksums of the table verified before it is read
            feature = OmniMatchFeature.from_table(path / "omni_items.parquet")
        feature.name = source.name
        features.append(feature)
    return features


def bundle_match_features(meta: Mapping[str, Any]) -> list[MatchFeature]:
    """The match features a ranker bundle was trained with (its recorded ``model.match``)."""
    from recsys.config import ModelConfig

    recorded = (meta.get("config") or {}).get("model") or {}
    if not recorded.get("match"):
        return []
    return load_match_features(ModelConfig.model_validate(recorded, strict=False))
