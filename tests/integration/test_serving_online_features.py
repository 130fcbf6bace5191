"""Online features end to end: prepare -> materialise -> serve, on a MovieLens subset.

A ranker is trained by the real pipeline (Spark prepare, TorchRec training, export);
``spark_jobs/materialize_features.py`` materialises every user's and item's features as of the
time of one test example; the real server then scores that example from the user id alone
(no features in the request) and must give the offline score of the example row, from the
on-disk release and from Redis (a real redis-server).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import redis

from recsys.bundle import load_bundle, newest_version
from recsys.cli import run_pipeline
from recsys.config import PipelineConfig, parse_config
from recsys.embedding_keys import CompletionMarker, marker_key
from recsys.features.spec import FeatureSpec
from recsys.online_features import current_key
from serving.config import RedisSettings, ServerConfig
from serving.features import rank_probabilities
from spark_jobs import materialize_features
from tests.integration.redis_server import redis_server
from tests.serving.harness import ServerThread

pytestmark = [pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    cfg: PipelineConfig
    example: pa.Table  # one test example row
    ts_ms: int
    bundle_dir: Path


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory: pytest.TempPathFactory) -> Run:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("online")
    src, sub = ROOT / "data" / "ml-latest-small", tmp / "ml-subset"
    sub.mkdir()
    ratings = pd.read_csv(src / "ratings.csv")
    ratings[ratings.userId <= 30].to_csv(sub / "ratings.csv", index=False)
    (sub / "movies.csv").write_bytes((src / "movies.csv").read_bytes())
    cfg = parse_config(
        {
            "name": "online",
            "output_dir": str(tmp / "run"),
            "source": {"kind": "movielens", "path": str(sub)},
            "spark": {"master": "local[2]", "shuffle_partitions": 2},
            "prepare": {"label": {"kind": "rating", "threshold": 4.0}, "split": {"by": "time"}},
            "train": {"epochs": 1, "batch_size": 256, "num_threads": 1, "progress": False},
            "model": {"kind": "ranker", "mlp": [16], "cross_layers": 1},
        }
    )
    run_pipeline(cfg, stages=("source", "prepare", "train", "export"))
    test = ds.dataset(cfg.out / "examples" / "split=test", format="parquet").to_table()
    rows = test.to_pylist()
    # an example of a user with a history, whose item also had events before it
    n = next(
        k
        for k, r in enumerate(rows)
        if len(r["history"]) >= 3 and r["d_item_prior_events"] > 0 and r["d_user_prior_events"] > 0
    )
    ts_ms = int(pd.Timestamp(rows[n]["ts"]).value // 1_000_000)
    bundle = newest_version(cfg.out / "bundles")
    assert bundle is not None
    return Run(cfg, test.slice(n, 1), ts_ms, bundle)


def _offline(run: Run) -> float:
    bundle = load_bundle(run.bundle_dir)
    spec = FeatureSpec.from_dict(bundle.meta["model"]["kwargs"]["spec"])
    return float(rank_probabilities(bundle.model, spec, run.example)[0])


def _as_of(run: Run) -> datetime:
    return datetime.fromtimestamp(run.ts_ms / 1000, tz=UTC)


def _served(config: ServerConfig, run: Run) -> float:
    r = run.example.to_pylist()[0]
    with ServerThread(config) as server:
        got = server.client().score(r["user_id"], [r["item_id"]], ts_ms=run.ts_ms)
    assert got.found.tolist() == [True]
    return float(got.probabilities[0])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_materialised_rows_are_the_example_rows_features(spark, run: Run) -> None:  # noqa: ANN001
    manifest = materialize_features.run(run.cfg, spark=spark, as_of=_as_of(run))
    r = run.example.to_pylist()[0]
    online = run.cfg.out / "online" / "features"
    users = pd.read_parquet(online / "users").set_index("user_id")
    items = pd.read_parquet(online / "items").set_index("item_id")
    assert list(users.loc[r["user_id"], "history"]) == r["history"]
    for name in ("d_user_prior_events", "d_user_prior_positives"):
        assert users.loc[r["user_id"], name] == pytest.approx(r[name], abs=1e-6)
    for name in ("d_item_prior_events", "d_item_prior_positives"):
        assert items.loc[r["item_id"], name] == pytest.approx(r[name], abs=1e-6)
    assert manifest["as_of_ms"] == run.ts_ms
    assert manifest["counts"]["users"] == len(users) >= 30


def test_served_score_from_online_features_equals_the_offline_score(
    spark,  # noqa: ANN001
    run: Run,
) -> None:
    materialize_features.run(run.cfg, spark=spark, as_of=_as_of(run))
    config = ServerConfig.from_pipeline(run.cfg, reload_interval_s=0.0, compute_threads=1)
    served = _served(config, run)
    assert served == pytest.approx(_offline(run), abs=1e-6)
    # without the online features the same call reads the raw users table: no history, no
    # priors, so a different score (the test above would pass by luck otherwise)
    bare = config.model_copy(update={"online_features": None})
    assert abs(_served(bare, run) - served) > 1e-6


def test_online_features_from_redis_give_the_same_score(
    spark,  # noqa: ANN001
    run: Run,
    redis_url: str,
    tmp_path: Path,
) -> None:
    manifest = materialize_features.run(
        run.cfg, out_dir=tmp_path / "online", spark=spark, as_of=_as_of(run), redis_url=redis_url
    )
    # the release went to tmp_path, not <output_dir>/online: the server sees Redis only
    client = redis.Redis.from_url(redis_url)
    version = manifest["version"]
    assert client.get(current_key("recsys-features")).decode() == version
    marker = CompletionMarker.from_json(
        client.get(marker_key("recsys-features", version, "user")), "marker"
    )
    assert marker.count == manifest["counts"]["users"]
    config = ServerConfig.from_pipeline(
        run.cfg,
        reload_interval_s=0.0,
        compute_threads=1,
        online_features=str(tmp_path / "nowhere"),
        redis=RedisSettings(url=redis_url, timeout_s=2.0),  # correctness, not latency
    )
    assert _served(config, run) == pytest.approx(_offline(run), abs=1e-6)


def test_a_bad_redis_url_fails_before_spark_and_publishes_nothing(
    spark,  # noqa: ANN001
    run: Run,
    tmp_path: Path,
) -> None:
    from spark_jobs.redis_version import RedisWarmingError

    url = "redis://:secret@127.0.0.1:1/0"
    with pytest.raises(RedisWarmingError) as failure:
        materialize_features.run(run.cfg, out_dir=tmp_path / "online", spark=spark, redis_url=url)
    assert "secret" not in str(failure.value) and "***" in str(failure.value)
    assert not (tmp_path / "online" / "current").exists()


def test_a_ranker_with_a_sesa_match_feature_serves_its_offline_score(
    spark,  # noqa: ANN001
    run: Run,
    tmp_path: Path,
) -> None:
    """SESA trained on the same examples feeds the ranker's match input (``model.match``);
    the server loads the match feature the ranker bundle recorded and scores the example
    from the user id alone exactly as offline scoring does."""
    from recsys.concepts.checkpoint import export_space_bundle
    from recsys.concepts.train import train_sesa
    from recsys.evaluation.scoring import score_table
    from recsys.models.match import bundle_match_features

    sesa_cfg = run.cfg.model_copy(
        update={
            "model": run.cfg.model.model_copy(update={"kind": "sesa"}),
            "sesa": run.cfg.sesa.model_copy(update={"embed_dim": 8, "hidden": 8, "top_k": 3}),
        }
    )
    sesa = train_sesa(sesa_cfg, run.cfg.out / "examples")
    export_space_bundle(sesa.space, sesa.model, tmp_path / "sesa")
    data = run.cfg.model_dump(mode="json")
    data["output_dir"] = str(tmp_path / "ranker")
    data["model"]["match"] = [{"name": "sesa", "bundle": str(tmp_path / "sesa")}]
    data["model"]["num_match"] = 1
    ranker_cfg = parse_config(data)
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "examples").symlink_to(run.cfg.out / "examples")
    (tmp_path / "ranker" / "raw").symlink_to(run.cfg.out / "raw")
    run_pipeline(ranker_cfg, stages=("train", "export"))
    bundle = load_bundle(newest_version(tmp_path / "ranker" / "bundles"))
    assert bundle.model.num_match == 1
    features = bundle_match_features(bundle.meta)
    spec = FeatureSpec.from_dict(bundle.meta["model"]["kwargs"]["spec"])
    offline = score_table(bundle.model, spec, run.example, features)["score"].iloc[0]
    materialize_features.run(
        ranker_cfg, run.cfg.out / "raw", tmp_path / "online", spark=spark, as_of=_as_of(run)
    )
    config = ServerConfig.from_pipeline(
        ranker_cfg,
        reload_interval_s=0.0,
        compute_threads=1,
        online_features=str(tmp_path / "online"),
    )
    assert _served(config, run) == pytest.approx(float(offline), abs=1e-6)
