"""The evaluate stage on tiny trained bundles (ranker and two-tower on the examples fixture),
compare mode, the default bundle, and the simulated A/B in a small world."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from recsys.bundle import BundleError, load_bundle, newest_version
from recsys.config import PipelineConfig, SimulatorConfig, parse_config
from recsys.evaluation import ab
from recsys.evaluation.evaluate import (
    compare_bundles,
    console_table,
    evaluate_bundle,
)
from recsys.evaluation.metrics import recall_at_k
from recsys.features.batcher import read_split, table_to_batch
from recsys.features.sparse_rule import sparse_feature_columns
from recsys.sources.world import World
from recsys.training import export, train


def _cfg(kind: str, epochs: int = 2) -> PipelineConfig:
    return parse_config(
        {
            "name": "t",
            "source": {"kind": "simulator"},
            "embedding": {"dim": 8},
            "model": {"kind": kind, "mlp": [32, 16], "cross_layers": 2, "lt_head": True},
            "train": {"batch_size": 128, "epochs": epochs, "progress": False},
        }
    )


@pytest.fixture(scope="module")
def bundles(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny bundles: ``ranker`` (2 epochs), ``ranker_1`` (1 epoch), ``two_tower``."""
    root = tmp_path_factory.mktemp("bundles")
    out: dict[str, Path] = {}
    for name, kind, epochs in (
        ("ranker", "ranker", 2),
        ("ranker_1", "ranker", 1),
        ("two_tower", "two_tower", 2),
    ):
        cfg = _cfg(kind, epochs)
        train(cfg, examples_dir, root / f"run_{name}", resume=False)
        out[name] = export(cfg, root / f"run_{name}", root / "bundles", version=name)
    return out


