"""``RedisVersion``: one versioned key set in Redis, written by Spark executors, marked complete last.

Shared by the jobs that fill Redis for the server (``batch_embed.py``: embeddings;
``materialize_features.py``: online feature rows). The layout is ``recsys.embedding_keys``'s::

    <namespace>:<version>:<kind>:<id>       -> payload bytes
    <namespace>:<version>:_complete:<kind>  -> JSON CompletionMarker (count + checksum), LAST

Lifecycle: ``check()`` on the driver before any Spark work (connects, authenticates, deletes
the version's marker and stale keys: a bad URL or password is a one-line error);
``set_batch()`` on the executors (pipelined ``SET … EX ttl``, a failure raises a tagged line the
driver finds again with ``failure_cause``); ``write_marker()`` after the last key, expiring no
later than the first key written; ``cleanup()`` after a failure deletes what was written (what
it cannot delete expires by TTL).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from recsys.embedding_keys import CompletionMarker, key_pattern, marker_key

__all__ = ["RedisVersion", "RedisWarmingError", "failure_cause", "one_line", "redacted"]

# Executors prefix Redis failures with this so the driver can quote them in one line.
WARM_FAILED = "redis warming failed:"
_UNLINK_BATCH = 1000
# Per Python process (driver or executor worker): Redis clients by URL, reused across tasks.
_CLIENTS: dict[str, Any] = {}


class RedisWarmingError(RuntimeError):
    """Redis cannot be filled (unreachable, refused credentials, out of memory); one line."""


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def failure_cause(error: BaseException) -> str | None:
    """The executor's tagged Redis error line inside a Spark exception, if there is one."""
    found = re.search(re.escape(WARM_FAILED) + r" ([^\n]*)", str(error))
    return found.group(1).strip() if found else None


def _client(url: str) -> Any:
    if url not in _CLIENTS:
        import redis  # imported on the executors only when Redis is written

        _CLIENTS[url] = redis.Redis.from_url(url, socket_connect_timeout=10)
    return _CLIENTS[url]


@dataclass(frozen=True)
class RedisVersion:
    """The keys of one ``version`` of one ``kind`` under ``namespace`` at ``url``."""

    url: str
    namespace: str
    version: str
    kind: str
    ttl_s: int | None = None
    ttl_jitter: float = 0.0

    @property
    def where(self) -> str:
        return f"redis {redacted(self.url)}: warming {self.namespace}:{self.version}:{self.kind}"

    def check(self) -> int:
        """Connect, authenticate and mark the version incomplete (delete its marker and any
        keys of an earlier run); returns the stale keys deleted. ``RedisWarmingError`` (one
        line) on any failure."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=30)
        try:
            client.ping()
            client.delete(marker_key(self.namespace, self.version, self.kind))
            return self._delete_keys(client)
        except redis.RedisError as e:
            raise RedisWarmingError(f"redis {redacted(self.url)}: {one_line(e)}") from None
        finally:
            client.close()

    def set_batch(
        self, keys: Sequence[str], payloads: Sequence[bytes], rng: np.random.Generator
    ) -> None:
        """Pipelined ``SET`` of one batch (TTL drawn from ``[ttl, ttl * (1 + jitter)]``); a
        Redis error becomes one tagged line, never quoting the payload."""
        import redis

        pipe = _client(self.url).pipeline(transaction=False)
        for key, payload in zip(keys, payloads, strict=True):
            ex = None
            if self.ttl_s:
                ex = self.ttl_s
                if self.ttl_jitter:
                    ex = int(self.ttl_s * (1.0 + self.ttl_jitter * rng.random()))
            pipe.set(key, payload, ex=ex)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:  # connection lost: no replies at all
            raise RuntimeError(f"{WARM_FAILED} {one_line(e)}") from None
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                raise RuntimeError(f"{WARM_FAILED} {one_line(reply)} (SET {key})")

    def write_marker(self, marker: CompletionMarker, first_write: float) -> None:
        """SET the completion marker, expiring no later than the first key written."""
        ex = None
        if self.ttl_s:
            ex = self.ttl_s - math.ceil(time.time() - first_write)
            if ex < 1:
                raise RedisWarmingError(
                    f"it took longer than the key TTL ({self.ttl_s}s); "
                    "the first keys have expired, so the version cannot be marked complete"
                )
        import redis

        try:
            _client(self.url).set(
                marker_key(self.namespace, self.version, self.kind), marker.to_json(), ex=ex
            )
        except redis.RedisError as e:
            raise RedisWarmingError(f"completion marker not written: {one_line(e)}") from None

    def point(self, key: str) -> None:
        """SET ``key`` to this version (a pointer readers follow; written after the markers)."""
        import redis

        try:
            _client(self.url).set(key, self.version)
        except redis.RedisError as e:
            raise RedisWarmingError(f"{key} not written: {one_line(e)}") from None

    def cleanup(self) -> str:
        """Delete what a failed run wrote; returns a phrase for the error message."""
        import redis

        try:
            client = _client(self.url)
            client.delete(marker_key(self.namespace, self.version, self.kind))
            return f"removed {self._delete_keys(client)} partial keys"
        except redis.RedisError as e:
            expiry = f"they expire within {self.ttl_s}s" if self.ttl_s else "they have no TTL"
            return f"could not remove the partial keys ({one_line(e)}); {expiry}"

    def failure(self, error: BaseException) -> BaseException:
        """After ``error`` during a write: clean up and return the error to raise (a one-line
        ``RedisWarmingError`` when Redis was the cause, else ``error`` with a note)."""
        cleaned = self.cleanup()
        cause = failure_cause(error)
        if cause is None and not isinstance(error, RedisWarmingError):
            error.add_note(f"redis {redacted(self.url)}: no completion marker; {cleaned}")
            return error
        return RedisWarmingError(f"{self.where} failed: {cause or error}; {cleaned}")

    def _delete_keys(self, client: Any) -> int:
        """UNLINK every key of the version's ``kind`` (SCAN in batches); returns how many."""
        deleted, batch = 0, []
        pattern = key_pattern(self.namespace, self.version, self.kind)
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= _UNLINK_BATCH:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
        return deleted
