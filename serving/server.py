"""The gRPC server: lifecycle, auth, health, reflection, metrics, hot reload, workers.

    server = RecsysServer(ServerConfig(embedder_bundles="runs/x/bundles", port=0))
    port = await server.start()        # loads bundles and catalogues, binds 127.0.0.1
    ...
    await server.stop()                # NOT_SERVING, then drains in-flight calls (grace_s)

``serve(config)`` runs one until SIGTERM/SIGINT (``recsys serve --config ...``); with
``workers > 1`` it starts that many processes on one port (``SO_REUSEPORT``: the kernel
spreads connections over them; each has its own caches and shares Redis).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recsys.online_features import NAMESPACE
from serving.cache import EmbeddingStore, LruCache, RedisTier
from serving.config import ServerConfig, load_server_config
from serving.features import Catalogue
from serving.metrics import ServerMetrics
from serving.online_store import OnlineFeatures
from serving.protos_gen import recsys_pb2, recsys_pb2_grpc
from serving.registry import BundleRegistry
from serving.service import Servicer

log = logging.getLogger("serving.server")  # also when run as __main__

SERVICE_NAME = recsys_pb2.DESCRIPTOR.services_by_name["RecsysService"].full_name
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call but health checks needs metadata ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return handler
        return _denied(handler)


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "authorization: missing or wrong bearer token"

    async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover (makes this an async generator)

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kw)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)


class RecsysServer:
    """One server process's gRPC server, registries, caches and metrics."""

    def __init__(self, config: ServerConfig, *, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.metrics = ServerMetrics()
        self.embedder = (
            BundleRegistry(config.embedder_bundles, "two_tower")
            if config.embedder_bundles
            else None
        )
        self.ranker = (
            BundleRegistry(config.ranker_bundles, "ranker") if config.ranker_bundles else None
        )
        self.explainer = (
            BundleRegistry(config.explainer_bundles, "sesa") if config.explainer_bundles else None
        )
        self.redis = RedisTier(config.redis, self.metrics) if config.redis else None
        self.store = EmbeddingStore(LruCache(config.lru_entries), self.redis, self.metrics)
        features_namespace = config.redis.features_namespace if config.redis else NAMESPACE
        self.online = (
            OnlineFeatures(config.online_features, self.redis, features_namespace)
            if config.online_features
            else None
        )
        self.pool = ThreadPoolExecutor(config.compute_threads, thread_name_prefix="recsys-compute")
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.servicer: Servicer | None = None
        self._server: grpc.aio.Server | None = None
        self._reload_task: asyncio.Task[None] | None = None

    @property
    def registries(self) -> list[BundleRegistry]:
        return [r for r in (self.embedder, self.ranker, self.explainer) if r is not None]

    def refresh(self) -> bool:
        """Swap in newer valid bundle versions (blocking: loads in this thread)."""
        changed = self.online is not None and self.online.refresh()
        for registry in self.registries:
            if registry.refresh():
                self.metrics.bundle_swaps.labels(kind=registry.kind).inc()
                changed = True
        return changed

    def _catalogues(self) -> dict[str, Catalogue]:
        out = {}
        for kind, path in (("item", self.config.items), ("user", self.config.users)):
            if path and Path(path).exists():
                out[kind] = Catalogue.load(path, kind)
            elif path:
                log.warning("%s catalogue %s not found; %s ids will be unknown", kind, path, kind)
        return out

    async def start(self) -> int:
        """Load bundles and catalogues, bind, start serving; returns the bound port."""
        loop = asyncio.get_running_loop()
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        await loop.run_in_executor(self.pool, self.refresh)
        catalogues = await loop.run_in_executor(self.pool, self._catalogues)
        if self.redis is not None:
            self.redis.open()
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ]
        interceptors = [BearerTokenInterceptor(c.auth_token)] if c.auth_token else []
        server = grpc.aio.server(options=options, interceptors=interceptors)
        self.servicer = Servicer(
            c,
            self.embedder,
            self.ranker,
            catalogues,
            self.store,
            self.pool,
            self.metrics,
            online=self.online,
            explainer=self.explainer,
        )
        recsys_pb2_grpc.add_RecsysServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{c.host}:{c.port}"
        if c.tls_cert or c.tls_key:
            if not (c.tls_cert and c.tls_key):
                raise ValueError("tls_cert and tls_key: give both or neither")
            creds = grpc.ssl_server_credentials(
                [(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())]
            )
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {address}")
        await server.start()
        self._server = server
        status = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if c.metrics_port is not None:
            self.metrics.serve_http(c.metrics_port, c.host)
        if c.reload_interval_s > 0:
            self._reload_task = asyncio.create_task(self._reload_loop())
        log.info("recsys serving on %s:%d", c.host, self.port)
        return self.port

    async def _reload_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await loop.run_in_executor(self.pool, self.refresh)
            except Exception:  # a reload problem must never stop serving
                log.exception("bundle reload failed; the current versions keep serving")

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls and drain in-flight ones for ``grace`` s."""
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(self.config.grace_s if grace is None else grace)
            self._server = None
        await self.store.drain()
        if self.redis is not None:
            await self.redis.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _serve_until_signal(config: ServerConfig, reuse_port: bool) -> None:
    server = RecsysServer(config, reuse_port=reuse_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before start(): a SIGTERM right after the "serving on" line must drain, not kill
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    await stopping.wait()
    log.info("signal received: draining in-flight calls (up to %.1fs)", config.grace_s)
    await server.stop()


def _worker(config: ServerConfig) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s", force=True
    )
    asyncio.run(_serve_until_signal(config, reuse_port=True))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(config: ServerConfig | str | Path, overrides: dict[str, object] | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. ``config``: a ``ServerConfig`` or a path to a
    server (or pipeline) config YAML, with ``overrides`` (dotted keys) applied. ``workers >
    1`` starts that many processes sharing one port with ``SO_REUSEPORT`` (port 0 picks one
    free port for all of them)."""
    if not isinstance(config, ServerConfig):
        config = load_server_config(config, overrides)
    if config.workers == 1:
        asyncio.run(_serve_until_signal(config, reuse_port=False))
        return
    if config.port == 0:
        config = config.model_copy(update={"port": _free_port(config.host)})
    if config.metrics_port is not None:
        log.warning("metrics_port is ignored with workers > 1 (one port per process needed)")
        config = config.model_copy(update={"metrics_port": None})
    _supervise(config)


def _supervise(config: ServerConfig) -> None:
    """Run ``config.workers`` worker processes on one port until SIGTERM/SIGINT, which is
    forwarded to them (each drains its calls); a worker that dies otherwise is replaced."""
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start_worker() -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_worker, args=(config,), daemon=False)
        p.start()
        return p

    procs = [start_worker() for _ in range(config.workers)]

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping.wait(0.5):
        for n, p in enumerate(procs):
            if not p.is_alive() and not stopping.is_set():
                log.error("worker %s exited with %s; starting a new one", p.pid, p.exitcode)
                procs[n] = start_worker()
    for p in procs:
        p.join()


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.server --config configs/serving.yaml``."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the recsys gRPC server.")
    parser.add_argument("--config", required=True, help="server or pipeline config YAML")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s", force=True
    )
    serve(args.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
