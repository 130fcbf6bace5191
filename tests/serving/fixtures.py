"""Real bundles for serving tests (fixtures imported by the serving test modules): a tiny two-tower and a tiny ranker trained one epoch on a
small examples directory, plus the raw ``items``/``users`` catalogues of that directory.

Training both takes a few seconds; every serving test shares them (session scope).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch

from recsys.bundle import export_bundle, load_bundle
from recsys.config import parse_config
from recsys.training import export, train
from tests.recsys.conftest import write_examples

V1, V2 = "20260101T000000Z-v1", "20260101T000100Z-v2"


@dataclass(frozen=True)
class ServingData:
    examples: Path
    embedder_root: Path  # two-tower versions (V1 only; tests copy it to add versions)
    ranker_root: Path
    items: Path
    users: Path


def _cfg(kind: str) -> object:
    return parse_config(
        {
            "name": "serving-test",
            "source": {"kind": "simulator"},
            "embedding": {"dim": 8},
            "model": {"kind": kind, "mlp": [16], "tower_dim": 8, "cross_layers": 1},
            "train": {"batch_size": 256, "epochs": 1, "progress": False, "num_threads": 1},
        }
    )


def _catalogues(examples: Path, out: Path) -> tuple[Path, Path]:
    rows = (
        ds.dataset(examples, format="parquet", partitioning="hive", exclude_invalid_files=True)
        .to_table()
        .to_pandas()
    )
    rows = rows.sort_values("ts")
    items = rows.drop_duplicates("item_id", keep="last")
    items = pd.DataFrame(
        {
            "item_id": items.item_id,
            "creator": [v[0] for v in items.s_item_creator],
            "concepts": [list(v) for v in items.s_item_concepts],
            "d_item_popularity": items.d_item_popularity,
        }
    )
    users = rows.drop_duplicates("user_id", keep="last")
    users = pd.DataFrame(
        {
            "user_id": users.user_id,
            "country": [v[0] for v in users.s_user_country],
            "concepts": [list(v) for v in users.s_user_concepts],
            "history": [list(v) for v in users.history],
            "d_user_activity": users.d_user_activity,
        }
    )
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    return out / "items.parquet", out / "users.parquet"


@pytest.fixture(scope="session")
def serving_data(tmp_path_factory: pytest.TempPathFactory) -> ServingData:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    examples = root / "examples"
    write_examples(examples, n_rows=1200, seed=0)
    for kind in ("two_tower", "ranker"):
        cfg = _cfg(kind)
        train(cfg, examples, root / f"run-{kind}", resume=False)
        export(cfg, root / f"run-{kind}", root / f"bundles-{kind}", version=V1)
    items, users = _catalogues(examples, root)
    return ServingData(examples, root / "bundles-two_tower", root / "bundles-ranker", items, users)


def export_perturbed(source: Path, root: Path, version: str, shift: float) -> Path:
    """A new two-tower version under ``root``: ``source``'s model with every output bias
    shifted by ``shift`` (so its vectors differ from the source's)."""
    bundle = load_bundle(source)
    with torch.no_grad():
        bundle.model.user_tower.out.bias += shift
        bundle.model.item_tower.out.bias += shift
    return export_bundle(
        root, bundle.model, "two_tower", bundle.meta["model"]["kwargs"], version=version
    )
