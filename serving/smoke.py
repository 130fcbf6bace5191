"""One call of each kind against a freshly started server on a free loopback port, then stop:
the last step of ``recsys pipeline`` (proves the exported bundles serve)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from serving.config import ServerConfig
from serving.protos_gen import recsys_pb2 as pb
from serving.protos_gen import recsys_pb2_grpc as pb_grpc
from serving.server import RecsysServer


async def _smoke(config: ServerConfig) -> dict[str, Any]:
    server = RecsysServer(config.model_copy(update={"port": 0, "host": "127.0.0.1"}))
    port = await server.start()
    results: dict[str, Any] = {"port": port}
    metadata = (("authorization", f"Bearer {config.auth_token}"),) if config.auth_token else ()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecsysServiceStub(channel)
            item, user = _first_ids(server)
            calls = {
                "GetEmbeddings": lambda: stub.GetEmbeddings(
                    pb.GetEmbeddingsRequest(kind="item", ids=[item]), timeout=30, metadata=metadata
                ),
                "EmbedUser": lambda: stub.EmbedUser(
                    pb.EmbedUserRequest(user_id=user), timeout=30, metadata=metadata
                ),
                "Score": lambda: stub.Score(
                    pb.ScoreRequest(user_id=user, item_ids=[item]), timeout=30, metadata=metadata
                ),
                "Retrieve": lambda: stub.Retrieve(
                    pb.RetrieveRequest(user_id=user, k=10), timeout=30, metadata=metadata
                ),
                "Explain": lambda: stub.Explain(
                    pb.ExplainRequest(user_id=user, item_id=item), timeout=30, metadata=metadata
                ),
            }
            for name, call in calls.items():
                start = time.perf_counter()
                try:
                    answer = await call()
                    code = "OK"
                    version = getattr(answer, "model_version", "")
                except grpc.aio.AioRpcError as e:
                    code, version = e.code().name, ""
                results[name] = {
                    "code": code,
                    "model_version": version,
                    "ms": round((time.perf_counter() - start) * 1000, 3),
                }
    finally:
        await server.stop(grace=1.0)
    return results


def _first_ids(server: RecsysServer) -> tuple[str, str]:
    """An item id and a user id the server knows (``"?"`` when it has no catalogue)."""
    catalogues = server.servicer.catalogues if server.servicer is not None else {}
    ids = []
    for kind in ("item", "user"):
        c = catalogues.get(kind)
        ids.append(str(c.frame[c.id_column].iloc[0]) if c is not None and len(c.frame) else "?")
    return ids[0], ids[1]


def smoke_check(config: ServerConfig) -> dict[str, Any]:
    """Start, call each RPC once, stop. Returns ``{rpc: {code, model_version, ms}}``; a call
    whose model is not configured or not built answers its status code (not an exception)."""
    return asyncio.run(_smoke(config))
