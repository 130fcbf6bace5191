"""A small typed client of ``recsys.v1.RecsysService`` (synchronous, one channel).

with RecsysClient("127.0.0.1:50051", token="...") as client:
    got = client.get_embeddings("item", ["i1", "i2"])    # got.vectors: (2, D) float32
    probs = client.score("u1", ["i1", "i2"]).probabilities
    top = client.retrieve("u1", k=50, exclude_history=True)  # top.item_ids, top.scores
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import numpy as np

from serving.protos_gen import recsys_pb2 as pb
from serving.protos_gen import recsys_pb2_grpc as pb_grpc

# Every RPC is a read, so retrying is safe: a call that meets a connection being reset (a
# worker process restarting, a server draining) is retried on another connection.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "recsys.v1.RecsysService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def decode_matrix(m: pb.FloatMatrix) -> np.ndarray:
    """FloatMatrix -> float32 array of its shape (checks dtype and size)."""
    if m.dtype != "<f4":
        raise ValueError(f"FloatMatrix.dtype {m.dtype!r}: only '<f4' is supported")
    shape = tuple(int(d) for d in m.shape)
    values = np.frombuffer(m.data, dtype="<f4")
    if values.size != int(np.prod(shape)):
        raise ValueError(f"FloatMatrix: {values.size} values for shape {shape}")
    return values.reshape(shape).astype(np.float32)


def encode_matrix(values: np.ndarray) -> pb.FloatMatrix:
    """Float array -> FloatMatrix of little-endian float32 bytes (its shape kept)."""
    values = np.ascontiguousarray(values, dtype="<f4")
    return pb.FloatMatrix(data=values.tobytes(), shape=list(values.shape), dtype="<f4")


@dataclass(frozen=True)
class Embeddings:
    """``vectors``: ``(N, D)`` float32 (zeros where not found); ``found``: ``(N,)`` bool."""

    vectors: np.ndarray
    found: np.ndarray
    model_version: str


@dataclass(frozen=True)
class Scores:
    """``probabilities``: ``(N,)`` float32 (NaN where not found); ``found``: ``(N,)`` bool;
    ``explanations``: one per found candidate when asked (``pb.Explanation``)."""

    probabilities: np.ndarray
    found: np.ndarray
    model_version: str
    explanations: list[pb.Explanation] = field(default_factory=list)


@dataclass(frozen=True)
class Retrieved:
    """``item_ids``: best first; ``scores``: ``(k',)`` float32 exact inner products."""

    item_ids: list[str]
    scores: np.ndarray
    model_version: str


def user_features(
    history: Sequence[str] = (),
    concepts: Sequence[str] = (),
    attributes: Mapping[str, str] | None = None,
) -> pb.UserFeatures:
    return pb.UserFeatures(
        history=list(history), concepts=list(concepts), attributes=dict(attributes or {})
    )


class RecsysClient:
    """Typed calls on one channel. ``token``: bearer token; ``root_cert``: PEM bytes for TLS;
    ``timeout``: default deadline (s) of every call; ``options``: extra channel options."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_cert: bytes | None = None,
        timeout: float = 5.0,
        max_message_bytes: int = 16 << 20,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            # reconnect soon after a reset, so that the retries above meet a live server
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            *options,
        ]
        if root_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.RecsysServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RecsysClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _kw(self, timeout: float | None) -> dict[str, object]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self.metadata}

    def get_embeddings(
        self, kind: str, ids: Sequence[str], *, timeout: float | None = None
    ) -> Embeddings:
        r = self.stub.GetEmbeddings(
            pb.GetEmbeddingsRequest(kind=kind, ids=list(ids)), **self._kw(timeout)
        )
        return Embeddings(decode_matrix(r.embeddings), np.array(r.found, bool), r.model_version)

    def embed_user(
        self,
        user_id: str = "",
        features: pb.UserFeatures | None = None,
        *,
        timeout: float | None = None,
    ) -> Embeddings:
        request = pb.EmbedUserRequest(user_id=user_id)
        if features is not None:
            request.features.CopyFrom(features)
        r = self.stub.EmbedUser(request, **self._kw(timeout))
        return Embeddings(decode_matrix(r.embedding), np.array([r.found]), r.model_version)

    def score(
        self,
        user_id: str,
        item_ids: Sequence[str],
        *,
        features: pb.UserFeatures | None = None,
        ts_ms: int = 0,
        dense: Mapping[str, float] | None = None,
        attributes: Mapping[str, str] | None = None,
        explain: bool = False,
        timeout: float | None = None,
    ) -> Scores:
        """Probabilities of ``item_ids`` for the user (``features``, else the stored ones);
        with ``explain``, also each found candidate's SESA explanation."""
        request = pb.ScoreRequest(
            user_id=user_id,
            item_ids=list(item_ids),
            context=pb.Context(
                ts_ms=ts_ms, dense=dict(dense or {}), attributes=dict(attributes or {})
            ),
            explain=explain,
        )
        if features is not None:
            request.user_features.CopyFrom(features)
        r = self.stub.Score(request, **self._kw(timeout))
        return Scores(
            np.array(r.probabilities, np.float32),
            np.array(r.found, bool),
            r.model_version,
            list(r.explanations),
        )

    def retrieve(
        self,
        user_id: str = "",
        k: int = 10,
        *,
        vector: np.ndarray | None = None,
        features: pb.UserFeatures | None = None,
        exclude: Sequence[str] = (),
        exclude_history: bool = False,
        timeout: float | None = None,
    ) -> Retrieved:
        """Top ``k`` items for ``user_id`` (its stored vector, or one embedded from
        ``features``) or for ``vector`` (``(D,)`` float32), never any of ``exclude`` (nor,
        with ``exclude_history``, the user's history)."""
        request = pb.RetrieveRequest(
            k=k, exclude_ids=list(exclude), exclude_history=exclude_history
        )
        if vector is not None:
            request.user_vector.CopyFrom(encode_matrix(vector))
        else:
            request.user_id = user_id
        if features is not None:
            request.features.CopyFrom(features)
        r = self.stub.Retrieve(request, **self._kw(timeout))
        return Retrieved(list(r.item_ids), np.array(r.scores, np.float32), r.model_version)

    def explain(
        self,
        user_id: str,
        item_id: str,
        *,
        features: pb.UserFeatures | None = None,
        timeout: float | None = None,
    ) -> pb.ExplainResponse:
        """The SESA explanation of ``item_id`` for the user: named concepts with their
        contributions, largest first, and the biases; they sum to ``score``."""
        request = pb.ExplainRequest(user_id=user_id, item_id=item_id)
        if features is not None:
            request.user_features.CopyFrom(features)
        return self.stub.Explain(request, **self._kw(timeout))
