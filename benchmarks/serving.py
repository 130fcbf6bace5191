"""Bounded load test of the gRPC server on loopback (fixed request counts; stops by itself).

    .venv/bin/python benchmarks/serving.py --quick   # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/serving.py           # more requests per scenario

Setup (printed first): a tiny two-tower and ranker trained one epoch on a synthetic examples
directory (tests/recsys/conftest.py's generator), a synthetic item catalogue of
``--items`` rows, a real redis-server on a free port, the server as its own process
(``python -m serving.server``), and ``--clients`` concurrent grpc.aio clients in this process,
each on its own connection. Latency scenarios run one request at a time (p50/p99 without
queueing); the two ``workers`` scenarios run ``--clients`` at once (QPS). Scenarios:

- ``mget_floor_{1,100}``: raw redis.asyncio ``MGET`` of the same keys, same concurrency;
- ``get_{1,100}_cold_redis``: GetEmbeddings, LRU off, every id requested for the first time
  (computed from the bundle, then written back to Redis);
- ``get_{1,100}_warm_redis``: the same ids again: one pipelined Redis round trip per call;
- ``get_{1,100}_no_redis``: no Redis, in-process LRU warm;
- ``score_200``: Score of 200 candidates (features + ranker forward);
- ``score_200_workers_{1,2}``, ``get_1_workers_{1,2}``: QPS of one server process against
  two on one port (SO_REUSEPORT), ``torch_threads: 1`` each, ``--clients`` at once.

Bars (ANCHORS.md / issue 11): get_1_warm_redis p99 <= 2 ms and <= 4x mget_floor_1 p99;
score_200 p99 <= 20 ms; two workers give more Score(200) QPS than one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from host import describe_host  # noqa: E402
from result_file import command_line, output_path, write_result  # noqa: E402


def build_world(work: Path, n_items: int, seed: int) -> dict[str, Path]:
    """Bundles (two-tower, ranker) and item/user catalogues under ``work``."""
    import pandas as pd
    import torch

    from recsys.config import parse_config
    from recsys.training import export, train
    from tests.recsys.conftest import write_examples

    torch.set_num_threads(1)
    examples = work / "examples"
    write_examples(examples, n_rows=4000, seed=seed)
    for kind in ("two_tower", "ranker"):
        cfg = parse_config(
            {
                "name": "serving-bench",
                "source": {"kind": "simulator"},
                "embedding": {"dim": 8},
                "model": {"kind": kind, "mlp": [32], "tower_dim": 16, "cross_layers": 2},
                "train": {"batch_size": 256, "epochs": 1, "progress": False, "num_threads": 1},
            }
        )
        train(cfg, examples, work / f"run-{kind}", resume=False)
        export(cfg, work / f"run-{kind}", work / f"bundles-{kind}")
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"b{n}" for n in range(n_items)],
            "creator": [f"cr{c}" for c in rng.integers(0, 500, n_items)],
            "concepts": [
                [f"c{c}" for c in rng.choice(12, 2, replace=False)] for _ in range(n_items)
            ],
            "d_item_popularity": rng.uniform(0, 5, n_items).astype(np.float32),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{n}" for n in range(100)],
            "country": ["us"] * 100,
            "concepts": [["c1", "c2"]] * 100,
            "history": [[f"b{k}" for k in range(5)]] * 100,
            "d_user_activity": np.full(100, 0.5, np.float32),
        }
    )
    items.to_parquet(work / "items.parquet", index=False)
    users.to_parquet(work / "users.parquet", index=False)
    return {
        "embedder": work / "bundles-two_tower",
        "ranker": work / "bundles-ranker",
        "items": work / "items.parquet",
        "users": work / "users.parquet",
    }


class ServerProcess:
    """``python -m serving.server`` with a YAML config; waits until it answers health."""

    def __init__(self, work: Path, name: str, config: dict[str, Any]) -> None:
        import yaml

        from tests.integration.redis_server import free_port

        self.port = free_port()
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "port": self.port, "reload_interval_s": 0}))
        self.log = work / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.server", "--config", str(path)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.workers = int(config.get("workers", 1))
        self.target = f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text().count("recsys serving on") < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(
    clients: int, requests: list[Callable[[Any], Awaitable[Any]]], make_client: Callable[[], Any]
) -> dict[str, float]:
    """Run ``requests`` (each called with a client) over ``clients`` concurrent workers;
    latency of each request in ms, p50/p99 and QPS over the whole run."""
    pending = list(reversed(requests))
    latencies: list[float] = []
    conns = [make_client() for _ in range(clients)]

    async def worker(conn: Any) -> None:
        while pending:
            call = pending.pop()
            t = time.perf_counter()
            await call(conn)
            latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - start
    for c in conns:
        close = getattr(c, "close", None) or getattr(c, "aclose", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
    lat = np.array(latencies)
    return {
        "requests": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "qps": len(lat) / wall,
    }


def grpc_client_factory(target: str) -> Callable[[], Any]:
    import grpc

    from serving.protos_gen import recsys_pb2_grpc

    def make() -> Any:
        channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = recsys_pb2_grpc.RecsysServiceStub(channel)
        stub.close = channel.close  # type: ignore[attr-defined]
        return stub

    return make


def get_calls(ids: list[list[str]]) -> list[Callable[[Any], Awaitable[Any]]]:
    from serving.protos_gen import recsys_pb2 as pb

    def call(batch: list[str]) -> Callable[[Any], Awaitable[Any]]:
        request = pb.GetEmbeddingsRequest(kind="item", ids=batch)

        async def run(stub: Any) -> Any:
            r = await stub.GetEmbeddings(request, timeout=10)
            assert all(r.found), "benchmark ids must all be known"
            return r

        return run

    return [call(b) for b in ids]


def score_calls(n: int, items: list[str], rng: np.random.Generator) -> list[Any]:
    from serving.protos_gen import recsys_pb2 as pb

    def call(candidates: list[str], user: str) -> Callable[[Any], Awaitable[Any]]:
        request = pb.ScoreRequest(user_id=user, item_ids=candidates)

        async def run(stub: Any) -> Any:
            return await stub.Score(request, timeout=10)

        return run

    return [
        call(list(rng.choice(items, 200, replace=False)), f"u{rng.integers(0, 100)}")
        for _ in range(n)
    ]


def handler_seconds(port: int, method: str) -> tuple[float, float]:
    """``(sum, count)`` of the server's own latency histogram of ``method`` (Prometheus)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for part in ("sum", "count"):
        prefix = f'recsys_request_seconds_{part}{{method="{method}"}} '
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), prefix + "0")
        values[part] = float(line.removeprefix(prefix))
    return values["sum"], values["count"]


