"""``serve()`` as a real process: several worker processes on one port (SO_REUSEPORT), one
worker SIGKILLed while the others keep answering, SIGTERM ending every worker cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pandas as pd
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.client import RecsysClient
from tests.integration.redis_server import free_port
from tests.serving.fixtures import V1, ServingData, serving_data

__all__ = ["serving_data"]  # the shared fixture
pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs Linux /proc to find the worker processes")
    children = [int(p) for p in path.read_text().split()]
    # multiprocessing's spawn start method also runs a resource tracker child
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _serving(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _call_on_fresh_connections(target: str, n: int, item: str) -> list[str]:
    """``n`` calls, each on a new channel (a new TCP connection the kernel assigns)."""
    versions = []
    for _ in range(n):
        # a channel-local subchannel pool: a new TCP connection each time, not a pooled one
        with RecsysClient(
            target, timeout=10, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as client:
            got = client.get_embeddings("item", [item])
            assert got.found.all()
            versions.append(got.model_version)
    return versions


def _wait_for_workers(log: Path, proc: subprocess.Popen, count: int, timeout: float) -> None:
    """Until ``count`` workers logged that they serve (each logs once when bound)."""
    deadline = time.monotonic() + timeout
    while log.read_text().count("recsys serving on") < count:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, (
            f"{count} workers not serving: {log.read_text()[-2000:]}"
        )
        time.sleep(0.2)


def test_workers_share_one_port_and_one_killed_is_replaced_while_the_other_answers(
    serving_data: ServingData, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "port": port,
        "workers": 2,
        "embedder_bundles": str(serving_data.embedder_root),
        "items": str(serving_data.items),
        "reload_interval_s": 0,
        "compute_threads": 1,
    }
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--config", str(path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    target = f"127.0.0.1:{port}"
    item = pd.read_parquet(serving_data.items).item_id.iloc[0]
    try:
        _wait_for_workers(log, proc, 2, timeout=90)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert set(_call_on_fresh_connections(target, 10, item)) == {V1}
        os.kill(workers[0], signal.SIGKILL)
        assert set(_call_on_fresh_connections(target, 20, item)) == {V1}  # the other answers
        _wait_for_workers(log, proc, 3, timeout=90)  # the supervisor started a replacement
        assert "starting a new one" in log.read_text()
        assert len(_children(proc.pid)) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not _serving(target)
    finally:
        if proc.poll() is None:
            for pid in _children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
