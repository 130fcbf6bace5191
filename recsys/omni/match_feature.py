"""``OmniMatchFeature``: the ranker's omni-modal match score (``recsys.models.match``).

Score of a (user, item) pair: the cosine of the item's omni embedding with the normalised
mean of the omni embeddings of the user's last ``history_length`` history items (the
sequence-to-item query of stage 2). The table covers the whole catalogue, items without any
interaction included, so a cold item scores by its content.

The ranker gets that cosine standardised like its dense features, ``(cosine - mean) / std``
with the mean and std of the training examples' cosines (``MatchScale``, fitted by
``OmniMatchFeature.standardised_on`` and stored with the bundle's item table), and 0 (the
mean: no evidence either way) when the item is not in the table or no history item is. Raw
distilled cosines sit in a narrow band far from 0 (simulated world: mean 0.78, std 0.10); fed
raw, that offset cost the simulated ranker test AUC, centred it does not (docs/omni.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from recsys.features.hashing import hash_values
from recsys.omni.bundle import read_item_table, read_match_scale
from recsys.omni.next_item import history_queries

FOLD_SALT = 0x0F01D  # user folds of out-of-fold scores, independent of every feature hash
SCALE_ROWS = 500_000  # training rows the match scale is fitted on (the first ones; plenty)


@dataclass(frozen=True)
class MatchScale:
    """Mean and std of the raw match cosine over the rows that have one."""

    mean: float
    std: float

    def as_tuple(self) -> tuple[float, float]:
        return self.mean, self.std


class OmniMatchFeature:
    """Frozen omni similarity of an item to the user's history.

    Args:
        item_ids: ``(I,)`` item ids of the table rows.
        vectors: ``(I, D)`` omni embeddings (normalised here).
        history_length: last N history items averaged into the query.
        name: how configs and manifests refer to it.
        scale: standardisation of the score; ``None`` = the raw cosine (0 where unscored).
    """

    def __init__(
        self,
        item_ids: Sequence[str] | np.ndarray,
        vectors: np.ndarray,
        history_length: int = 10,
        name: str = "omni",
        scale: MatchScale | None = None,
    ) -> None:
        self.name = name
        self.history_length = history_length
        self.scale = _checked(scale, name)
        self._index = pd.Index([str(i) for i in item_ids])
        vecs = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        self._vectors = vecs / np.maximum(norms, 1e-12)

    @classmethod
    def from_table(cls, path: str | Path, history_length: int = 10) -> OmniMatchFeature:
        """From an ``omni_items.parquet`` table (``recsys.omni.bundle``), with the match scale
        stored in it (raw cosines when it has none)."""
        ids, vectors = read_item_table(path)
        stored = read_match_scale(path)
        scale = None if stored is None else MatchScale(*stored)
        return cls(ids, vectors, history_length, scale=scale)

    def with_scale(self, scale: MatchScale | None) -> OmniMatchFeature:
        """The same table and history length with another standardisation."""
        out = copy.copy(self)  # shares the (read-only) table
        out.scale = _checked(scale, self.name)
        return out

    def _rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        return self._index.get_indexer([str(i) for i in ids])

    def _history_rows(self, histories: Sequence[Sequence[str]], n: int, width: int) -> np.ndarray:
        """``(B, width)`` table rows of each user's last ``width`` known history items (-1 pad;
        the order inside a row does not matter to the mean)."""
        tails = [list(h)[-4 * width :] for h in histories]  # unknown ids are rare: 4x is plenty
        lengths = np.fromiter((len(t) for t in tails), dtype=np.int64, count=n)
        history = np.full((n, width), -1, dtype=np.int64)
        if not lengths.sum():
            return history
        rows = self._rows([x for t in tails for x in t])
        seg = np.repeat(np.arange(n), lengths)
        valid = (rows >= 0).astype(np.int64)
        prefix = np.concatenate([[0], np.cumsum(valid)])  # valid entries before each position
        starts = np.cumsum(lengths) - lengths
        seg_valid = prefix[starts + lengths] - prefix[starts]
        # valid entries after each position in its own row: the newest known item gets 0
        after = seg_valid[seg] - (prefix[1:] - prefix[starts][seg])
        keep = (valid > 0) & (after < width)
        history[seg[keep], after[keep]] = rows[keep]
        return history

    def cosines(
        self, histories: Sequence[Sequence[str]], item_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` float32 raw cosines of each item with its history's mean, and the ``(B,)``
        bool mask of the rows that have one (item in the table, a known history item)."""
        n, width = len(item_ids), self.history_length
        history = self._history_rows(histories, n, width)
        queries = history_queries(self._vectors, history)  # zeros for an empty history
        rows = self._rows(item_ids)
        item_vecs = np.where((rows >= 0)[:, None], self._vectors[rows.clip(min=0)], 0.0)
        scored = (rows >= 0) & (history >= 0).any(1)
        return (queries * item_vecs).sum(1).astype(np.float32), scored

    def score(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
    ) -> torch.Tensor:
        """``(B,)`` float32 standardised cosine of each item with its user's history, 0 where
        there is none (see module doc)."""
        cosine, scored = self.cosines(histories, item_ids)
        if self.scale is not None:
            cosine = (cosine - np.float32(self.scale.mean)) / np.float32(self.scale.std)
        return torch.from_numpy(np.where(scored, cosine, np.float32(0.0)).astype(np.float32))

    def fit_scale(self, histories: Sequence[Sequence[str]], item_ids: np.ndarray) -> MatchScale:
        """Mean and std of the raw cosines of the scored rows among ``(histories, item_ids)``
        (the training examples); a ``ValueError`` when fewer than 2 rows are scored."""
        cosine, scored = self.cosines(histories, item_ids)
        if scored.sum() < 2:
            raise ValueError(
                f"match feature {self.name!r}: {int(scored.sum())} of {len(item_ids)} rows have "
                "a known item and history; cannot fit its scale"
            )
        std = float(cosine[scored].std())
        return MatchScale(float(cosine[scored].mean()), max(std, 1e-6))

    def standardised_on(
        self, examples_dir: str | Path, split: str = "train", max_rows: int = SCALE_ROWS
    ) -> OmniMatchFeature:
        """This feature with its scale fitted on the first ``max_rows`` rows of
        ``examples_dir/split=<split>`` (``item_id`` and ``history`` columns)."""
        histories, item_ids = example_rows(examples_dir, split, max_rows)
        return self.with_scale(self.fit_scale(histories, item_ids))


