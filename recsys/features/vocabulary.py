"""Vocabularies: exact ones of sparse features (for collisionless embedding tables) and the
item concept vocabulary the prepare job records in the manifest (``concept_vocabulary``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.features.batcher import BatcherError, sparse_hashes
from recsys.features.sparse_rule import example_column


def build_vocabulary(
    examples_dir: str | Path,
    features: Sequence[str],
    split: str = "train",
    min_count: int = 1,
) -> dict[str, np.ndarray]:
    """Sorted unique raw hashes (``int64``, as in ``Batch.sparse``) of each feature in ``split``.

    Streams the split one row group at a time (only the named columns), hashing each distinct
    value once per row group. Values seen fewer than ``min_count`` times are left out (they
    fall into the OOV row of a ``CollisionlessEmbedding``). A feature examples store under
    another column (``s_history`` as ``history``) is read from that column.
    """
    d = Path(examples_dir) / f"split={split}"
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise BatcherError(f"{d}: no *.parquet files")
    uniq: dict[str, list[np.ndarray]] = {f: [] for f in features}
    counts: dict[str, list[np.ndarray]] = {f: [] for f in features}
    for path in files:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        source = {f: f if f in names else example_column(f) for f in features}
        missing = [f for f in features if source[f] not in names]
        if missing:
            raise BatcherError(f"{path}: missing column(s) {missing}")
        for g in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(g, columns=list(dict.fromkeys(source.values())))
            for f in features:
                _, values = sparse_hashes(table.column(source[f]), f)
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


def concept_vocabulary(
    items_per_concept: Mapping[str, int],
    items_per_spelling: Mapping[str, Mapping[str, int]],
    min_count: int,
) -> dict[str, object]:
    """The manifest's ``concepts`` entry: every normalised concept on at least ``min_count``
    items, ids in a stable order (item count descending, then name), each with its ``display``
    name (the spelling most items use, ties to the smallest) and ``count`` (items)::

        {"min_count": 2, "items": [{"id": 0, "name": "jazz", "display": "Jazz", "count": 31}]}

    ``items_per_concept``: normalised name (``recsys.concepts.vocabulary.normalise_concept``)
    -> items carrying it; ``items_per_spelling``: name -> original spelling (stripped) -> items
    carrying that spelling. The same vocabulary as ``ConceptVocabulary.from_concept_lists``
    builds in Python, from counts a Spark job made.
    """
    kept = sorted(
        ((name, n) for name, n in items_per_concept.items() if n >= min_count),
        key=lambda kv: (-kv[1], kv[0]),
    )
    entries = []
    for i, (name, n) in enumerate(kept):
        spellings = items_per_spelling.get(name) or {name: n}
        display = min(spellings.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        entries.append({"id": i, "name": name, "display": display, "count": int(n)})
    return {"min_count": min_count, "items": entries}
