"""Exact vocabularies of sparse features, for collisionless embedding tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.features.batcher import BatcherError, sparse_hashes


def build_vocabulary(
    examples_dir: str | Path,
    features: Sequence[str],
    split: str = "train",
    min_count: int = 1,
) -> dict[str, np.ndarray]:
    """Sorted unique raw hashes (``int64``, as in ``Batch.sparse``) of each feature in ``split``.

    Streams the split one row group at a time (only the named columns), hashing each distinct
    value once per row group. Values seen fewer than ``min_count`` times are left out (they
    fall into the OOV row of a ``CollisionlessEmbedding``).
    """
    d = Path(examples_dir) / f"split={split}"
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise BatcherError(f"{d}: no *.parquet files")
    uniq: dict[str, list[np.ndarray]] = {f: [] for f in features}
    counts: dict[str, list[np.ndarray]] = {f: [] for f in features}
    for path in files:
        pf = pq.ParquetFile(path)
        missing = [f for f in features if f not in pf.schema_arrow.names]
        if missing:
            raise BatcherError(f"{path}: missing column(s) {missing}")
        for g in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(g, columns=list(features))
            for f in features:
                _, values = sparse_hashes(table.column(f), f)
                u, c = np.unique(values, return_counts=True)
                uniq[f].append(u)
                counts[f].append(c)
    out: dict[str, np.ndarray] = {}
    for f in features:
        if not uniq[f]:
            out[f] = np.zeros(0, dtype=np.int64)
            continue
        u, inv = np.unique(np.concatenate(uniq[f]), return_inverse=True)
        c = np.bincount(inv, weights=np.concatenate(counts[f]), minlength=len(u))
        out[f] = u[c >= min_count].astype(np.int64)
    return out
