"""The ``index`` stage: embed the catalogue with a bundle's model and add its two-tier index.

``build_index(cfg, bundle_dir)`` reads ``<output_dir>/raw/items.parquet`` in batches, embeds
each with ``Bundle.embed("item", rows)``, trains tier 1 and writes ``<bundle>/index/`` with
``recsys.bundle.write_bundle_index`` (temporary directory, checksums, one rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.bundle import Bundle, BundleError, load_bundle, newest_version, write_bundle_index
from recsys.config import PipelineConfig
from recsys.retrieval.compact import TierOneConfig
from recsys.retrieval.two_tier import DEFAULT_SHORTLIST, TwoTierIndex

ITEMS = "items.parquet"
EMBED_BATCH = 4096


def embed_items(bundle: Bundle, items_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids (n,) str, vectors (n, d) float32)`` of every row of the items table."""
    items_path = Path(items_path)
    if not items_path.is_file():
        raise FileNotFoundError(f"{items_path}: no items table (run `recsys source` first)")
    ids, vectors = [], []
    for batch in pq.ParquetFile(items_path).iter_batches(batch_size=EMBED_BATCH):
        frame = batch.to_pandas()
        ids.append(frame["item_id"].astype(str).to_numpy())
        vectors.append(np.asarray(bundle.embed("item", frame), dtype=np.float32))
    if not ids:
        return np.empty(0, dtype="<U1"), np.empty((0, 0), dtype=np.float32)
    item_ids = np.concatenate(ids).astype(str)
    unique, counts = np.unique(item_ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{items_path}: item_id {unique[counts > 1][0]!r} appears more than once")
    return item_ids, np.concatenate(vectors)


def build_index(
    cfg: PipelineConfig,
    bundle_dir: str | Path | None = None,
    *,
    tier_one: TierOneConfig | None = None,
    shortlist: int = DEFAULT_SHORTLIST,
    replace: bool = False,
) -> Path:
    """Embed ``<output_dir>/raw/items.parquet`` with the bundle (default: the newest under
    ``<output_dir>/bundles``) and write its ``index/``; return the index directory.

    ``tier_one`` defaults to ``TierOneConfig(seed=cfg.train.seed)``. An existing index is a
    ``BundleError`` unless ``replace`` (then swapped atomically).
    """
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else newest_version(cfg.out / "bundles")
    bundle = load_bundle(bundle_dir)
    item_ids, vectors = embed_items(bundle, cfg.out / "raw" / ITEMS)
    if vectors.shape[1] == 0:  # no items: keep the model's width unknown-free
        vectors = np.empty((0, _item_width(bundle)), dtype=np.float32)
    index = TwoTierIndex.build(
        vectors,
        item_ids,
        tier_one or TierOneConfig(seed=cfg.train.seed),
        default_shortlist=shortlist,
    )
    return write_bundle_index(bundle_dir, index.save, replace=replace)


def _item_width(bundle: Bundle) -> int:
    import pandas as pd

    frame = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    try:
        return int(bundle.embed("item", frame).shape[1])
    except Exception as e:  # the model cannot embed an empty table: no width to record
        raise ValueError(f"{bundle.path}: the items table is empty and the width unknown") from e


def open_bundle_index(bundle: Bundle) -> TwoTierIndex:
    """The loaded bundle's index (already verified by ``load_bundle``), memory-mapped."""
    from recsys.retrieval.two_tier import load_index

    if bundle.index_dir is None:
        raise BundleError(f"{bundle.path}: no index (run `recsys index` first)")
    return load_index(bundle.index_dir, verify=False)
