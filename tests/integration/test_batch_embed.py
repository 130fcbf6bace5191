"""spark_jobs/batch_embed.py with a trained two-tower bundle on the raw tables it was trained
from: simulator -> Spark prepare -> train -> export (``recsys pipeline``), then the raw
``items``/``users`` tables are embedded inside Spark and compared with the model's own item
vectors on the examples rows. Redis warming runs against a real redis-server on a free port
(those tests alone skip when the binary is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch

from recsys.bundle import load_bundle
from recsys.cli import run_pipeline
from recsys.config import parse_config
from recsys.embedding_keys import (
    IncompleteVersionError,
    checksum_hex,
    embedding_key,
    marker_key,
    read_marker,
    read_vectors,
    scan_entries,
)
from recsys.features.batcher import table_to_batch
from recsys.features.sparse_rule import FeatureRuleError, sparse_feature_columns
from spark_jobs import batch_embed as job
from tests.integration.redis_server import redis_server

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    """A two-tower bundle trained one epoch on a small simulated world; returns the run dir,
    the bundle path and the raw items table (as pandas)."""
    out = tmp_path_factory.mktemp("two-tower-run")
    cfg = parse_config(
        {
            "name": "batch-embed",
            "output_dir": str(out),
            "source": {"kind": "simulator"},
            "simulator": {"num_users": 80, "num_items": 60, "days": 3, "with_media": False},
            "prepare": {"label": {"kind": "click"}},
            "spark": {"master": "local[2]", "shuffle_partitions": 2},
            "embedding": {"dim": 8},
            "model": {"kind": "two_tower", "mlp": [16], "tower_dim": 8},
            "train": {"epochs": 1, "batch_size": 256, "num_threads": 1, "progress": False},
        }
    )
    summary = run_pipeline(cfg, stages=("source", "prepare", "train", "export"))
    bundle = Path(summary["stages"]["export"]["bundle"])
    items = pd.read_parquet(out / "raw" / "items.parquet")
    return out, bundle, items


@pytest.fixture(scope="module")
def embedded_items(spark, trained, tmp_path_factory):  # noqa: ANN001, ANN201
    """``batch_embed`` of ``raw/items.parquet`` in batches of 16 rows: (summary, output)."""
    run_dir, bundle, _ = trained
    out = tmp_path_factory.mktemp("item-embeddings") / "emb"
    result = job.run(
        bundle, run_dir / "raw" / "items.parquet", "item", out, spark=spark, batch_rows=16
    )
    return result, pd.read_parquet(out).sort_values("id").reset_index(drop=True)


def _examples(run_dir: Path) -> pd.DataFrame:
    table = ds.dataset(
        run_dir / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    return table.to_pandas()


def _vectors(out: pd.DataFrame) -> dict[str, np.ndarray]:
    return {i: np.asarray(v, np.float32) for i, v in zip(out.id, out.embedding, strict=True)}


def test_distinct_items_of_the_raw_table_get_distinct_vectors(trained, embedded_items) -> None:  # noqa: ANN001
    _, bundle, items = trained
    result, out = embedded_items
    assert result["rows"] == len(items) == len(out)
    assert result["dim"] == 8 and result["model_version"] == load_bundle(bundle).version
    vectors = np.stack(out.embedding.to_numpy())
    assert len(np.unique(vectors, axis=0)) == len(items)


def test_batch_vectors_equal_the_item_vectors_the_model_evaluated(trained, embedded_items) -> None:  # noqa: ANN001
    run_dir, bundle, _ = trained
    _, out = embedded_items
    loaded = load_bundle(bundle)
    spec = loaded.model.spec
    rows = _examples(run_dir)
    rows = rows[rows.split != "train"].reset_index(drop=True)
    batch = table_to_batch(pa.Table.from_pandas(rows, preserve_index=False), spec)
    with torch.inference_mode():
        evaluated = loaded.model(batch.sparse).item.numpy()  # what evaluate() ranks with
    by_id = _vectors(out)
    batch_vectors = np.stack([by_id[i] for i in rows.item_id])
    np.testing.assert_allclose(batch_vectors, evaluated, rtol=1e-5, atol=1e-6)


def test_spark_prepare_and_the_library_rule_build_the_same_features(trained) -> None:  # noqa: ANN001
    run_dir, bundle, items = trained
    spec = load_bundle(bundle).model.spec
    examples = _examples(run_dir).drop_duplicates("item_id").set_index("item_id")
    derived = sparse_feature_columns(items, spec.item)
    users = pd.read_parquet(run_dir / "raw" / "users.parquet")
    user_attrs = [f for f in spec.user if f != "s_history"]  # history comes from events
    derived_users = sparse_feature_columns(users, user_attrs)
    by_user = _examples(run_dir).drop_duplicates("user_id").set_index("user_id")
    checked = 0
    for name, column in derived.items():
        for item_id, values in zip(items.item_id, column.to_pylist(), strict=True):
            if item_id in examples.index:
                assert list(examples.at[item_id, name]) == values, (name, item_id)
                checked += 1
    for name, column in derived_users.items():
        for user_id, values in zip(users.user_id, column.to_pylist(), strict=True):
            if user_id in by_user.index:
                assert list(by_user.at[user_id, name]) == values, (name, user_id)
                checked += 1
    assert {"s_item_concepts", "s_item_creator", "s_user_country"} <= {*derived, *derived_users}
    assert checked > 100


def test_one_row_at_a_time_equals_the_batch(trained, embedded_items) -> None:  # noqa: ANN001
    _, bundle, items = trained
    _, out = embedded_items
    loaded = load_bundle(bundle)
    by_id = _vectors(out)
    in_process = loaded.embed("item", items)
    for k in range(0, len(items), 7):
        one = loaded.embed("item", items.iloc[[k]])
        np.testing.assert_allclose(one[0], in_process[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one[0], by_id[items.item_id.iloc[k]], rtol=1e-5, atol=1e-6)


def test_a_feature_the_table_cannot_provide_is_an_error_naming_it(trained, spark, tmp_path) -> None:  # noqa: ANN001
    run_dir, bundle, items = trained
    # users.parquet has no history: the user tower's s_history cannot be built from it
    with pytest.raises(FeatureRuleError, match=r"users\.parquet.*'s_history' needs column"):
        job.run(bundle, run_dir / "raw" / "users.parquet", "user", tmp_path / "u", spark=spark)
    assert not (tmp_path / "u").exists()
    with pytest.raises(FeatureRuleError, match="'s_item_creator' needs column 'creator'"):
        load_bundle(bundle).embed("item", items.drop(columns=["creator"]))


def test_a_run_failing_mid_job_leaves_the_previous_output(spark, trained, tmp_path) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    run_dir, bundle, _ = trained
    table = str(run_dir / "raw" / "items.parquet")
    first = job.run(bundle, table, "item", tmp_path / "emb", spark=spark)
    before = pd.read_parquet(tmp_path / "emb").sort_values("id").reset_index(drop=True)
    broken = spark.read.parquet(table).withColumn(
        "item_id",
        F.when(F.col("item_id") == "i40", F.raise_error(F.lit("boom"))).otherwise(F.col("item_id")),
    )
    with pytest.raises(Exception, match="boom"):
        job.run(bundle, broken, "item", tmp_path / "emb", spark=spark)
    after = pd.read_parquet(tmp_path / "emb").sort_values("id").reset_index(drop=True)
    assert first["rows"] == len(after)
    pd.testing.assert_frame_equal(after, before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_bundle_is_loaded_once_per_process(trained) -> None:  # noqa: ANN001
    _, bundle, _ = trained
    first = job.cached_bundle(str(bundle))
    assert job.cached_bundle(str(bundle)) is first


@pytest.mark.redis
def test_redis_holds_a_complete_version_readers_can_verify(spark, trained, tmp_path) -> None:  # noqa: ANN001
    import redis

    run_dir, bundle, items = trained
    with redis_server(tmp_path) as url:
        result = job.run(
            bundle,
            run_dir / "raw" / "items.parquet",
            "item",
            tmp_path / "emb",
            spark=spark,
            redis_url=url,
            namespace="t",
            ttl_s=600,
            ttl_jitter=0.1,
            batch_rows=16,
        )
        out = pd.read_parquet(tmp_path / "emb")
        version = result["model_version"]
        client = redis.Redis.from_url(url)
        marker = read_marker(client, "t", version, "item")
        assert marker is not None and result["redis_keys"] == marker.count == len(items)
        count, checksum = scan_entries(client, "t", version, "item")
        assert (count, checksum_hex(checksum)) == (marker.count, marker.checksum)
        ids = [*out.id[:5], "no-such-item"]
        got = read_vectors(client, "t", version, "item", ids)
        assert got[-1] is None
        for vec, want in zip(got[:5], out.embedding[:5], strict=True):
            np.testing.assert_array_equal(vec, np.asarray(want, np.float32))
        raw = client.get(embedding_key("t", version, "item", out.id[0]))
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), out.embedding[0])
        key_ttl = client.ttl(embedding_key("t", version, "item", out.id[0]))
        marker_ttl = client.ttl(marker_key("t", version, "item"))
        assert 0 < marker_ttl <= 600 <= key_ttl <= 660  # the marker expires first
        client.delete(marker_key("t", version, "item"))
        with pytest.raises(IncompleteVersionError, match="no completion marker"):
            read_vectors(client, "t", version, "item", ids)
        client.close()
    assert json.loads(marker.to_json())["count"] == len(items)