def batches(ids: list[str], size: int, count: int, offset: int = 0) -> list[list[str]]:
    return [[ids[(offset + k * size + j) % len(ids)] for j in range(size)] for k in range(count)]


async def mget_floor(url: str, keys: list[list[str]], clients: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    def make() -> Any:
        return aioredis.Redis.from_url(url)

    def call(batch: list[str]) -> Callable[[Any], Awaitable[Any]]:
        async def run(client: Any) -> Any:
            return await client.mget(batch)

        return run

    return await load(clients, [call(b) for b in keys], make)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client tasks")
    parser.add_argument("--items", type=int, default=20_000, help="item catalogue rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = output_path("serving", args.quick, args.out)
    n = 1000 if args.quick else 10_000  # requests per scenario
    n100 = n // 5
    print(f"# benchmarks/serving.py  host: {describe_host()}")
    print(
        f"# {n} requests per 1-id scenario, {n100} per 100-id/200-candidate scenario, "
        f"{args.clients} concurrent clients, {args.items} items, seed {args.seed}"
    )
    from tests.integration.redis_server import free_port, redis_server

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        work = Path(tmp)
        t = time.perf_counter()
        world = build_world(work, args.items, args.seed)
        print(f"# trained and exported two bundles in {time.perf_counter() - t:.1f}s; redis {url}")
        item_ids = [f"b{k}" for k in range(args.items)]
        base = {
            "embedder_bundles": str(world["embedder"]),
            "ranker_bundles": str(world["ranker"]),
            "items": str(world["items"]),
            "users": str(world["users"]),
            "compute_threads": 1,
        }
        rng = np.random.default_rng(args.seed)

        def record(name: str, r: dict[str, float]) -> None:
            results[name] = r
            print(
                f"{name:24s} p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
                f"{r['qps']:8.0f} QPS  ({r['requests']} requests)",
                flush=True,
            )

        redis_cfg = {"url": url, "timeout_s": 0.5}
        metrics_port = free_port()
        cfg = {**base, "lru_entries": 0, "redis": redis_cfg, "metrics_port": metrics_port}
        srv = ServerProcess(work, "redis", cfg)
        srv.wait()
        make = grpc_client_factory(srv.target)
        one_cold = batches(item_ids, 1, n)
        hundred_cold = batches(item_ids, 100, n100, offset=n)
        asyncio.run(load(2, get_calls(batches(item_ids, 1, 50, offset=len(item_ids) - 50)), make))
        record("get_1_cold_redis", asyncio.run(load(1, get_calls(one_cold), make)))
        record("get_100_cold_redis", asyncio.run(load(1, get_calls(hundred_cold), make)))
        time.sleep(1.0)  # background write-backs land
        before = handler_seconds(metrics_port, "GetEmbeddings")
        record("get_1_warm_redis", asyncio.run(load(1, get_calls(one_cold), make)))
        after = handler_seconds(metrics_port, "GetEmbeddings")
        # where a warm call's time goes: inside the servicer (checks, tiers, Redis MGET) vs
        # the rest (gRPC framework and protobuf on both ends, loopback, the asyncio client)
        in_handler_ms = 1000 * (after[0] - before[0]) / max(after[1] - before[1], 1)
        results["get_1_warm_redis"]["handler_mean_ms"] = in_handler_ms
        print(f"# get_1_warm_redis: {in_handler_ms:.3f} ms of a call inside the servicer (mean)")
        record("get_100_warm_redis", asyncio.run(load(1, get_calls(hundred_cold), make)))
        srv.stop()
        from recsys.embedding_keys import embedding_key

        version = sorted(p.name for p in world["embedder"].iterdir() if not p.name.startswith("."))[
            -1
        ]
        keys1 = [[embedding_key("recsys-online", version, "item", i) for i in b] for b in one_cold]
        keys100 = [
            [embedding_key("recsys-online", version, "item", i) for i in b] for b in hundred_cold
        ]
        record("mget_floor_1", asyncio.run(mget_floor(url, keys1, 1)))
        record("mget_floor_100", asyncio.run(mget_floor(url, keys100, 1)))

        srv = ServerProcess(work, "lru", base)
        srv.wait()
        make = grpc_client_factory(srv.target)
        asyncio.run(load(args.clients, get_calls(one_cold + hundred_cold), make))  # fill LRU
        record("get_1_no_redis", asyncio.run(load(1, get_calls(one_cold), make)))
        record("get_100_no_redis", asyncio.run(load(1, get_calls(hundred_cold), make)))
        asyncio.run(load(2, score_calls(10, item_ids, rng), make))
        record("score_200", asyncio.run(load(1, score_calls(n100, item_ids, rng), make)))
        srv.stop()

        # One process against two on one port (SO_REUSEPORT), one torch thread each, the
        # clients in this process: Score(200) is server-bound (the server's model work per
        # call is ~20x the client's), so a second process can use the second core;
        # GetEmbeddings(1) from the LRU is as cheap for the server as for the client, which
        # then holds a core itself (on 2 cores it shows the client's limit, not the server's).
        for workers in (1, 2):
            cfg = {**base, "workers": workers, "torch_threads": 1}
            srv = ServerProcess(work, f"workers{workers}", cfg)
            srv.wait()
            make = grpc_client_factory(srv.target)
            asyncio.run(load(args.clients, get_calls(one_cold + hundred_cold), make))  # LRUs
            asyncio.run(load(args.clients, score_calls(4 * args.clients, item_ids, rng), make))
            scores = score_calls(n100, item_ids, rng)
            record(f"score_200_workers_{workers}", asyncio.run(load(args.clients, scores, make)))
            gets = get_calls(one_cold)
            record(f"get_1_workers_{workers}", asyncio.run(load(args.clients, gets, make)))
            srv.stop()

    bars = {
        "get_1_warm_redis_p99_le_2ms": results["get_1_warm_redis"]["p99_ms"] <= 2.0,
        "get_1_warm_redis_p99_le_4x_mget": results["get_1_warm_redis"]["p99_ms"]
        <= 4 * results["mget_floor_1"]["p99_ms"],
        "score_200_p99_le_20ms": results["score_200"]["p99_ms"] <= 20.0,
        "workers_2_qps_gt_workers_1": results["score_200_workers_2"]["qps"]
        > results["score_200_workers_1"]["qps"],
    }
    ratio = results["get_1_warm_redis"]["p99_ms"] / results["mget_floor_1"]["p99_ms"]
    print(f"# get_1_warm_redis p99 / mget_floor_1 p99 = {ratio:.2f}x")
    for name, ok in bars.items():
        print(f"# bar {name}: {'met' if ok else 'NOT met'}")
    write_result(
        out,
        {
            "command": command_line("serving.py", argv),
            "host": describe_host(),
            "setup": {
                "requests": n,
                "requests_100": n100,
                "clients": args.clients,
                "items": args.items,
                "seed": args.seed,
            },
            "results": results,
            "warm_over_mget_p99": ratio,
            "bars": bars,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
