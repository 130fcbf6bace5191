"""The omni item-embedding table and the omni model in a bundle.

- ``omni_items.parquet``: one row per catalogue item, ``item_id`` (string) and ``embedding``
  (``fixed_size_list<float32>[D]``, unit vectors), written to a temporary name and renamed
  (``recsys.atomic.atomic_file``), so a reader finds the old table or the new one, never half.
- A bundle of model kind ``omni`` (``export_omni_bundle``): ``weights.pt`` of the
  ``OmniModalEncoder`` plus the table above; ``Bundle.embed("item", frame)`` and
  ``spark_jobs/batch_embed.py`` embed any ``items`` rows with it (new items included).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.atomic import atomic_file
from recsys.bundle import export_bundle, register_model_kind
from recsys.omni.fusion import OmniModalEncoder

OMNI_KIND = "omni"
OMNI_FACTORY = "recsys.omni.fusion:omni_from_kwargs"
OMNI_TABLE = "omni_items.parquet"
MATCH_SCALE_KEY = b"omni.match_scale"


class OmniTableError(ValueError):
    """An omni item table that cannot be used; the message names the file and the problem."""


def write_item_table(
    path: str | Path,
    item_ids: np.ndarray,
    vectors: np.ndarray,
    match_scale: tuple[float, float] | None = None,
) -> None:
    """Write ``item_ids (I,)`` and ``vectors (I, D)`` float32 to ``path`` atomically, with
    the match score's ``(mean, std)`` in the schema metadata when given."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise OmniTableError(
            f"{path}: {len(item_ids)} ids but vectors of shape {tuple(vectors.shape)}"
        )
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(1))[0])
        raise OmniTableError(f"{path}: non-finite embedding for item {item_ids[bad]!r}")
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    table = pa.table(
        {"item_id": pa.array([str(i) for i in item_ids], pa.string()), "embedding": embedding}
    )
    if match_scale is not None:
        mean, std = (float(v) for v in match_scale)
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise OmniTableError(
                f"{path}: match scale needs a finite mean and std > 0, got {mean}, {std}"
            )
        meta = {MATCH_SCALE_KEY: json.dumps({"mean": mean, "std": std}).encode()}
        table = table.replace_schema_metadata(meta)
    with atomic_file(path) as f:
        pq.write_table(table, f)


def read_item_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids (I,) object, vectors (I, D) float32)`` from an omni item table."""
    path = Path(path)
    if not path.is_file():
        raise OmniTableError(f"{path}: no omni item table")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise OmniTableError(f"{path}: unreadable omni item table: {e}") from e
    missing = {"item_id", "embedding"} - set(table.column_names)
    if missing:
        raise OmniTableError(f"{path}: missing column(s) {sorted(missing)}")
    emb = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(emb.type):
        raise OmniTableError(f"{path}: embedding must be fixed_size_list<float32>, got {emb.type}")
    vectors = emb.flatten().to_numpy().astype(np.float32).reshape(len(table), emb.type.list_size)
    ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    return ids, vectors


def read_match_scale(path: str | Path) -> tuple[float, float] | None:
    """The ``(mean, std)`` of the match score stored with an omni item table, or ``None``."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise OmniTableError(f"{path}: unreadable omni item table: {e}") from e
    if MATCH_SCALE_KEY not in meta:
        return None
    try:
        scale = json.loads(meta[MATCH_SCALE_KEY])
        return float(scale["mean"]), float(scale["std"])
    except (ValueError, KeyError, TypeError) as e:
        raise OmniTableError(f"{path}: bad {MATCH_SCALE_KEY.decode()} metadata: {e}") from e


def item_table_writer(
    item_ids: np.ndarray, vectors: np.ndarray, match_scale: tuple[float, float] | None = None
) -> Callable[[Path], None]:
    """An ``export_bundle(extra_files={OMNI_TABLE: ...})`` writer of the table."""
    return lambda path: write_item_table(path, item_ids, vectors, match_scale)


def export_omni_bundle(
    out_dir: str | Path,
    model: OmniModalEncoder,
    items: pa.Table,
    *,
    version: str | None = None,
    metrics: dict | None = None,
    match_scale: tuple[float, float] | None = None,
    vectors: np.ndarray | None = None,
) -> Path:
    """Export ``model`` as a bundle of kind ``omni`` with the embeddings of every row of
    ``items`` (``omni_items.parquet``, with the match feature's ``match_scale`` when given);
    returns the version directory. ``vectors``: ``model.embed_items(items)`` when the caller
    has them already (embedding the catalogue is the costly part)."""
    register_model_kind(OMNI_KIND, OMNI_FACTORY)
    ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
    vectors = model.embed_items(items) if vectors is None else vectors
    return export_bundle(
        out_dir,
        model,
        OMNI_KIND,
        model.kwargs(),
        version=version,
        metrics=metrics,
        features={"item": ["title", "text", "concepts", "creator", "image", "audio"]},
        extra_files={OMNI_TABLE: item_table_writer(ids, vectors, match_scale)},
    )
