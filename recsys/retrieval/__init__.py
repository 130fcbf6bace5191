"""Two-tier retrieval (BiDR): compact product-quantized codes in memory shortlist candidates,
dense float32 vectors memory-mapped from disk re-score them exactly.

- ``TwoTierIndex`` (``two_tier.py``): one index over one item range; ``search`` takes a batch
  of queries with ``k``, shortlist size and exclusions per query.
- ``ShardedIndex`` (``sharded.py``): the same interface over a list of shards.
- ``CompactCodes`` (``compact.py``): tier 1, FAISS OPQ + PQ (or IVF-PQ) codes.
- ``DenseVectors`` (``dense.py``): tier 2, a memory-mapped ``.npy`` read row by row.
- ``build_index`` (``build.py``): the ``index`` stage, from a bundle's item vectors into the
  bundle's ``index/`` directory.
- ``progressive`` (``progressive.py``): fine-tunes the dense tier on negatives drawn from
  tier-1 shortlists.

Importing this package does not import FAISS; the modules that need it do (``faiss-cpu`` is
the ``retrieval`` extra). See docs/retrieval.md.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TwoTierIndex": "recsys.retrieval.two_tier",
    "Hits": "recsys.retrieval.two_tier",
    "IndexFileError": "recsys.retrieval.two_tier",
    "load_index": "recsys.retrieval.two_tier",
    "ShardedIndex": "recsys.retrieval.sharded",
    "CompactCodes": "recsys.retrieval.compact",
    "TierOneConfig": "recsys.retrieval.compact",
    "DenseVectors": "recsys.retrieval.dense",
    "build_index": "recsys.retrieval.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recsys.retrieval' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
