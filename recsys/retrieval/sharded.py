"""Several shards behind the ``search`` of one index: shortlists merged, then exact re-score.

Shards split the catalogue by item range; each holds the tier-1 codes and tier-2 vectors of
its range, with tier-1 quantizers trained once on a sample of the whole catalogue and shared
(so approximate scores are comparable across shards). A search:

1. asks every shard for its shortlist of ``N + |excluded|`` (in parallel on a cluster; here
   in turn), each without its excluded rows;
2. merges them into the global top ``N`` by approximate score (ties: lower global row);
3. sends each shard the merged rows it owns for exact re-scoring, and returns the top ``k``.

With shared quantizers the merged shortlist is exactly the one a single index over the whole
catalogue would produce, so the result is the same (tested). Global rows are
``offset(shard) + local row``; a ``ShardedIndex`` is itself a ``Retriever`` and can be a
shard of another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from recsys.retrieval.compact import CompactCodes, TierOneConfig
from recsys.retrieval.two_tier import (
    DEFAULT_SHORTLIST,
    Retriever,
    TwoTierIndex,
    _id_array,
    best_first,
)


class ShardedIndex(Retriever):
    """The union of ``shards`` (same dimension), searched like one index.

    Args:
        shards: ``Retriever``s over disjoint item ranges, in row order.
        default_shortlist: ``N`` when a search does not give one (default: the first
            shard's).
    """

    def __init__(self, shards: Sequence[Retriever], *, default_shortlist: int | None = None):
        if not shards:
            raise ValueError("ShardedIndex: needs at least one shard")
        dims = {s.dim for s in shards}
        if len(dims) != 1:
            raise ValueError(f"ShardedIndex: shards of different dimensions {sorted(dims)}")
        self.shards = list(shards)
        self.dim = dims.pop()
        counts = [s.count for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.count = int(self.offsets[-1])
        self.default_shortlist = default_shortlist or shards[0].default_shortlist

    def _split(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard, positions in rows, local rows)`` for each shard owning some of ``rows``."""
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        out = []
        for s in np.unique(owner):
            where = np.flatnonzero(owner == s)
            out.append((int(s), where, rows[where] - self.offsets[s]))
        return out

    def _local_excluded(self, exclude: Sequence[np.ndarray], s: int) -> list[np.ndarray]:
        lo, hi = self.offsets[s], self.offsets[s + 1]
        return [e[(e >= lo) & (e < hi)] - lo for e in exclude]

    def shortlist(
        self, queries: np.ndarray, sizes: Sequence[int], exclude: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        per_shard = [
            shard.shortlist(queries, sizes, self._local_excluded(exclude, s))
            for s, shard in enumerate(self.shards)
            if shard.count
        ]
        live = [s for s, shard in enumerate(self.shards) if shard.count]
        rows = [
            np.concatenate([per_shard[j][i][0] + self.offsets[s] for j, s in enumerate(live)])
            for i in range(len(sizes))
        ]
        approx = [np.concatenate([p[i][1] for p in per_shard]) for i in range(len(sizes))]
        best = best_first(rows, approx, sizes)  # top N by approximate score, ties: lower row
        return [(r[b], a[b]) for r, a, b in zip(rows, approx, best, strict=True)]

    def rescore(self, queries: np.ndarray, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        scores = [np.empty(r.shape[0], dtype=np.float32) for r in rows]
        for s, shard in enumerate(self.shards):
            asked = [r[(r >= self.offsets[s]) & (r < self.offsets[s + 1])] for r in rows]
            if not any(a.size for a in asked):
                continue
            local = shard.rescore(queries, [a - self.offsets[s] for a in asked])
            for i, r in enumerate(rows):
                mask = (r >= self.offsets[s]) & (r < self.offsets[s + 1])
                scores[i][mask] = local[i]
        return scores

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        if rows.size == 0:
            return self.shards[0].ids_of(rows)
        parts = self._split(rows)
        where = np.concatenate([w for _, w, _ in parts])
        ids = np.concatenate([self.shards[s].ids_of(local) for s, _, local in parts])
        return ids[np.argsort(where, kind="stable")]

    def rows_of(self, ids: Iterable[Any]) -> np.ndarray:
        ids = list(ids)
        parts = [shard.rows_of(ids) + self.offsets[s] for s, shard in enumerate(self.shards)]
        return np.unique(np.concatenate(parts)).astype(np.int64)


def build_shards(
    vectors: np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    num_shards: int,
    config: TierOneConfig | None = None,
    *,
    default_shortlist: int = DEFAULT_SHORTLIST,
) -> list[TwoTierIndex]:
    """Split ``vectors (n, d)`` into ``num_shards`` contiguous item ranges sharing one set of
    tier-1 quantizers, trained once on a sample of all ``n`` (on a cluster: trained on a
    sample, then each shard machine encodes its own range)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = _id_array(item_ids)
    trained = CompactCodes.train(vectors, config or TierOneConfig(), add=False)
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)
    shards = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        codes = trained.encode(vectors[lo:hi]) if hi > lo else None
        shards.append(
            TwoTierIndex(codes, vectors[lo:hi], ids[lo:hi], default_shortlist=default_shortlist)
        )
    return shards
