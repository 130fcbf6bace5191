"""spark_jobs/batch_embed.py: an IdEmbedding bundle run inside Spark, against in-process embed,
and Redis warming against a real redis-server on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.bundle import IdEmbedding, export_bundle, load_bundle
from spark_jobs import batch_embed as job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_ITEMS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):  # noqa: ANN001, ANN201
    """A real redis-server on a free port (skipped when the binary is missing)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server binary not found on PATH (install redis-server to run this)")
    redis = pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"redis-server on port {port} did not answer PING")
    yield url
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def embedded(spark, tmp_path_factory, redis_url):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("embed")
    model = IdEmbedding(num_buckets=97, dim=8, salt=3)
    bundle = export_bundle(
        root / "bundles",
        model,
        "id_embedding",
        {"num_buckets": 97, "dim": 8, "salt": 3},
        version="v7",
    )
    items = pa.table(
        {
            "item_id": [f"item-{k}" for k in range(N_ITEMS)] + [None],
            "title": ["t"] * (N_ITEMS + 1),
            "image": pa.array([b"\x89PNG"] * (N_ITEMS + 1), pa.binary()),
        }
    )
    pq.write_table(items, root / "items.parquet")
    result = job.run(
        bundle,
        root / "items.parquet",
        "item",
        root / "emb",
        spark=spark,
        redis_url=redis_url,
        namespace="t",
        ttl_s=600,
        batch_rows=64,
    )
    return root, bundle, result, pd.read_parquet(root / "emb").sort_values("id")


def test_spark_embeddings_equal_the_bundle_embedding_in_process(embedded) -> None:  # noqa: ANN001
    _, bundle, result, out = embedded
    assert result["rows"] == N_ITEMS == len(out)  # the null id is skipped
    assert result["dim"] == 8 and result["model_version"] == "v7"
    want = load_bundle(bundle).embed("item", pd.DataFrame({"item_id": out.id.to_numpy()}))
    np.testing.assert_array_equal(np.stack(out.embedding.to_numpy()).astype(np.float32), want)
    assert set(out.model_version) == {"v7"}


def test_redis_holds_versioned_keys_with_little_endian_vectors_and_ttl(embedded, redis_url) -> None:  # noqa: ANN001
    import redis

    _, _, result, out = embedded
    assert result["redis_keys"] == N_ITEMS
    client = redis.Redis.from_url(redis_url)
    row = out.iloc[5]
    raw = client.get(f"t:v7:item:{row.id}")
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), np.asarray(row.embedding, np.float32))
    assert 0 < client.ttl(f"t:v7:item:{row.id}") <= 600
    assert len(client.keys("t:v7:item:*")) == N_ITEMS
    client.close()


def test_a_run_failing_mid_job_leaves_the_previous_output(spark, embedded) -> None:  # noqa: ANN001
    from pyspark.sql import functions as F

    root, bundle, _, out = embedded
    broken = spark.read.parquet(str(root / "items.parquet")).withColumn(
        "item_id",
        F.when(F.col("item_id") == "item-250", F.raise_error(F.lit("boom"))).otherwise(
            F.col("item_id")
        ),
    )
    with pytest.raises(Exception, match="boom"):
        job.run(bundle, broken, "item", root / "emb", spark=spark)
    pd.testing.assert_frame_equal(pd.read_parquet(root / "emb").sort_values("id"), out)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_bundle_is_loaded_once_per_process(embedded) -> None:  # noqa: ANN001
    _, bundle, _, _ = embedded
    first = job.cached_bundle(str(bundle))
    assert job.cached_bundle(str(bundle)) is first
    assert job.LOADS[str(Path(bundle).resolve())] == 1
