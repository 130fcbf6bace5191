"""Score example rows with a bundle: the score table every offline metric reads.

A score table is a pandas frame with one row per example: ``user_id``, ``item_id``, ``label``
(0/1), ``score`` (the ranker's click probability), and when present ``ts``, ``lt7``, ``lt14``,
``lt7_pred`` (the ranker's LT head) and ``concepts`` (the item's ``s_item_concepts``).
Two-tower bundles do not score rows; they are measured by retrieval (``retrieval_ranks``).

``score_frame`` is the unit that both the single-machine job (``iter_scored_batches`` over
Parquet row groups) and the Spark job (inside ``mapInPandas``) call, so both score alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recsys.bundle import Bundle
from recsys.features.batcher import BatcherError, feature_columns, table_to_batch
from recsys.features.sparse_rule import HISTORY
from recsys.features.spec import FeatureSpec
from recsys.models.match import MatchFeature, bundle_match_features
from recsys.models.ranker import Ranker

KEEP = ("user_id", "item_id", "label", "ts", "lt7", "lt14")
CONCEPTS = "s_item_concepts"
SCORE_COLUMNS = ("user_id", "item_id", "label", "score", "ts", "lt7", "lt14", "lt7_pred")


def bundle_spec(bundle: Bundle) -> FeatureSpec:
    """The feature spec the bundle's model was trained on."""
    return FeatureSpec.from_dict(bundle.meta["model"]["kwargs"]["spec"])


def bundle_kind(bundle: Bundle) -> str:
    return str(bundle.meta["model"]["kind"])


def needed_columns(
    spec: FeatureSpec, available: Sequence[str], match_features: Sequence[MatchFeature] = ()
) -> list[str]:
    """The example columns scoring reads: features (``history`` for ``s_history``), ids,
    label, time and LT when present, and ``history`` when there are match features."""
    history = [HISTORY] if match_features else []
    wanted = [*feature_columns(spec, available), *KEEP, CONCEPTS, *history]
    seen: list[str] = []
    for c in wanted:
        if c in available and c not in seen:
            seen.append(c)
    return seen


@torch.inference_mode()
def score_table(
    model: Ranker,
    spec: FeatureSpec,
    table: pa.Table,
    match_features: Sequence[MatchFeature] = (),
) -> pd.DataFrame:
    """Score the rows of an Arrow table of examples with a ranker -> score table rows.

    ``match_features``: the frozen scorers of the ranker's ``model.num_match`` match inputs,
    in its order (the table then needs ``user_id``, ``item_id`` and ``history``).
    """
    if len(match_features) != model.num_match:
        raise ValueError(
            f"model.num_match is {model.num_match} but {len(match_features)} match features "
            f"were given ({[f.name for f in match_features]})"
        )
    batch = table_to_batch(table, spec, match_features)
    if model.num_match:
        out = model(batch.sparse, batch.dense, batch.match)
    else:
        out = model(batch.sparse, batch.dense)
    names = table.column_names
    frame = pd.DataFrame(
        {
            "user_id": table.column("user_id").to_pandas().astype(str),
            "item_id": table.column("item_id").to_pandas().astype(str),
            "label": (batch.labels.numpy() > 0.5).astype(np.int8),
            "score": torch.sigmoid(out.logits.double()).numpy(),
        }
    )
    for c in ("ts", "lt7", "lt14"):
        if c in names:
            frame[c] = table.column(c).to_pandas()
    if out.lt7 is not None:
        frame["lt7_pred"] = out.lt7.double().numpy()
    if CONCEPTS in names:
        frame["concepts"] = table.column(CONCEPTS).to_pandas()
    return frame


def score_frame(
    bundle: Bundle, frame: pd.DataFrame, match_features: Sequence[MatchFeature] = ()
) -> pd.DataFrame:
    """Score a pandas frame of example rows (the Spark ``mapInPandas`` body calls this)."""
    spec = bundle_spec(bundle)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return score_table(bundle.model, spec, table, match_features)  # type: ignore[arg-type]


def split_files(examples_dir: str | Path, split: str) -> list[Path]:
    d = Path(examples_dir) / f"split={split}"
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise BatcherError(f"{d}: no *.parquet files")
    return files


def iter_split(
    examples_dir: str | Path,
    split: str,
    columns: Sequence[str] | None,
    batch_rows: int = 8192,
) -> Iterator[pa.Table]:
    """The split's rows, ``batch_rows`` at a time (never the whole split in memory)."""
    for f in split_files(examples_dir, split):
        pf = pq.ParquetFile(f)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield pa.Table.from_batches([rb])


def split_rows(examples_dir: str | Path, split: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in split_files(examples_dir, split))


def score_split(
    bundle: Bundle,
    examples_dir: str | Path,
    split: str = "test",
    *,
    batch_rows: int = 8192,
    progress: bool = True,
    match_features: Sequence[MatchFeature] = (),
) -> pd.DataFrame:
    """Score every row of ``split`` with a ranker bundle -> one score table
    (``match_features`` as in ``score_table``)."""
    if bundle_kind(bundle) != "ranker":
        raise ValueError(f"{bundle.path}: a {bundle_kind(bundle)!r} bundle does not score rows")
    if not match_features and getattr(bundle.model, "num_match", 0):
        match_features = bundle_match_features(bundle.meta)  # those it was trained with
    return score_model_split(
        bundle.model,  # type: ignore[arg-type]
        bundle_spec(bundle),
        examples_dir,
        split,
        batch_rows=batch_rows,
        progress=progress,
        match_features=match_features,
    )


