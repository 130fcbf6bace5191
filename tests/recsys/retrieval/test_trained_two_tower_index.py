"""``recsys index`` on a really trained two-tower bundle: simulator -> Spark prepare -> train
(one epoch) -> export (``run_pipeline``), then ``recsys index --config`` as a subprocess, then
the bundle loaded back and its index searched with user vectors of the test split.

With a shortlist covering the whole catalogue, tier 1 returns every row, so the two-tier hits
must be exactly the brute-force top-k of ``Bundle.embed("item", items)`` against each user
vector (ties by row), and excluded items must never come back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from recsys.bundle import INDEX_DIR, load_bundle
from recsys.cli import run_pipeline
from recsys.config import load_config
from recsys.retrieval.build import open_bundle_index

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
K = 10


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory) -> tuple[Path, Path, str]:  # noqa: ANN001
    """A one-epoch two-tower bundle on a small simulated world, indexed by the ``recsys index``
    command in a child process; returns ``(run dir, bundle dir, the command's stdout)``."""
    out = tmp_path_factory.mktemp("two-tower-index")
    config = {
        "name": "retrieval-index",
        "output_dir": str(out / "run"),
        "source": {"kind": "simulator"},
        "simulator": {"num_users": 80, "num_items": 60, "days": 3, "with_media": False},
        "prepare": {"label": {"kind": "click"}},
        "spark": {"master": "local[2]", "shuffle_partitions": 2},
        "embedding": {"dim": 8},
        "model": {"kind": "two_tower", "mlp": [16], "tower_dim": 8},
        "train": {"epochs": 1, "batch_size": 256, "num_threads": 1, "progress": False},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_pipeline(load_config(path), stages=("source", "prepare", "train", "export"))
    bundle = Path(summary["stages"]["export"]["bundle"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "index", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run", bundle, done.stdout


def _test_users(run_dir: Path) -> pd.DataFrame:
    table = ds.dataset(
        run_dir / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    rows = table.to_pandas()
    return rows[rows.split == "test"].drop_duplicates("user_id").reset_index(drop=True)


def test_recsys_index_writes_a_verified_index_into_the_exported_bundle(indexed):  # noqa: ANN001
    run_dir, bundle_dir, stdout = indexed
    summary = json.loads(stdout[stdout.index("{") :])
    assert summary["index"] == str(bundle_dir / INDEX_DIR)
    manifest = json.loads((bundle_dir / INDEX_DIR / "index.json").read_text())
    items = pd.read_parquet(run_dir / "raw" / "items.parquet")
    assert manifest["count"] == len(items) > 60  # the world adds items on days after the first
    bundle = load_bundle(bundle_dir)  # verifies index/ with the rest of the bundle
    index = open_bundle_index(bundle)
    np.testing.assert_array_equal(index.item_ids, items.item_id.astype(str).to_numpy())
    want = bundle.embed("item", items)
    np.testing.assert_array_equal(index.dense_rows(np.arange(len(items))), want)


def test_search_over_the_whole_catalogue_equals_brute_force_of_the_trained_vectors(indexed):  # noqa: ANN001
    run_dir, bundle_dir, _ = indexed
    bundle = load_bundle(bundle_dir)
    index = open_bundle_index(bundle)
    items = pd.read_parquet(run_dir / "raw" / "items.parquet")
    ids = items.item_id.astype(str).to_numpy()
    item_vectors = bundle.embed("item", items)  # (n, 8)
    users = _test_users(run_dir)
    assert len(users) >= 10
    user_vectors = bundle.embed("user", users)  # from the rows' s_user_* columns
    scores = user_vectors @ item_vectors.T  # (U, n)
    hits = index.search(user_vectors, k=K, shortlist=len(ids))
    for u, hit in enumerate(hits):
        order = np.lexsort((np.arange(len(ids)), -scores[u]))[:K]
        assert hit.ids.tolist() == ids[order].tolist(), u
        np.testing.assert_allclose(hit.scores, scores[u, order], rtol=1e-5, atol=1e-6)
    # The trained vectors are not degenerate: users do not all get the same list.
    assert len({tuple(h.ids.tolist()) for h in hits}) > 1


def test_history_exclusions_are_never_returned_and_the_rest_is_brute_force(indexed):  # noqa: ANN001
    run_dir, bundle_dir, _ = indexed
    bundle = load_bundle(bundle_dir)
    index = open_bundle_index(bundle)
    items = pd.read_parquet(run_dir / "raw" / "items.parquet")
    ids = items.item_id.astype(str).to_numpy()
    item_vectors = bundle.embed("item", items)
    users = _test_users(run_dir)
    user_vectors = bundle.embed("user", users)
    # Exclude each user's own brute-force top 3 plus its history: the answer must move.
    scores = user_vectors @ item_vectors.T
    exclude = [
        {*ids[np.argsort(-s)[:3]].tolist(), *map(str, history)}
        for s, history in zip(scores, users.history, strict=True)
    ]
    hits = index.search(user_vectors, k=K, shortlist=len(ids), exclude=exclude)
    for u, hit in enumerate(hits):
        assert not set(hit.ids.tolist()) & exclude[u], u
        allowed = np.array([i not in exclude[u] for i in ids])
        masked = np.where(allowed, scores[u], -np.inf)
        order = np.lexsort((np.arange(len(ids)), -masked))[: min(K, int(allowed.sum()))]
        assert hit.ids.tolist() == ids[order].tolist(), u