def _checked(scale: MatchScale | None, name: str) -> MatchScale | None:
    """``scale`` unless its mean is not finite or its std not positive (``ValueError``)."""
    if scale is not None and not (np.isfinite([scale.mean, scale.std]).all() and scale.std > 0):
        raise ValueError(f"OmniMatchFeature {name!r}: scale needs finite mean, std > 0: {scale}")
    return scale


def example_rows(
    examples_dir: str | Path, split: str = "train", max_rows: int = SCALE_ROWS
) -> tuple[list[list[str]], np.ndarray]:
    """Histories and item ids of the first ``max_rows`` rows of one split of an examples
    directory (an ``OSError`` / ``ValueError`` naming the directory when unreadable)."""
    path = Path(examples_dir) / f"split={split}"
    try:
        table = pq.read_table(path, columns=["item_id", "history"])
    except (OSError, ValueError) as e:
        raise type(e)(f"{path}: cannot read item_id / history for the match scale: {e}") from e
    table = table.slice(0, max_rows)
    histories = [list(h or []) for h in table["history"].to_pylist()]
    return histories, np.asarray(table["item_id"].to_pylist(), dtype=object)


class UserFoldMatchFeature:
    """Out-of-fold omni match scores: no user is scored by a model trained on its own clicks.

    Users fall into ``K = len(features)`` folds by a hash of their id (``user_fold``);
    ``features[f]`` must come from an omni model whose stage 2 never saw the positives of fold
    ``f``'s users. A ranker trained on in-sample scores learns to trust them more than they
    deserve on new rows (the omni model has already fitted those very clicks); out-of-fold
    scores behave the same on training and test rows.

    Args:
        features: one ``OmniMatchFeature`` per fold, trained without that fold.
        name: how configs and manifests refer to it.
    """

    def __init__(self, features: Sequence[OmniMatchFeature], name: str = "omni") -> None:
        if len(features) < 2:
            raise ValueError(f"UserFoldMatchFeature: needs >= 2 folds, got {len(features)}")
        self.name = name
        self.features = list(features)

    def score(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
    ) -> torch.Tensor:
        """``(B,)`` float32: each pair scored by the feature of its user's fold."""
        folds = user_fold(user_ids, len(self.features))
        out = torch.zeros(len(item_ids), dtype=torch.float32)
        for f, feature in enumerate(self.features):
            rows = np.flatnonzero(folds == f)
            if len(rows):
                out[torch.from_numpy(rows)] = feature.score(
                    np.asarray(user_ids, dtype=object)[rows],
                    [histories[r] for r in rows],
                    np.asarray(item_ids, dtype=object)[rows],
                )
        return out


def user_fold(user_ids: Sequence[str] | np.ndarray, folds: int) -> np.ndarray:
    """``(B,)`` int64 fold of each user id (a salted hash, stable across processes)."""
    hashed = hash_values([str(u) for u in user_ids], salt=FOLD_SALT)
    return (hashed % np.uint64(folds)).astype(np.int64)
