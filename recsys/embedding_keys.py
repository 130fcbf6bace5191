"""How embeddings are laid out in a key-value cache (Redis): keys, values, completion marker.

One definition shared by the writer (``spark_jobs/batch_embed.py``) and the readers (the
serving cache). Nothing here opens a connection: functions take a client object with
redis-py's ``get``/``mget``/``scan_iter`` methods.

Layout of one model version's ``kind`` (``"item"``/``"user"``) embeddings::

    <namespace>:<model_version>:<kind>:<id>       -> little-endian float32 bytes of the vector
    <namespace>:<model_version>:_complete:<kind>  -> JSON CompletionMarker, written LAST

A version is usable only while its marker exists: a writer deletes the marker before it
(re)writes keys and sets it after the last key, with a TTL no longer than the shortest key
TTL, so a reader that sees the marker sees every key it counts. The marker's ``count`` and
``checksum`` (:func:`entry_checksum`, order independent) let a reader verify the keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CompletionMarker",
    "IncompleteVersionError",
    "KeyValueReader",
    "checksum_hex",
    "combine_checksums",
    "decode_vector",
    "embedding_key",
    "encode_vector",
    "entry_checksum",
    "key_pattern",
    "marker_key",
    "read_marker",
    "read_vectors",
    "scan_entries",
]

VALUE_DTYPE = "<f4"
MARKER_FIELD = "_complete"
_CHECKSUM_MOD = 1 << 64


class IncompleteVersionError(LookupError):
    """A model version's cached embeddings are absent, partial or expired (no marker)."""


class KeyValueReader(Protocol):
    """The read side of a redis-py client that this module uses."""

    def get(self, name: str) -> bytes | None: ...

    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Any: ...


def _check_part(name: str, value: str) -> None:
    if not value or ":" in value:
        raise ValueError(f"embedding key {name} {value!r}: must be non-empty and without ':'")


def embedding_key(namespace: str, model_version: str, kind: str, entity_id: str) -> str:
    """``<namespace>:<model_version>:<kind>:<id>`` (the id may hold any character)."""
    for name, value in (("namespace", namespace), ("model_version", model_version)):
        _check_part(name, value)
    _check_kind(kind)
    return f"{namespace}:{model_version}:{kind}:{entity_id}"


def marker_key(namespace: str, model_version: str, kind: str) -> str:
    """``<namespace>:<model_version>:_complete:<kind>``: outside every kind's id space."""
    for name, value in (("namespace", namespace), ("model_version", model_version)):
        _check_part(name, value)
    _check_kind(kind)
    return f"{namespace}:{model_version}:{MARKER_FIELD}:{kind}"


def key_pattern(namespace: str, model_version: str, kind: str) -> str:
    """Glob (Redis ``SCAN MATCH``) of every embedding key of one version's ``kind``."""
    prefix = embedding_key(namespace, model_version, kind, "")
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"


def _check_kind(kind: str) -> None:
    if not kind or ":" in kind or kind.startswith("_"):
        raise ValueError(f"embedding key kind {kind!r}: must be non-empty, no ':', no leading _")


def encode_vector(vector: np.ndarray) -> bytes:
    """``(D,)`` vector -> ``4 * D`` bytes, little-endian float32."""
    return np.asarray(vector, dtype=VALUE_DTYPE).tobytes()


def decode_vector(raw: bytes, key: str = "", dim: int | None = None) -> np.ndarray:
    """Bytes written by :func:`encode_vector` -> ``(D,)`` float32; checks ``dim`` if given."""
    if len(raw) % 4 or (dim is not None and len(raw) != 4 * dim):
        want = f"{4 * dim} bytes" if dim is not None else "a multiple of 4 bytes"
        raise ValueError(f"{key}: value of {len(raw)} bytes, expected {want} (float32)")
    return np.frombuffer(raw, dtype=VALUE_DTYPE).astype(np.float32)


def entry_checksum(keys: Iterable[str], payloads: Iterable[bytes]) -> int:
    """Order-independent checksum of (key, value) pairs: the sum mod 2**64 of each pair's
    8-byte BLAKE2b. Sums of disjoint parts add up (:func:`combine_checksums`)."""
    total = 0
    for key, payload in zip(keys, payloads, strict=True):
        digest = hashlib.blake2b(key.encode() + b"\0" + payload, digest_size=8).digest()
        total += int.from_bytes(digest, "little")
    return total % _CHECKSUM_MOD


def combine_checksums(parts: Iterable[int]) -> int:
    """The checksum of the union of disjoint parts, from each part's checksum."""
    return sum(parts) % _CHECKSUM_MOD


def checksum_hex(value: int) -> str:
    return f"{value % _CHECKSUM_MOD:016x}"


@dataclass(frozen=True)
class CompletionMarker:
    """What a finished warm-up wrote: ``count`` keys of ``dim``-wide vectors, their
    ``checksum`` (16 hex digits of :func:`entry_checksum`) and when (ISO UTC)."""

    count: int
    dim: int
    checksum: str
    written_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, key: str) -> CompletionMarker:
        try:
            d = json.loads(raw)
            return cls(int(d["count"]), int(d["dim"]), str(d["checksum"]), str(d["written_at"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{key}: not a completion marker ({e})") from None


def read_marker(
    client: KeyValueReader, namespace: str, model_version: str, kind: str
) -> CompletionMarker | None:
    """The version's completion marker, or ``None`` while it is incomplete or expired."""
    key = marker_key(namespace, model_version, kind)
    raw = client.get(key)
    return None if raw is None else CompletionMarker.from_json(raw, key)


def read_vectors(
    client: KeyValueReader,
    namespace: str,
    model_version: str,
    kind: str,
    ids: Sequence[str],
) -> list[np.ndarray | None]:
    """The cached ``(D,)`` vectors of ``ids`` (``None`` for an id not cached).

    Raises ``IncompleteVersionError`` when the version has no completion marker: its keys
    may be a partial warm-up and must not be used.
    """
    marker = read_marker(client, namespace, model_version, kind)
    if marker is None:
        raise IncompleteVersionError(
            f"{marker_key(namespace, model_version, kind)}: no completion marker; "
            f"{kind} embeddings of version {model_version!r} are incomplete or expired"
        )
    keys = [embedding_key(namespace, model_version, kind, str(i)) for i in ids]
    values = client.mget(keys) if keys else []
    return [
        None if raw is None else decode_vector(raw, key, marker.dim)
        for key, raw in zip(keys, values, strict=True)
    ]


def scan_entries(
    client: KeyValueReader, namespace: str, model_version: str, kind: str, batch: int = 1000
) -> tuple[int, int]:
    """``(count, checksum)`` of the version's embedding keys present now (a full SCAN: for
    verification and tests, not for the request path)."""
    count, parts = 0, []
    keys: list[str] = []

    def flush() -> None:
        nonlocal count
        values = client.mget(keys)
        present = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
        count += len(present)
        parts.append(entry_checksum([k for k, _ in present], [v for _, v in present]))
        keys.clear()

    for key in client.scan_iter(match=key_pattern(namespace, model_version, kind), count=batch):
        keys.append(key.decode() if isinstance(key, bytes) else key)
        if len(keys) >= batch:
            flush()
    if keys:
        flush()
    return count, combine_checksums(parts)
