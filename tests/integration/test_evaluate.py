"""The evaluate job end to end on a ranker trained by the real pipeline on a small simulated
world (simulator -> Spark prepare -> train -> export): the single-machine job's metrics.json
and report, the Spark job's numbers against the single machine's on the same scores, the
report in headless Chromium, and the simulated A/B against the world's baselines."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recsys.cli import run_pipeline
from recsys.config import parse_config
from recsys.evaluation import offline
from recsys.evaluation.evaluate import evaluate_bundle, ranker_metrics
from recsys.evaluation.scoring import score_split
from spark_jobs import evaluate as spark_evaluate

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    """(config, bundle dir, examples dir) of a ranker trained 2 epochs on a small world."""
    out = tmp_path_factory.mktemp("evaluate-run")
    cfg = parse_config(
        {
            "name": "evaluate",
            "output_dir": str(out),
            "source": {"kind": "simulator"},
            "simulator": {"num_users": 300, "num_items": 120, "days": 12, "with_media": False},
            # test from day 5 of 12: day 5's user-days have a complete 7-day LT window
            "prepare": {
                "label": {"kind": "click"},
                "split": {"valid_from": "2024-01-05", "test_from": "2024-01-06"},
            },
            "spark": {"master": "local[2]", "shuffle_partitions": 2},
            "embedding": {"dim": 8},
            "model": {"kind": "ranker", "mlp": [16], "cross_layers": 1, "lt_head": True},
            "train": {"epochs": 2, "batch_size": 256, "num_threads": 1, "progress": False},
        }
    )
    summary = run_pipeline(cfg, stages=("source", "prepare", "train", "export"))
    return cfg, Path(summary["stages"]["export"]["bundle"]), out / "examples"


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):  # noqa: ANN001, ANN201
    cfg, bundle, examples = run
    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate_bundle(cfg, bundle, examples, out, replicates=50, ab_days=7, progress=False)
    return out, result


def test_evaluate_writes_metrics_json_with_intervals_slices_lt_and_ab(evaluated) -> None:  # noqa: ANN001
    out, result = evaluated
    written = json.loads((out / "metrics.json").read_text())
    assert written["version"] == result["version"] and written["kind"] == "ranker"
    overall = written["overall"]
    for name in ("auc", "gauc", "logloss", "ne", "calibration"):
        lo, hi = overall[f"{name}_ci"]
        assert lo <= overall[name] <= hi, name
    assert overall["auc"] > 0.5
    assert {"user=returning", "item=warm"} <= set(written["slices"])
    assert any(name.startswith("concept=") for name in written["slices"])
    lt = written["lt"]
    assert lt["head"]["available"] and lt["lt7"]["mean"] >= 1
    assert lt["lt7"]["censored_user_days"] > 0 and lt["lt7"]["user_days"] > 0
    policies = {arm["policy"] for arm in written["ab"]["arms"]}
    assert policies == {"logging", "random", "popularity", "oracle", "bundle"}
    assert len(written["ab"]["offline_vs_lt"]["policies"]) >= 4


def test_spark_scores_and_metrics_equal_the_single_machine_ones(
    spark,
    run,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    cfg, bundle, examples = run
    got = spark_evaluate.run(
        bundle, examples, tmp_path / "out", spark=spark, replicates=20, write_scores=True
    )
    # scored inside Spark (mapInPandas) like one machine scores them
    spark_scores = pd.read_parquet(tmp_path / "out" / "scores")
    local_scores = score_split(load(bundle), examples, progress=False)
    assert len(spark_scores) == len(local_scores)
    assert np.allclose(np.sort(spark_scores["score"]), np.sort(local_scores["score"]), atol=1e-6)
    # the same metrics as one machine computes on the very scores Spark wrote
    local = ranker_metrics(spark_scores, examples, replicates=0)
    for name in ("auc", "gauc", "logloss", "ne", "calibration", "rows", "users"):
        assert _same(got["overall"][name], local["overall"][name]), name
    assert set(got["slices"]) == set(local["slices"])
    for s, m in local["slices"].items():
        for name in ("auc", "gauc", "logloss", "ne", "calibration", "rows"):
            assert _same(got["slices"][s][name], m[name]), (s, name)
    assert got["lt"]["lt7"]["histogram"] == local["lt"]["lt7"]["histogram"]
    for name in ("lt7_mae", "active5_auc"):
        assert _same(got["lt"]["head"][name], local["lt"]["head"][name]), name
    lo, hi = got["overall"]["logloss_ci"]
    assert lo < got["overall"]["logloss"] < hi
    # the AUC interval: the user-clustered variance, as one machine computes it
    users, n = offline.user_codes(spark_scores["user_id"].to_numpy())
    y, p = spark_scores["label"].to_numpy(float), spark_scores["score"].to_numpy(float)
    want = offline.normal_interval(
        local["overall"]["auc"], offline.clustered_auc_variance(users, y, p, n)
    )
    assert np.allclose(got["overall"]["auc_ci"], want, atol=1e-6)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["engine"] == "spark" and (tmp_path / "out" / "report.html").exists()


def _same(a: float, b: float) -> bool:
    """Equal to 1e-6, NaN equal to NaN (a metric undefined on both sides)."""
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6


def load(bundle: Path):  # noqa: ANN201
    from recsys.bundle import load_bundle

    return load_bundle(bundle)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_report_renders_in_headless_chromium_with_every_plot(evaluated, tmp_path: Path) -> None:  # noqa: ANN001
    out, _ = evaluated
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"roc.png", "reliability.png", "slices.png", "lt.png", "ab_lift.png"} <= set(images)
    for name in images:
        assert (out / name).is_file() and Image.open(out / name).size[0] > 100, name
    assert "http://" not in page and "https://" not in page and "<script" not in page
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            (out / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank page
    # the plots are drawn: many rows of the page hold the plots' blue lines or bars
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int64)
    blue = (rgb[..., 2] > 120) & (rgb[..., 0] < 120)
    assert blue.any(axis=1).sum() > 200
