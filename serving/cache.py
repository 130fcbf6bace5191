"""Cache tiers for embeddings: in-process LRU -> Redis -> compute from the bundle.

The server talks to :class:`EmbeddingStore`; it never calls redis-py itself. Keys are
versioned (the bundle version is part of every key), so a swap to a new bundle version can
never return a vector of the old one.

Redis layout is ``recsys.embedding_keys``'s. Two namespaces and the completion marker are
read with one ``MGET`` (one round trip): the batch-warmed one (``spark_jobs/batch_embed.py``), used only while its completion
marker exists, and the server's own write-back namespace, where each key is one whole
``SET`` of a vector computed from exactly that version (no marker needed).

Redis is an accelerator, never a dependency: any Redis error or timeout is counted, Redis is
skipped for a backoff period (doubling up to a maximum, reset by the next success), and the
request is answered from compute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import numpy as np

from recsys.embedding_keys import (
    CompletionMarker,
    decode_vector,
    embedding_key,
    encode_vector,
    marker_key,
)
from recsys.online_features import current_key, decode_row
from serving.config import RedisSettings
from serving.metrics import ServerMetrics

log = logging.getLogger(__name__)
POINTER_TTL_S = 1.0  # how long a read of the online features' ``_current`` pointer is reused


class LruCache:
    """A bounded least-recently-used map. Used from the event loop thread only."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[Hashable]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for key in keys:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            out.append(value)
        return out

    def set_many(self, items: Sequence[tuple[Hashable, np.ndarray]]) -> None:
        if self.max_entries == 0:
            return
        for key, value in items:
            self._data[key] = value
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class RedisTier:
    """Versioned embedding reads and write-backs on Redis (or Redis Cluster), with backoff.

    Opened with :meth:`open` and closed with :meth:`close` (no connection at construction).
    """

    def __init__(self, settings: RedisSettings, metrics: ServerMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self._client: Any = None
        self._down_until = 0.0
        self._backoff = settings.backoff_initial_s
        self._rng = random.Random()
        self._pointers: dict[str, tuple[str | None, float]] = {}

    def open(self) -> None:
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        s = self.settings
        kw: dict[str, Any] = {
            "socket_timeout": s.timeout_s,
            "socket_connect_timeout": s.timeout_s,
            "retry": Retry(NoBackoff(), 0),  # retrying is ours (backoff), not per command
        }
        self._client = (RedisCluster if s.cluster else Redis).from_url(s.url, **kw)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def available(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def _failed(self, what: str, error: BaseException) -> None:
        self.metrics.redis_errors.inc()
        self._down_until = time.monotonic() + self._backoff
        log.warning(
            "redis %s failed (%s: %s); skipping redis for %.2fs",
            what,
            type(error).__name__,
            error,
            self._backoff,
        )
        self._backoff = min(self._backoff * 2, self.settings.backoff_max_s)

    def _succeeded(self) -> None:
        self._backoff = self.settings.backoff_initial_s

    async def read(self, version: str, kind: str, ids: Sequence[str]) -> list[np.ndarray | None]:
        """Vectors of ``ids`` (None where absent); all None while Redis is unavailable."""
        if not ids or not self.available:
            return [None] * len(ids)
        s = self.settings
        warm = [embedding_key(s.namespace, version, kind, i) for i in ids]
        online = [embedding_key(s.online_namespace, version, kind, i) for i in ids]
        marker = marker_key(s.namespace, version, kind)
        try:
            raw_marker, warm_values, online_values = await asyncio.wait_for(
                self._read_raw(marker, warm, online), timeout=s.timeout_s * 2
            )
            dim = None
            if raw_marker is not None:
                dim = CompletionMarker.from_json(raw_marker, marker).dim
            else:
                warm_values = [None] * len(ids)  # incomplete warm-up: not to be used
            out = []
            for i, (w, o) in enumerate(zip(warm_values, online_values, strict=True)):
                raw, key = (w, warm[i]) if w is not None else (o, online[i])
                out.append(None if raw is None else decode_vector(raw, key, dim))
        except Exception as e:  # TimeoutError included  # any Redis failure -> compute
            self._failed("read", e)
            return [None] * len(ids)
        self._succeeded()
        return out

    async def _read_raw(
        self, marker: str, warm: list[str], online: list[str]
    ) -> tuple[bytes | None, list[bytes | None], list[bytes | None]]:
        values = await self._mget([marker, *warm, *online])  # one round trip
        n = len(warm)
        return values[0], values[1 : 1 + n], values[1 + n :]

    async def read_rows(
        self, namespace: str, kind: str, ids: Sequence[str]
    ) -> tuple[str, list[dict[str, Any] | None]] | None:
        """Online feature rows of ``ids`` (``recsys.online_features``' layout) and their
        version; ``None`` while Redis is unavailable, holds no pointer or the pointed version
        is incomplete (the caller then reads the on-disk release)."""
        if not ids or not self.available:
            return None
        try:
            version = await self._feature_version(namespace)
            if version is None:
                return None
            keys = [embedding_key(namespace, version, kind, i) for i in ids]
            marker = marker_key(namespace, version, kind)
            values = await asyncio.wait_for(
                self._mget([marker, *keys]), timeout=self.settings.timeout_s * 2
            )
            if values[0] is None:
                return None
            pairs = zip(keys, values[1:], strict=True)
            rows = [None if v is None else decode_row(v, k) for k, v in pairs]
        except Exception as e:  # TimeoutError included  # any Redis failure -> disk
            self._failed("feature read", e)
            return None
        self._succeeded()
        return version, rows

    async def feature_version(self, namespace: str) -> str | None:
        """The materialised online-feature version in Redis; None when unavailable/unset."""
        if not self.available:
            return None
        try:
            version = await self._feature_version(namespace)
        except Exception as e:  # TimeoutError included
            self._failed("feature pointer read", e)
            return None
        self._succeeded()
        return version

    async def _feature_version(self, namespace: str) -> str | None:
        """The materialised version ``<namespace>:_current`` names, re-read once a second."""
        now = time.monotonic()
        cached = self._pointers.get(namespace)
        if cached is not None and now - cached[1] < POINTER_TTL_S:
            return cached[0]
        raw = await asyncio.wait_for(
            self._client.get(current_key(namespace)), timeout=self.settings.timeout_s
        )
        version = None if raw is None else raw.decode()
        self._pointers[namespace] = (version, now)
        return version

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        if self.settings.cluster:  # keys live in many slots: redis-py splits them by slot
            return await self._client.mget_nonatomic(keys)
        return await self._client.mget(keys)

    async def write(
        self, version: str, kind: str, ids: Sequence[str], vectors: Sequence[np.ndarray]
    ) -> None:
        """Write computed vectors to the online namespace, each with a jittered TTL."""
        if not ids or not self.available:
            return
        s = self.settings
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for entity_id, vector in zip(ids, vectors, strict=True):
                    ttl = int(s.ttl_s * (1.0 + s.ttl_jitter * self._rng.random()))
                    key = embedding_key(s.online_namespace, version, kind, entity_id)
                    pipe.set(key, encode_vector(vector), ex=ttl)
                await asyncio.wait_for(pipe.execute(), timeout=s.timeout_s * 4)
        except Exception as e:  # TimeoutError included
            self._failed("write", e)
            return
        self._succeeded()


_RETRY = object()  # handed to single-flight waiters when the computation they waited on failed

# compute(ids) -> one (D,) vector or None (unknown id) per id; runs in a worker thread
ComputeFn = Callable[[Sequence[str]], Awaitable[list[np.ndarray | None]]]


class EmbeddingStore:
    """Embeddings of one model version's entities through the tiers.

    ``get(version, kind, ids, compute)`` returns one vector or None per id. Concurrent misses
    of one key share one computation (single-flight); computed vectors fill the LRU and are
    written back to Redis in the background.
    """

    def __init__(self, lru: LruCache, redis: RedisTier | None, metrics: ServerMetrics) -> None:
        self.lru, self.redis, self.metrics = lru, redis, metrics
        self._inflight: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def get(
        self, version: str, kind: str, ids: Sequence[str], compute: ComputeFn
    ) -> list[np.ndarray | None]:
        unique = list(dict.fromkeys(ids))
        found: dict[str, np.ndarray | None] = {}
        keys = [(version, kind, i) for i in unique]
        for i, v in zip(unique, self.lru.get_many(keys), strict=True):
            if v is not None:
                found[i] = v
        self.metrics.cache_hits.labels(tier="lru").inc(len(found))
        missing = [i for i in unique if i not in found]
        if missing and self.redis is not None:
            got = await self.redis.read(version, kind, missing)
            hits = [(i, v) for i, v in zip(missing, got, strict=True) if v is not None]
            self.lru.set_many([((version, kind, i), v) for i, v in hits])
            found.update(hits)
            self.metrics.cache_hits.labels(tier="redis").inc(len(hits))
            missing = [i for i in missing if i not in found]
        if missing:
            found.update(await self._compute_once(version, kind, missing, compute))
        return [found[i] for i in ids]

    async def _compute_once(
        self, version: str, kind: str, ids: list[str], compute: ComputeFn
    ) -> dict[str, np.ndarray | None]:
        """Compute ``ids`` not already being computed; wait for those that are.

        A computation that fails (its own call's deadline passed, its client went away)
        hands its waiters ``_RETRY``: they compute for themselves under their own deadline
        rather than inherit another call's failure.
        """
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        waiting = {i: inflight[(version, kind, i)] for i in ids if (version, kind, i) in inflight}
        mine = [i for i in ids if i not in waiting]
        futures: dict[str, asyncio.Future[Any]] = {i: loop.create_future() for i in mine}
        for i, f in futures.items():
            inflight[(version, kind, i)] = f
        out: dict[str, np.ndarray | None] = {}
        try:
            if mine:
                vectors = await compute(mine)
                for i, v in zip(mine, vectors, strict=True):
                    futures[i].set_result(v)
                    out[i] = v
                self._remember(version, kind, mine, vectors)
        finally:
            for i, f in futures.items():
                if not f.done():
                    f.set_result(_RETRY)
                inflight.pop((version, kind, i), None)
        self.metrics.cache_hits.labels(tier="compute").inc(len(mine))
        retry = []
        for i, f in waiting.items():
            value = await asyncio.shield(f)
            if value is _RETRY:
                retry.append(i)
            else:
                out[i] = value
        self.metrics.cache_hits.labels(tier="shared").inc(len(waiting) - len(retry))
        if retry:
            out.update(await self._compute_once(version, kind, retry, compute))
        return out

    def _remember(
        self, version: str, kind: str, ids: list[str], vectors: list[np.ndarray | None]
    ) -> None:
        known = [(i, v) for i, v in zip(ids, vectors, strict=True) if v is not None]
        self.lru.set_many([((version, kind, i), v) for i, v in known])
        if known and self.redis is not None and self.redis.available:
            task = asyncio.create_task(
                self.redis.write(version, kind, [i for i, _ in known], [v for _, v in known])
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background write-backs (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
