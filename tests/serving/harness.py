"""A real ``RecsysServer`` on a free loopback port, run on its own event loop thread so that
tests can call it with the synchronous client (not a test module itself)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from serving.client import RecsysClient
from serving.config import ServerConfig
from serving.server import RecsysServer

T = TypeVar("T")


class ServerThread:
    """``with ServerThread(config) as s: s.client().get_embeddings(...)``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config.model_copy(update={"port": 0})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = RecsysServer(self.config)
        self.clients: list[RecsysClient] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, **kw: Any) -> RecsysClient:
        c = RecsysClient(self.target, **kw)
        self.clients.append(c)
        return c

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.run(self.server.start())
        return self

    def stop(self, grace: float | None = None) -> None:
        if self.server._server is not None:
            self.run(self.server.stop(grace))

    def __exit__(self, *exc: object) -> None:
        for c in self.clients:
            c.close()
        try:
            self.stop(0.5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
