from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.bundle import load_bundle
from recsys.omni.bundle import OMNI_TABLE, read_item_table
from recsys.omni.config import OmniConfig
from recsys.omni.pipeline import run_omni, train_split_cases


def test_train_split_cases_hold_the_train_positives_with_their_history(
    examples_dir: Path, items: pa.Table
) -> None:
    item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
    cases = train_split_cases(examples_dir, item_ids, 3)
    train = pq.read_table(examples_dir / "split=train").to_pandas()
    known = train[(train.label > 0) & train.item_id.isin(set(item_ids))]
    assert len(cases) == len(known) > 0
    assert item_ids[cases.target].tolist() == known.item_id.tolist()
    first = known.iloc[0]
    expected = [h for h in list(first.history) if h in set(item_ids)][-3:]
    assert [item_ids[r] for r in cases.history[0] if r >= 0] == expected


def _run_small_omni(tmp_path: Path, examples_dir: Path, items: pa.Table, cfg: OmniConfig) -> Path:
    """``run_omni`` on ``items`` (written as the raw items table) and ``examples_dir``."""
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(items, raw / "items.parquet")
    return run_omni(cfg, raw, examples_dir, tmp_path / "bundles", progress=False)


def test_run_omni_exports_a_bundle_with_every_catalogue_item(
    tmp_path: Path, examples_dir: Path, items: pa.Table, small_cfg: OmniConfig
) -> None:
    cfg = small_cfg.model_copy(update={"stage1_epochs": 1, "stage2_epochs": 1})
    version = _run_small_omni(tmp_path, examples_dir, items, cfg)
    bundle = load_bundle(version)
    assert bundle.meta["model"]["kind"] == "omni"
    assert bundle.meta["metrics"]["train_positives"] > 0
    ids, vectors = read_item_table(version / OMNI_TABLE)
    assert ids.tolist() == items["item_id"].to_pylist()
    np.testing.assert_allclose(bundle.embed("item", items.to_pandas()), vectors, atol=1e-6)


def test_run_omni_stores_a_match_scale_that_standardises_the_training_rows(
    tmp_path: Path, examples_dir: Path, items: pa.Table, small_cfg: OmniConfig
) -> None:
    from recsys.omni.match_feature import OmniMatchFeature, example_rows

    cfg = small_cfg.model_copy(update={"stage1_epochs": 1, "stage2_epochs": 1})
    version = _run_small_omni(tmp_path, examples_dir, items, cfg)
    feature = OmniMatchFeature.from_table(version / OMNI_TABLE, cfg.history_length)
    assert feature.scale is not None
    assert load_bundle(version).meta["metrics"]["match_std"] == pytest.approx(feature.scale.std)
    histories, item_ids = example_rows(examples_dir)
    _, scored = feature.cosines(histories, item_ids)
    users = np.array(["u"] * len(item_ids), dtype=object)
    z = feature.score(users, histories, item_ids).numpy()[scored]
    assert scored.sum() > 10
    assert abs(z.mean()) < 1e-3 and z.std() == pytest.approx(1.0, rel=1e-3)
