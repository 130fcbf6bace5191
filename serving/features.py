"""Request data -> model input, through the library's one feature rule.

Entity rows come from the request (``UserFeatures``) or from a catalogue: the raw
``items``/``users`` table the prepare job read (``<output_dir>/raw/*.parquet``), indexed by
id. Sparse features are built by ``recsys.features.sparse_rule.sparse_feature_columns`` and
featurised by ``recsys.features.batcher.table_to_batch``, exactly as in training and batch
embedding, so a served score equals the offline score of the same row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys.features.batcher import table_to_batch
from recsys.features.sparse_rule import STR_LIST, sparse_feature_columns
from recsys.features.spec import FeatureSpec

HISTORY = "history"
CONCEPTS = "concepts"
CREATED = "created_ts"
ITEM_AGE = "d_item_age_days"
DAY_MS = 86_400_000


class Catalogue:
    """Rows of one raw entity table (``kind`` is ``"item"`` or ``"user"``) by id.

    A users table without a ``history`` column gets empty histories (history then comes
    only with the request).
    """

    def __init__(self, kind: str, frame: pd.DataFrame, origin: str = "<frame>") -> None:
        id_column = f"{kind}_id"
        if id_column not in frame.columns:
            raise ValueError(f"{origin}: no {id_column!r} column (columns: {list(frame.columns)})")
        frame = frame.copy()
        frame[id_column] = frame[id_column].astype(str).str.strip(" ")
        if kind == "user" and HISTORY not in frame.columns:
            frame[HISTORY] = [[] for _ in range(len(frame))]
        self.kind, self.id_column = kind, id_column
        self.frame = frame.drop_duplicates(id_column, keep="last").reset_index(drop=True)
        self._position = {entity_id: n for n, entity_id in enumerate(self.frame[id_column])}

    @classmethod
    def load(cls, path: str | Path, kind: str) -> Catalogue:
        return cls(kind, pd.read_parquet(path), origin=str(path))

    def __contains__(self, entity_id: str) -> bool:
        return entity_id in self._position

    def rows(self, ids: Sequence[str]) -> tuple[pd.DataFrame, list[bool]]:
        """The rows of the known ``ids`` (in order) and a found mask."""
        positions = [self._position.get(i) for i in ids]
        found = [p is not None for p in positions]
        known = [p for p in positions if p is not None]
        return self.frame.take(known).reset_index(drop=True), found


def user_frame(
    user_id: str, history: Sequence[str], concepts: Sequence[str], attributes: Mapping[str, str]
) -> pd.DataFrame:
    """One raw users row from request fields."""
    row = {**attributes, "user_id": user_id, HISTORY: [list(history)], CONCEPTS: [list(concepts)]}
    return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in row.items()})


def item_age_days(created: pd.Series, ts_ms: int) -> np.ndarray:
    """``d_item_age_days`` at ``ts_ms``: days since ``created_ts``, at least 0, 0 when unknown
    (prepare's rule in ``spark_jobs/build_training_data.py``, for one request time)."""
    created_ms = pd.to_datetime(created, utc=True).astype("int64") // 1_000_000
    age = (ts_ms - created_ms.to_numpy(dtype=np.float64)) / DAY_MS
    age[pd.isna(created).to_numpy()] = 0.0
    return np.maximum(age, 0.0).astype(np.float32)


def _repeat(column: pa.Array, n: int) -> pa.Array:
    return column.take(pa.array(np.zeros(n, dtype=np.int64)))


def score_table(
    spec: FeatureSpec,
    user: pd.DataFrame,
    items: pd.DataFrame,
    ts_ms: int,
    context: Mapping[str, str],
    dense: Mapping[str, float],
) -> pa.Table:
    """The ``(len(items),)``-row feature table of one user (1-row frame) with each item.

    User-side features come from ``user``, item-side from ``items``, the rest (``s_hour``,
    ``s_weekday``, other context columns) from ``ts_ms`` and ``context``. A dense feature is
    read from the items, else the user row, else ``dense``; absent everywhere it is null (the
    featuriser standardises it to the training mean). Raises ``FeatureRuleError`` naming a
    sparse feature that none of them can build.
    """
    n = len(items)
    cols: dict[str, pa.Array] = {}
    for name, col in sparse_feature_columns(user, spec.user).items():
        cols[name] = _repeat(col, n)
    cols.update(sparse_feature_columns(items, spec.item))
    others = [f for f in spec.sparse if f not in cols]
    if others:
        ctx = pd.DataFrame({**{k: [v] for k, v in context.items()}, "ts": [int(ts_ms)]})
        for name, col in sparse_feature_columns(ctx, others).items():
            cols[name] = _repeat(col, n)
    if ITEM_AGE in spec.dense and ITEM_AGE not in items.columns and CREATED in items.columns:
        items = items.assign(**{ITEM_AGE: item_age_days(items[CREATED], ts_ms)})
    for name in spec.dense:
        if name in items.columns:  # NaN (an item without this feature) -> null, as in training
            values = items[name].to_numpy(dtype=np.float32, na_value=np.nan)
            cols[name] = pa.array(values, from_pandas=True)
        elif name in user.columns:
            cols[name] = pa.array(np.full(n, user[name].iloc[0], dtype=np.float32))
        elif name in dense:
            cols[name] = pa.array(np.full(n, dense[name], dtype=np.float32))
        else:
            cols[name] = pa.nulls(n, pa.float32())
    for name, col in cols.items():
        if name in spec.sparse and col.type != STR_LIST:
            cols[name] = col.cast(STR_LIST)
    return pa.table(cols)


def rank_probabilities(
    model: torch.nn.Module, spec: FeatureSpec, table: pa.Table, match: torch.Tensor | None = None
) -> np.ndarray:
    """``(N,)`` float32 click probabilities of a ranker on a feature table (``match``: its
    ``(N, M)`` match features, for a ranker trained with them)."""
    batch = table_to_batch(table, spec)
    with torch.inference_mode():
        if match is not None:
            logits = model(batch.sparse, batch.dense, match).logits
        else:
            logits = model(batch.sparse, batch.dense).logits
    return torch.sigmoid(logits).numpy().astype(np.float32)
