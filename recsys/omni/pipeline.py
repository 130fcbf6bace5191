"""The omni stage of the pipeline: raw items + examples -> a trained, exported omni bundle.

``run_omni(cfg, raw_dir, examples_dir, bundles_dir)`` is what ``recsys train`` runs for
``model.kind: omni``: it reads ``raw/items.parquet`` and the positives of the examples' train
split, trains an ID-only two-tower on them (the ``id2item`` teacher, when that loss is on),
then stage 1 and stage 2 (``recsys.omni.training``), and exports a bundle of kind ``omni``
holding the model and the embedding of every catalogue item (``recsys.omni.bundle``), with the
match feature's standardisation fitted on the training examples (``recsys.omni.match_feature``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.omni.bundle import export_omni_bundle
from recsys.omni.config import OmniConfig
from recsys.omni.fusion import OmniModalEncoder
from recsys.omni.id_tower import id_item_vectors, train_id_tower
from recsys.omni.item_media import OmniInputs, item_inputs
from recsys.omni.match_feature import OmniMatchFeature, example_rows
from recsys.omni.next_item import NextItemCases
from recsys.omni.training import NextItemPairs, train_stage1, train_stage2


def train_split_cases(
    examples_dir: str | Path, item_ids: np.ndarray, history_length: int
) -> NextItemCases:
    """The positives (``label > 0``) of ``examples_dir/split=train`` as next-item cases; the
    history is the rows' ``history`` column (last ``history_length`` catalogue items)."""
    table = pq.read_table(
        Path(examples_dir) / "split=train", columns=["user_id", "item_id", "label", "history"]
    )
    table = table.filter(pc.greater(table["label"], 0))
    index = pd.Index([str(i) for i in item_ids])
    target = index.get_indexer(table["item_id"].to_pylist())
    history = np.full((table.num_rows, history_length), -1, dtype=np.int64)
    for r, past in enumerate(table["history"].to_pylist()):
        rows = index.get_indexer(list(past or [])[-history_length:])
        rows = rows[rows >= 0]
        history[r, : len(rows)] = rows
    keep = target >= 0
    users = np.asarray(table["user_id"].to_pylist(), dtype=object)
    return NextItemCases(users[keep], history[keep], target[keep])


def items_before(items: pa.Table, when: datetime | None) -> np.ndarray:
    """Rows of ``items`` created before ``when`` (all rows without a time or ``created_ts``)."""
    if when is None or "created_ts" not in items.column_names:
        return np.arange(items.num_rows)
    created = items["created_ts"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.flatnonzero(created < int(when.timestamp() * 1000))


@dataclass
class OmniRun:
    """A trained omni encoder (``model``; ``stage1`` before distillation) and its losses."""

    model: OmniModalEncoder
    stage1: OmniModalEncoder
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train_omni(
    cfg: OmniConfig,
    items: pa.Table,
    cases: NextItemCases,
    item_rows: np.ndarray | None = None,
    id_epochs: int = 10,
    progress: bool = False,
) -> OmniRun:
    """Stage 1 on ``item_rows`` of ``items`` (default all), then (``cfg.stage2``) stage 2 on
    ``cases`` (training positives as catalogue rows), with an ID two-tower trained on the
    same cases as the ``id2item`` teacher."""
    t0 = time.perf_counter()
    inputs = item_inputs(items, cfg)
    stage1, losses1 = train_stage1(cfg, inputs, item_rows, progress=progress)
    run = OmniRun(stage1, stage1, {"stage1": losses1}, {"stage1": time.perf_counter() - t0})
    if not cfg.stage2:
        return run
    t1 = time.perf_counter()
    run.model, run.losses["stage2"] = train_omni_stage2(
        stage1, cfg, items, cases, id_epochs, progress, inputs=inputs
    )
    run.seconds["stage2"] = time.perf_counter() - t1
    return run


def run_omni(
    cfg: OmniConfig,
    raw_dir: str | Path,
    examples_dir: str | Path,
    bundles_dir: str | Path,
    *,
    items_before_time: datetime | None = None,
    progress: bool = True,
) -> Path:
    """Train on ``raw_dir/items.parquet`` and the train split of ``examples_dir``; export to
    ``bundles_dir`` (a new version directory, returned). ``items_before_time``: train only on
    items created before it (the start of the test period); all items are embedded."""
    items = pq.read_table(Path(raw_dir) / "items.parquet")
    item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
    cases = train_split_cases(examples_dir, item_ids, cfg.history_length)
    run = train_omni(cfg, items, cases, items_before(items, items_before_time), progress=progress)
    metrics = {
        "stage1_final_loss": float(np.mean(run.losses["stage1"][-10:])),
        "train_positives": len(cases),
        **{f"{k}_seconds": round(v, 1) for k, v in run.seconds.items()},
    }
    if "stage2" in run.losses:
        metrics["stage2_final_loss"] = float(np.mean(run.losses["stage2"][-10:]))
    vectors = run.model.embed_items(items)
    match = OmniMatchFeature(item_ids, vectors, cfg.history_length)
    scale = match.fit_scale(*example_rows(examples_dir))
    metrics.update(match_mean=scale.mean, match_std=scale.std)
    return export_omni_bundle(
        bundles_dir,
        run.model,
        items,
        vectors=vectors,
        metrics=metrics,
        match_scale=scale.as_tuple(),
    )


def train_omni_stage2(
    stage1: OmniModalEncoder,
    cfg: OmniConfig,
    items: pa.Table,
    cases: NextItemCases,
    id_epochs: int = 10,
    progress: bool = False,
    inputs: OmniInputs | None = None,
) -> tuple[OmniModalEncoder, list[float]]:
    """Stage 2 alone from a trained ``stage1`` on ``cases`` (e.g. the positives of all users
    but one fold, for out-of-fold match scores), with an ID two-tower trained on the same
    cases as the ``id2item`` teacher; returns the model and its step losses."""
    inputs = item_inputs(items, cfg) if inputs is None else inputs
    id_vectors = warm = None
    if cfg.id2item:
        tower = train_id_tower(
            cases, inputs.item_ids, seed=cfg.seed, epochs=id_epochs, progress=progress
        )
        id_vectors = id_item_vectors(tower, inputs.item_ids)
        warm = np.zeros(len(inputs), dtype=bool)
        warm[cases.target] = True
    has_history = (cases.history >= 0).any(1)
    pairs = NextItemPairs(cases.history[has_history], cases.target[has_history])
    return train_stage2(stage1, cfg, inputs, pairs, id_vectors, warm, progress=progress)
