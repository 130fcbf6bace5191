"""``OmniMatchFeature``: the ranker's omni-modal match score (``recsys.models.match``).

Score of a (user, item) pair: the cosine of the item's omni embedding with the normalised
mean of the omni embeddings of the user's last ``history_length`` history items (the
sequence-to-item query of stage 2). The table covers the whole catalogue, items without any
interaction included, so a cold item scores by its content. Score 0 when the item is not in
the table or no history item is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys.features.hashing import hash_values
from recsys.omni.bundle import read_item_table
from recsys.omni.next_item import history_queries

FOLD_SALT = 0x0F01D  # user folds of out-of-fold scores, independent of every feature hash


class OmniMatchFeature:
    """Frozen omni similarity of an item to the user's history.

    Args:
        item_ids: ``(I,)`` item ids of the table rows.
        vectors: ``(I, D)`` omni embeddings (normalised here).
        history_length: last N history items averaged into the query.
        name: how configs and manifests refer to it.
    """

    def __init__(
        self,
        item_ids: Sequence[str] | np.ndarray,
        vectors: np.ndarray,
        history_length: int = 10,
        name: str = "omni",
    ) -> None:
        self.name = name
        self.history_length = history_length
        self._index = pd.Index([str(i) for i in item_ids])
        vecs = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        self._vectors = vecs / np.maximum(norms, 1e-12)

    @classmethod
    def from_table(cls, path: str | Path, history_length: int = 10) -> OmniMatchFeature:
        """From an ``omni_items.parquet`` table (``recsys.omni.bundle``)."""
        ids, vectors = read_item_table(path)
        return cls(ids, vectors, history_length)

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

    def score(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
    ) -> torch.Tensor:
        """``(B,)`` float32 cosine of each item with its user's history (see module doc)."""
        n, width = len(item_ids), self.history_length
        history = self._history_rows(histories, n, width)
        queries = history_queries(self._vectors, history)  # zeros for an empty history
        rows = self._rows(item_ids)
        item_vecs = np.where((rows >= 0)[:, None], self._vectors[rows.clip(min=0)], 0.0)
        return torch.from_numpy((queries * item_vecs).sum(1).astype(np.float32))


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
