"""Redis warming under faults, against a real redis-server on a free port (skipped only when
the binary is missing): a server that runs out of memory midway, a wrong password, nothing
listening. A failed warm-up leaves no completion marker and no partial keys, and readers
refuse the version; a bad URL or password is one line before any Spark work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.bundle import export_bundle
from recsys.config import EmbeddingConfig, ModelConfig
from recsys.embedding_keys import (
    IncompleteVersionError,
    marker_key,
    read_marker,
    read_vectors,
    scan_entries,
)
from recsys.features.spec import FeatureSpec
from recsys.models.two_tower import TwoTower
from tests.integration.redis_server import free_port, redis_binary, redis_server

pytestmark = [pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 4000
VERSION = "v1"


@pytest.fixture(scope="module")
def fault_bundle(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    """An (untrained) two-tower bundle and a raw items table of ``N_ITEMS`` rows."""
    root = tmp_path_factory.mktemp("redis-faults")
    item = ("s_item", "s_item_concepts", "s_item_creator")
    spec = FeatureSpec(
        sparse=("s_user", *item),
        user=("s_user",),
        item=item,
        cardinality={"s_user": 50, "s_item": N_ITEMS, "s_item_concepts": 20, "s_item_creator": 30},
    )
    torch.manual_seed(0)
    cfg = ModelConfig(kind="two_tower", mlp=[16], tower_dim=16)
    model = TwoTower.from_config(cfg, EmbeddingConfig(dim=8), spec).eval()
    bundle = export_bundle(
        root / "bundles", model, "two_tower", model.kwargs(cfg, spec), version=VERSION
    )
    rng = np.random.default_rng(0)
    items = pa.table(
        {
            "item_id": [f"item-{k:05d}" for k in range(N_ITEMS)],
            "concepts": [
                [f"c{c}" for c in rng.choice(20, 2, replace=False)] for _ in range(N_ITEMS)
            ],
            "creator": [f"cr{c}" for c in rng.integers(0, 30, N_ITEMS)],
        }
    )
    pq.write_table(items, root / "items.parquet")
    return bundle, root / "items.parquet"


@pytest.mark.spark
def test_warming_that_runs_out_of_memory_midway_leaves_no_usable_partial_version(
    spark,
    fault_bundle,
    tmp_path,  # noqa: ANN001
) -> None:
    import redis

    from spark_jobs import batch_embed as job

    bundle, items = fault_bundle
    with redis_server(tmp_path, "--maxmemory-policy", "noeviction") as url:
        client = redis.Redis.from_url(url)
        client.set("other:v0:item:x", b"kept")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 200_000)  # room for a few hundred keys, not 4000
        with pytest.raises(job.RedisWarmingError) as failure:
            job.run(
                bundle,
                items,
                "item",
                tmp_path / "emb",
                spark=spark,
                redis_url=url,
                namespace="f",
                ttl_s=600,
                batch_rows=256,
            )
        message = str(failure.value)
        assert "\n" not in message and "OutOfMemoryError" in message, message
        assert "maxmemory" in message and "(SET f:v1:item:item-" in message
        removed = int(re.search(r"removed (\d+) partial keys", message).group(1))
        sets = client.info("commandstats")["cmdstat_set"]
        assert sets["rejected_calls"] > 0  # the limit was hit ...
        assert 100 < removed == sets["calls"] - 1 < N_ITEMS  # ... midway; every key written is gone
        assert read_marker(client, "f", VERSION, "item") is None
        assert client.get(marker_key("f", VERSION, "item")) is None
        assert scan_entries(client, "f", VERSION, "item")[0] == 0
        with pytest.raises(IncompleteVersionError, match="no completion marker"):
            read_vectors(client, "f", VERSION, "item", ["item-00000"])
        assert client.get("other:v0:item:x") == b"kept"  # nothing else was touched
        client.close()
    assert not (tmp_path / "emb").exists()


def _batch_embed(bundle: Path, items: Path, out: Path, url: str) -> subprocess.CompletedProcess:
    """The job as a user runs it, with Java made unavailable: any Spark start would fail."""
    env = {**os.environ, "JAVA_HOME": "/nonexistent-java", "PYTHONWARNINGS": "ignore"}
    args = ["--bundle", str(bundle), "--table", str(items), "--kind", "item", "--out", str(out)]
    return subprocess.run(
        [sys.executable, "spark_jobs/batch_embed.py", *args, "--redis", url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_wrong_password_is_one_line_before_any_spark_work(fault_bundle, tmp_path) -> None:  # noqa: ANN001
    bundle, items = fault_bundle
    with redis_server(tmp_path, password="right-secret") as url:
        done = _batch_embed(bundle, items, tmp_path / "emb", url.replace("right", "wrong"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("batch_embed: redis redis://:***@127.0.0.1:")
    assert "AuthenticationError" in lines[0] and "secret" not in done.stderr
    assert not (tmp_path / "emb").exists()


def test_nothing_listening_is_one_line_before_any_spark_work(fault_bundle, tmp_path) -> None:  # noqa: ANN001
    redis_binary()  # the message comes from redis-py: skip like the other Redis tests
    bundle, items = fault_bundle
    done = _batch_embed(bundle, items, tmp_path / "emb", f"redis://127.0.0.1:{free_port()}/0")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "ConnectionError" in lines[0] and "refused" in lines[0].lower()
