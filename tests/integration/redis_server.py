"""A real ``redis-server`` on a free port for tests (not a test module itself).

Tests that need it skip only when the ``redis-server`` binary (or redis-py) is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """The redis-server path, or skip the calling test when it is not installed."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server binary not found on PATH (install redis-server to run this)")
    pytest.importorskip("redis")
    return binary


@contextmanager
def redis_server(workdir: Path, *options: str, password: str | None = None) -> Iterator[str]:
    """Start ``redis-server`` with ``options`` (e.g. ``"--maxmemory", "2mb"``) on a free
    port; yields its URL (with the password, if any) and stops it afterwards."""
    import redis

    binary = redis_binary()
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir), *options]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} did not answer PING")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