def score_model_split(
    model: Ranker,
    spec: FeatureSpec,
    examples_dir: str | Path,
    split: str = "test",
    *,
    batch_rows: int = 8192,
    progress: bool = True,
    match_features: Sequence[MatchFeature] = (),
) -> pd.DataFrame:
    """``score_split`` for a ranker in memory (not exported) and its feature spec."""
    first = split_files(examples_dir, split)[0]
    columns = needed_columns(spec, pq.ParquetFile(first).schema_arrow.names, match_features)
    parts: list[pd.DataFrame] = []
    with tqdm(
        total=split_rows(examples_dir, split),
        desc=f"score {split}",
        unit="row",
        disable=not progress,
    ) as bar:
        for table in iter_split(examples_dir, split, columns, batch_rows):
            parts.append(score_table(model, spec, table, match_features))
            bar.update(table.num_rows)
    return pd.concat(parts, ignore_index=True)


def last_log_day(examples_dir: str | Path) -> pd.Timestamp | None:
    """The last UTC day with an example in any split (where LT windows get cut off)."""
    last = None
    for split_dir in sorted(Path(examples_dir).glob("split=*")):
        for table in iter_split(examples_dir, split_dir.name.removeprefix("split="), ["ts"], 65536):
            if "ts" not in table.column_names or table.num_rows == 0:
                continue
            m = pc.max(table.column("ts")).as_py()
            if m is not None and (last is None or m > last):
                last = m
    return None if last is None else pd.Timestamp(last).tz_convert("UTC").floor("D")


def seen_counts(examples_dir: str | Path, split: str, column: str) -> pd.Series:
    """How many rows of ``split`` each distinct value of ``column`` has."""
    counts: pd.Series | None = None
    for table in iter_split(examples_dir, split, [column], batch_rows=65536):
        c = table.column(column).to_pandas().astype(str).value_counts()
        counts = c if counts is None else counts.add(c, fill_value=0)
    return counts if counts is not None else pd.Series(dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# retrieval (two-tower)


def true_item_ranks(
    queries: np.ndarray,
    true_rows: np.ndarray,
    corpus: np.ndarray,
    *,
    chunk_rows: int = 1024,
    chunk_items: int = 65536,
) -> np.ndarray:
    """``(P,)`` int64: for each query, how many corpus items score strictly above its true
    item (dot product). ``queries`` ``(P, D)``, ``true_rows`` ``(P,)`` row of the true item in
    ``corpus`` ``(C, D)``. Memory is ``chunk_rows x chunk_items`` scores."""
    ranks = np.zeros(len(queries), dtype=np.int64)
    for lo in range(0, len(queries), chunk_rows):
        q = queries[lo : lo + chunk_rows]
        true_score = np.einsum("pd,pd->p", q, corpus[true_rows[lo : lo + chunk_rows]])
        for c in range(0, len(corpus), chunk_items):
            scores = q @ corpus[c : c + chunk_items].T
            ranks[lo : lo + chunk_rows] += (scores > true_score[:, None]).sum(axis=1)
    return ranks


def retrieval_table(
    bundle: Bundle,
    examples_dir: str | Path,
    split: str = "test",
    corpus_splits: Sequence[str] = ("train", "valid", "test"),
    *,
    batch_rows: int = 8192,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per positive example of ``split``: ``user_id``, ``item_id``, ``rank`` of the
    true item among every distinct item of ``corpus_splits`` (embedded by the item tower)."""
    spec = bundle_spec(bundle)
    item_cols = ["item_id", *spec.item]
    corpus_ids: dict[str, int] = {}
    vectors: list[np.ndarray] = []
    for s in corpus_splits:
        if not (Path(examples_dir) / f"split={s}").is_dir():
            continue
        for table in iter_split(examples_dir, s, item_cols, batch_rows):
            ids = table.column("item_id").to_pandas().astype(str)
            fresh = ~ids.duplicated().to_numpy() & ~ids.isin(corpus_ids).to_numpy()
            if not fresh.any():
                continue
            rows = table.filter(pa.array(fresh))
            for i in ids[fresh]:
                corpus_ids[i] = len(corpus_ids)
            vectors.append(bundle.embed("item", rows))
    corpus = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    user_cols = ["user_id", "item_id", "label", *spec.user, HISTORY]
    out: list[pd.DataFrame] = []
    for table in tqdm(
        list(iter_split(examples_dir, split, user_cols, batch_rows)),
        desc=f"retrieve {split}",
        disable=not progress,
    ):
        positive = pc.greater(table.column("label"), 0)
        table = table.filter(positive)
        if table.num_rows == 0:
            continue
        items = table.column("item_id").to_pandas().astype(str)
        known = items.isin(corpus_ids).to_numpy()
        table, items = table.filter(pa.array(known)), items[known]
        queries = bundle.embed("user", table)
        rows = np.array([corpus_ids[i] for i in items], dtype=np.int64)
        out.append(
            pd.DataFrame(
                {
                    "user_id": table.column("user_id").to_pandas().astype(str),
                    "item_id": items.to_numpy(),
                    "rank": true_item_ranks(queries, rows, corpus),
                }
            )
        )
    if not out:
        return pd.DataFrame({"user_id": [], "item_id": [], "rank": []})
    frame = pd.concat(out, ignore_index=True)
    frame.attrs["corpus_items"] = len(corpus_ids)
    return frame
