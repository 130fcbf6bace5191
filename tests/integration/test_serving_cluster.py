"""The Redis tier on a 3-node Redis Cluster started locally (redis-server --cluster-enabled):
ids whose keys fall in many slots are read and written without a cross-slot error."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from redis.cluster import RedisCluster

from recsys.embedding_keys import embedding_key
from serving.config import RedisSettings, ServerConfig
from tests.integration.redis_server import free_port, redis_binary
from tests.serving.fixtures import V1, ServingData, serving_data
from tests.serving.harness import ServerThread

pytestmark = [pytest.mark.redis, pytest.mark.slow]
__all__ = ["serving_data"]  # the shared fixture


@contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[str]:
    """``nodes`` masters (no replicas) on free ports; yields a URL of one of them."""
    binary = redis_binary()
    cli = Path(binary).with_name("redis-cli")
    if not cli.exists():
        pytest.skip("redis-cli not found beside redis-server (needed to create the cluster)")
    ports = [_cluster_port() for _ in range(nodes)]
    procs = []
    try:
        for port in ports:
            d = workdir / str(port)
            d.mkdir()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--appendonly", "no", "--dir", str(d)]
            procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in ports:
            _wait(lambda p=port: redis.Redis(host="127.0.0.1", port=p).ping())
        create = [str(cli), "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports]]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait(
            lambda: (
                redis.Redis(host="127.0.0.1", port=ports[0]).cluster("info").get("cluster_state")
                == "ok"
            )
        )
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, at most 65535) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    pytest.fail("no free port pair (port, port + 10000) for a cluster node")


def _wait(ready: object, tries: int = 200) -> None:
    for _ in range(tries):
        try:
            if ready():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail("redis cluster did not become ready")


def test_embeddings_are_cached_in_and_read_back_from_a_redis_cluster(
    serving_data: ServingData, tmp_path: Path
) -> None:
    ids = pd.read_parquet(serving_data.items).item_id.tolist()[:30]
    with redis_cluster(tmp_path) as url:
        settings = RedisSettings(url=url, cluster=True, timeout_s=1.0)
        config = ServerConfig(
            embedder_bundles=str(serving_data.embedder_root),
            items=str(serving_data.items),
            redis=settings,
            reload_interval_s=0,
        )
        with ServerThread(config) as s:
            want = s.client().get_embeddings("item", ids).vectors
            s.run(s.server.store.drain())
            assert s.server.metrics.value("recsys_redis_errors_total") == 0
        cluster = RedisCluster.from_url(url)
        keys = [embedding_key("recsys-online", V1, "item", i) for i in ids]
        slots = {cluster.keyslot(k) for k in keys}
        assert len({cluster.get_node_from_key(k).port for k in keys}) == 3, slots
        assert all(v is not None for v in cluster.mget_nonatomic(keys))
        with ServerThread(config) as s:
            got = s.client().get_embeddings("item", ids).vectors
            m = s.server.metrics
            assert m.value("recsys_cache_hits_total", tier="redis") == 30
            assert m.value("recsys_redis_errors_total") == 0
        np.testing.assert_array_equal(got, want)
