"""End to end: ``recsys pipeline`` stages on real inputs (simulator, bundled MovieLens subset).

source -> prepare (real Spark, the session-wide ``spark`` fixture) -> train -> export, then
the bundle is loaded back and checked against the run that trained it: its scores on the
validation split give the validation AUC the trainer recorded for the exported epoch, and
running the same pipeline again into the same directory exports a bundle whose scores are
bit-identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recsys.bundle import Bundle, load_bundle
from recsys.cli import run_pipeline
from recsys.config import parse_config
from recsys.contract import EXAMPLES, validate_table
from recsys.features.batcher import read_split, table_to_batch
from recsys.features.spec import FeatureSpec

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("valid", "test")
FAST = {
    "spark": {"master": "local[2]", "shuffle_partitions": 2},
    "train": {"epochs": 2, "batch_size": 256, "num_threads": 1, "progress": False},
    "model": {"kind": "ranker", "mlp": [32, 16], "cross_layers": 2},
}


def _scores(bundle: Bundle, examples: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's logits ``(N,)`` for every row of ``split``, and the rows' labels ``(N,)``."""
    spec = FeatureSpec.from_manifest(json.loads((examples / "manifest.json").read_text()))
    batch = table_to_batch(read_split(examples, split), spec)
    with torch.inference_mode():
        logits = bundle.model(batch.sparse, batch.dense).logits.numpy()
    return logits, batch.labels.numpy()


def _check_run(out: Path) -> dict:
    summary = json.loads((out / "pipeline.json").read_text())
    stages = ["source", "prepare", "materialize", "omni", "train", "export", "evaluate", "index"]
    stages.append("serve_check")
    assert list(summary["stages"]) == stages
    manifest = json.loads((out / "examples" / "manifest.json").read_text())
    spec = FeatureSpec.from_manifest(manifest)
    test = read_split(out / "examples", "test")
    assert test.num_rows > 0
    test = test.append_column("split", pa.array(["test"] * test.num_rows))  # the partition key
    report = validate_table(test, EXAMPLES, sparse=list(spec.sparse))
    assert report.ok, str(report)
    bundle = load_bundle(summary["stages"]["export"]["bundle"])
    logits, _ = _scores(bundle, out / "examples", "test")
    assert np.isfinite(logits).all() and logits.std() > 0
    _check_bundle_scores_give_the_trainers_valid_auc(bundle, out / "examples", summary)
    _check_evaluation_and_serving(summary, logits, test.column("label").to_numpy())
    return summary


def _check_evaluation_and_serving(summary: dict, test_logits: np.ndarray, labels: np.ndarray):
    """The evaluate stage's test AUC is the AUC of the bundle's own test scores; its report
    exists; the served ranker answered a Score call."""
    evaluation = summary["stages"]["evaluate"]
    assert evaluation["auc"] == pytest.approx(roc_auc_score(labels, test_logits), abs=1e-6)
    assert Path(evaluation["report"]).is_file()
    calls = summary["stages"]["serve_check"]["calls"]
    assert calls["Score"]["code"] == "OK" and calls["Score"]["model_version"]


def _check_bundle_scores_give_the_trainers_valid_auc(
    bundle: Bundle, examples: Path, summary: dict
) -> None:
    """The trainer measured the exported epoch's validation AUC on its own (sharded) model;
    the bundle's scores on the same rows must give that AUC (up to the error bound the
    trainer reports, if its AUC is binned): wrong weights, epoch, salts or feature order would
    not."""
    train = summary["stages"]["train"]
    best = train["epochs"][train["best_epoch"]]
    logits, labels = _scores(bundle, examples, "valid")
    assert 0 < labels.sum() < len(labels)
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()  # float32 ties, as in training
    tolerance = float(best.get("valid_auc_max_error", 0.0)) + 1e-6
    assert math.isclose(roc_auc_score(labels, probs), best["valid_auc"], abs_tol=tolerance)
    assert math.isclose(train["valid_auc"], best["valid_auc"], abs_tol=1e-12)


def test_simulated_world_runs_through_every_stage_and_learns(spark, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = parse_config(
        {
            "name": "sim-e2e",
            "output_dir": str(tmp_path / "run"),
            "source": {"kind": "simulator"},
            "simulator": {"num_users": 150, "num_items": 100, "days": 6, "with_media": False},
            "prepare": {"label": {"kind": "click"}},
            "omni": {"modalities": ["text", "categorical"], "stage1_epochs": 2, "dim": 16,
                     "matryoshka": [8, 16], "stage2_epochs": 1},
            **FAST,
        }
    )  # fmt: skip
    summary = run_pipeline(cfg)
    summary = _check_run(cfg.out)
    # the omni stage embedded every catalogue item, new ones included
    omni = Path(summary["stages"]["omni"]["bundle"])
    items = pd.read_parquet(cfg.out / "raw" / "items.parquet")
    table = pd.read_parquet(omni / "omni_items.parquet")
    assert sorted(table.item_id) == sorted(items.item_id)
    # Clicks follow a hidden affinity the features can see: better than chance on valid.
    assert summary["stages"]["train"]["valid_auc"] > 0.55


def test_bundled_movielens_subset_runs_through_every_stage(spark, tmp_path: Path) -> None:  # noqa: ANN001
    src = ROOT / "data" / "ml-latest-small"
    sub = tmp_path / "ml-subset"
    sub.mkdir()
    ratings = pd.read_csv(src / "ratings.csv")
    ratings[ratings.userId <= 60].to_csv(sub / "ratings.csv", index=False)
    (sub / "movies.csv").write_bytes((src / "movies.csv").read_bytes())
    tags = pd.read_csv(src / "tags.csv")
    tags[tags.userId <= 60].to_csv(sub / "tags.csv", index=False)
    cfg = parse_config(
        {
            "name": "ml-e2e",
            "output_dir": str(tmp_path / "run"),
            "source": {"kind": "movielens", "path": str(sub)},
            "prepare": {
                "label": {"kind": "rating", "threshold": 4.0, "drop_between": 3.0},
                "split": {"by": "user_time"},
                "min_value": 0.5,
                "max_value": 5.0,
            },
            **FAST,
        }
    )
    run_pipeline(cfg)
    summary = _check_run(cfg.out)
    counts = summary["stages"]["prepare"]["counts"]
    assert counts["train"] > counts["test"] > 0

    # The same pipeline again, into the same directory: the examples are rebuilt, so training
    # starts from scratch instead of refusing to resume, and the same seed gives a bundle whose
    # scores are bit-identical to the first one's.
    first = load_bundle(summary["stages"]["export"]["bundle"])
    first_scores = {split: _scores(first, cfg.out / "examples", split)[0] for split in SPLITS}
    rerun = run_pipeline(cfg)
    second = load_bundle(rerun["stages"]["export"]["bundle"])
    for split in SPLITS:
        again, _ = _scores(second, cfg.out / "examples", split)
        assert again.tobytes() == first_scores[split].tobytes(), f"{split}: scores differ"