def test_ranker_evaluation_writes_metrics_json_whose_auc_is_sklearns_on_the_bundle_scores(
    bundles: dict[str, Path], examples_dir: Path, tmp_path: Path
) -> None:
    result = evaluate_bundle(
        _cfg("ranker"),
        bundles["ranker"],
        examples_dir,
        tmp_path,
        replicates=30,
        ab_days=0,
        report=False,
        progress=False,
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["overall"]["auc"] == pytest.approx(result["overall"]["auc"])
    bundle = load_bundle(bundles["ranker"])
    test = read_split(examples_dir, "test")
    batch = table_to_batch(test, _spec(bundle))
    with torch_no_grad():
        p = bundle.model(batch.sparse, batch.dense).logits.sigmoid().double().numpy()
    assert written["overall"]["auc"] == pytest.approx(roc_auc_score(batch.labels, p), abs=1e-9)
    assert written["overall"]["rows"] == test.num_rows == 200
    lo, hi = written["overall"]["auc_ci"]
    assert lo < written["overall"]["auc"] < hi
    # the test split is the last 3 days of 30: every LT7 window runs past the end of the logs
    assert written["lt"]["lt7"]["user_days"] == 0
    assert "complete 7-day window" in written["lt"]["head"]["reason"]
    assert "auc" in console_table(result)


def test_two_tower_evaluation_reports_recall_and_ndcg_consistent_with_recall_at_k(
    bundles: dict[str, Path], examples_dir: Path, tmp_path: Path
) -> None:
    result = evaluate_bundle(
        _cfg("two_tower"),
        bundles["two_tower"],
        examples_dir,
        tmp_path,
        replicates=30,
        report=False,
        progress=False,
    )
    r = result["retrieval"]
    bundle = load_bundle(bundles["two_tower"])
    # the same corpus (every distinct item of the examples) through the reference recall_at_k
    rows = pa.concat_tables(read_split(examples_dir, s) for s in ("train", "valid", "test"))
    ids = np.array(rows.column("item_id").to_pylist())
    _, first = np.unique(ids, return_index=True)
    corpus_rows = rows.take(pa.array(np.sort(first)))
    corpus = bundle.embed("item", corpus_rows)
    corpus_ids = np.array(corpus_rows.column("item_id").to_pylist())
    order = np.argsort(corpus_ids)
    test = read_split(examples_dir, "test")
    pos = test.filter(pa.compute.greater(test.column("label"), 0))
    queries = bundle.embed("user", pos)
    codes = {item: k for k, item in enumerate(corpus_ids[order])}
    true = np.array([codes[i] for i in pos.column("item_id").to_pylist()])
    hits = recall_at_k(queries, true, corpus[order], np.arange(len(order)), 10)
    assert r["pairs"] == pos.num_rows
    assert r["recall@10"] == pytest.approx(hits / pos.num_rows)
    assert r["ndcg@10"] <= r["recall@10"]


def test_comparing_a_bundle_with_itself_finds_no_significant_difference(
    bundles: dict[str, Path], examples_dir: Path, tmp_path: Path
) -> None:
    got = compare_bundles(
        bundles["ranker"],
        bundles["ranker"],
        examples_dir,
        tmp_path,
        replicates=30,
        progress=False,
    )
    assert all(m["verdict"] == "no significant difference" for m in got["metrics"].values())
    assert json.loads((tmp_path / "compare.json").read_text())["verdict"] == got["verdict"]


def test_comparing_two_bundles_gives_deltas_with_paired_intervals(
    bundles: dict[str, Path], examples_dir: Path
) -> None:
    got = compare_bundles(
        bundles["ranker_1"], bundles["ranker"], examples_dir, replicates=50, progress=False
    )
    auc = got["metrics"]["auc"]
    assert auc["delta"] == pytest.approx(auc["candidate"] - auc["baseline"])
    lo, hi = auc["delta_ci"]
    assert lo <= auc["delta"] <= hi
    expected = "better" if lo > 0 else "worse" if hi < 0 else "no significant difference"
    assert auc["verdict"] == expected and got["verdict"].startswith("candidate vs baseline")


def test_the_default_bundle_is_the_newest_version_and_hidden_directories_are_skipped(
    tmp_path: Path,
) -> None:
    for i, name in enumerate(("v1", "v2", ".export-host-1-abc")):
        d = tmp_path / name
        d.mkdir()
        (d / "bundle.json").write_text("{}")
        os.utime(d / "bundle.json", (time.time() + i, time.time() + i))
    assert newest_version(tmp_path).name == "v2"
    with pytest.raises(BundleError, match="no bundle versions"):
        newest_version(tmp_path / "missing")


def test_the_bundle_policy_scores_each_pair_like_the_bundle_on_that_pairs_raw_features(
    bundles: dict[str, Path],
) -> None:
    world = World.build(SimulatorConfig(num_users=30, num_items=20, days=2, with_media=False))
    bundle = load_bundle(bundles["ranker"])
    policy = ab.BundlePolicy(world, bundle)
    users, items = np.array([3, 7]), np.array([0, 5, 11])
    got = policy(users, items, day=1)
    spec = _spec(bundle)
    user = world.users_table().take(pa.array([7])).to_pandas()
    user["history"] = [[]]
    item = world.items_table().take(pa.array([11])).to_pandas()
    context = {"ts": [world.start_ms + 86_400_000 + 12 * 3_600_000]}
    cols = {
        **sparse_feature_columns(user, [f for f in spec.sparse if f in spec.user]),
        **sparse_feature_columns(item, [f for f in spec.sparse if f in spec.item]),
    }
    others = [f for f in spec.sparse if f not in cols]
    cols |= sparse_feature_columns(pa.table(context), others) if others else {}
    cols = {f: cols[f] for f in spec.sparse}
    for d in spec.dense:
        cols[d] = pa.nulls(1, pa.float32())
    batch = table_to_batch(pa.table(cols), spec)
    with torch_no_grad():
        want = bundle.model(batch.sparse, batch.dense).logits.double().numpy()[0]
    assert got.shape == (2, 3) and got[1, 2] == pytest.approx(want, abs=1e-5)


def test_simulated_ab_oracle_beats_random_with_an_interval_that_excludes_zero() -> None:
    world = World.build(
        SimulatorConfig(
            seed=3,
            num_users=3000,
            num_items=300,
            days=7,
            with_media=False,
            num_concepts=16,
            new_items_per_day=5,
        )
    )
    policies = {k: v for k, v in ab.baseline_policies(world, 0).items() if k != "popularity"}
    run = ab.run_arms(world, policies, 7, 3, progress=False)
    arms = {a["policy"]: a for a in ab.arm_table(run, 7, 300, 0, control="random")}
    assert sum(a["users"] for a in arms.values()) == run["cohort"].sum()
    assert arms["oracle"]["lift"] == arms["oracle"]["lt7"] - arms["random"]["lt7"]
    assert arms["oracle"]["lift_ci"][0] > 0
    agree = ab.ordering_agreement(
        {"random": 0.5, "logging": 0.55, "oracle": 0.8}, list(arms.values())
    )
    assert agree["spearman"] > 0 and agree["agree"]


def _spec(bundle):  # noqa: ANN001, ANN202
    from recsys.evaluation.scoring import bundle_spec

    return bundle_spec(bundle)


def torch_no_grad():  # noqa: ANN201
    import torch

    return torch.no_grad()
