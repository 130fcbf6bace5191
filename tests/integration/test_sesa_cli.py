"""``recsys train`` / ``recsys export`` with ``model.kind: sesa`` as real processes, and the
exported bundle feeding the ranker's match features by config (``model.match``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from recsys.concepts.checkpoint import load_sesa_checkpoint, load_space
from recsys.concepts.data import read_examples
from recsys.concepts.train import load_concept_data, space_from_model
from recsys.config import load_config
from recsys.models.match import load_match_features

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "recsys" / "concepts"))
from conftest import write_concept_world  # noqa: E402

RECSYS = [str(ROOT / ".venv" / "bin" / "recsys")]


def _config(root: Path) -> Path:
    path = root / "sesa.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sesa-cli",
                "output_dir": str(root),
                "source": {"kind": "simulator"},
                "model": {"kind": "sesa"},
                "sesa": {"embed_dim": 16, "hidden": 16, "top_k": 3, "id_buckets": 1024, "lr": 0.01},
                "train": {"epochs": 3, "batch_size": 128, "progress": False, "num_threads": 1},
            }
        )
    )
    return path


def _run(*args: str) -> dict:
    done = subprocess.run([*RECSYS, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_recsys_train_and_export_write_a_sesa_bundle_that_scores_like_the_checkpoint(
    tmp_path: Path,
) -> None:
    write_concept_world(tmp_path)
    config = _config(tmp_path)
    trained = _run("train", "--config", str(config))
    assert trained["best_epoch"] >= 0 and 0.5 < trained["valid_auc"] <= 1.0
    exported = _run("export", "--config", str(config))
    bundle = Path(exported["bundle"])
    assert bundle.parent == tmp_path / "bundles"
    assert {"concepts.json", "space.json", "items.parquet", "users.parquet"} <= {
        p.name for p in bundle.iterdir()
    }
    cfg = load_config(config)
    model, meta = load_sesa_checkpoint(tmp_path / "checkpoints")
    expected = space_from_model(model, load_concept_data(cfg, tmp_path / "examples"), "sesa", 20)
    rows = read_examples(tmp_path / "examples", "test")
    np.testing.assert_array_equal(
        load_space(bundle).score_numpy(rows.user_ids, rows.histories, rows.item_ids),
        expected.score_numpy(rows.user_ids, rows.histories, rows.item_ids),
    )
    # the ranker's match features, named by config
    ranker_cfg = load_config(
        config,
        {
            "model.kind": "ranker",
            "model.match": [{"name": "sesa", "bundle": str(tmp_path / "bundles")}],
        },
    )
    assert ranker_cfg.model.num_match == 1
    (feature,) = load_match_features(ranker_cfg.model)
    assert feature.name == "sesa"
    scores = feature.score(rows.user_ids[:5], rows.histories[:5], rows.item_ids[:5])
    assert scores.shape == (5,)
    expected = (
        load_space(bundle)
        .match_feature()
        .score(rows.user_ids[:5], rows.histories[:5], rows.item_ids[:5])
    )
    assert torch.equal(scores, expected)
