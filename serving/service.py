"""The ``recsys.v1.RecsysService`` servicer: request checks, tiers, compute off the loop.

Every RPC takes the current bundle once, at its start, and answers wholly from it (the
response names its version). Bad requests are ``INVALID_ARGUMENT`` naming the field; model
work runs in a thread pool under the call's deadline.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd

from recsys.bundle import Bundle, BundleError
from recsys.concepts.data import item_text
from recsys.features.sparse_rule import FeatureRuleError
from recsys.features.spec import FeatureSpec
from recsys.models.match import MatchFeature, bundle_match_features, match_matrix
from recsys.retrieval.build import open_bundle_index
from recsys.retrieval.two_tier import TwoTierIndex
from serving.cache import EmbeddingStore
from serving.config import ServerConfig
from serving.features import (
    CONCEPTS,
    HISTORY,
    Catalogue,
    rank_probabilities,
    score_table,
    user_frame,
)
from serving.metrics import ServerMetrics
from serving.online_store import OnlineFeatures, Row, catalogue_rows, rows_frame
from serving.protos_gen import recsys_pb2 as pb
from serving.protos_gen import recsys_pb2_grpc as pb_grpc
from serving.registry import BundleRegistry, NoBundleError

DTYPE = "<f4"
KINDS = ("item", "user")
INDEXES_KEPT = 2  # retrieval indexes kept open: the current version's and the one before
T = TypeVar("T")


class RequestError(Exception):
    """Ends an RPC with ``code`` and ``message`` (the message names the field at fault)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def matrix(values: np.ndarray) -> pb.FloatMatrix:
    """``(N, D)`` float32 -> FloatMatrix of little-endian bytes."""
    values = np.ascontiguousarray(values, dtype=DTYPE)
    return pb.FloatMatrix(data=values.tobytes(), shape=list(values.shape), dtype=DTYPE)


def check_ids(field: str, ids: Sequence[str], cap: int) -> None:
    if len(ids) > cap:
        raise invalid(f"{field}: {len(ids)} ids, at most {cap} per call")
    for n, entity_id in enumerate(ids):
        if not entity_id.strip(" "):
            raise invalid(f"{field}[{n}]: empty id")


def request_vector(field: str, m: pb.FloatMatrix, dim: int) -> np.ndarray:
    """A request's ``(D,)`` or ``(1, D)`` FloatMatrix -> ``(1, dim)`` float32; errors name
    ``field``."""
    if m.dtype not in ("", DTYPE):
        raise invalid(f"{field}.dtype: {m.dtype!r}, expected {DTYPE!r}")
    shape = tuple(int(d) for d in m.shape)
    if shape not in ((dim,), (1, dim)):
        raise invalid(f"{field}: shape {list(shape)}, expected [{dim}] or [1, {dim}]")
    if len(m.data) != dim * 4:
        raise invalid(
            f"{field}.data: {len(m.data)} bytes, expected {dim * 4} for shape {list(shape)}"
        )
    vector = np.frombuffer(m.data, dtype=DTYPE).astype(np.float32)[None, :]
    if not np.isfinite(vector).all():
        raise invalid(f"{field}: not finite")
    return vector


def rpc(name: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Count and time an RPC; turn ``RequestError`` / missing bundles into status codes."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def handler(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> T:
            start, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except RequestError as e:
                code = e.code
                await context.abort(e.code, e.message)
            except NoBundleError as e:
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, str(e))
            except TimeoutError:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                await context.abort(code, f"{name}: deadline exceeded while computing")
            except FeatureRuleError as e:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, f"features: {e}")
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                raise
            finally:
                self.metrics.requests.labels(method=name, code=code.name).inc()
                self.metrics.latency.labels(method=name).observe(time.perf_counter() - start)
            raise AssertionError("unreachable: abort raises")

        return handler

    return wrap


class Servicer(pb_grpc.RecsysServiceServicer):
    """Answers from ``embedder`` (two-tower) and ``ranker`` registries (either may be None)."""

    def __init__(
        self,
        config: ServerConfig,
        embedder: BundleRegistry | None,
        ranker: BundleRegistry | None,
        catalogues: dict[str, Catalogue],
        store: EmbeddingStore,
        pool: ThreadPoolExecutor,
        metrics: ServerMetrics,
        online: OnlineFeatures | None = None,
        explainer: BundleRegistry | None = None,
    ) -> None:
        self.config, self.embedder, self.ranker = config, embedder, ranker
        self.catalogues, self.store, self.pool, self.metrics = catalogues, store, pool, metrics
        self.online, self.explainer = online, explainer
        self._spaces: dict[str, Any] = {}  # sesa bundle version -> its ConceptSpace
        self._match: dict[str, list[MatchFeature]] = {}  # ranker version -> match features
        self._specs: dict[str, FeatureSpec] = {}
        self._indexes: OrderedDict[str, TwoTierIndex] = OrderedDict()
        self._index_lock = asyncio.Lock()

    # -- helpers -------------------------------------------------------------------------

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the compute pool, bounded by the call's remaining deadline."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        return await asyncio.wait_for(future, timeout=remaining)

    def _bundle(self, registry: BundleRegistry | None, what: str) -> Bundle:
        if registry is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{what}: no bundle root configured"
            )
        return registry.current

    def _compute_fn(
        self, context: grpc.aio.ServicerContext, bundle: Bundle, kind: str
    ) -> Callable[[Sequence[str]], Awaitable[list[np.ndarray | None]]]:
        def embed(rows: list[Row | None]) -> list[np.ndarray | None]:
            known = [r for r in rows if r is not None]
            vectors = iter(bundle.embed(kind, rows_frame(known)) if known else [])
            return [None if r is None else next(vectors) for r in rows]

        async def compute(ids: Sequence[str]) -> list[np.ndarray | None]:
            rows, _ = await self._entity_rows(context, kind, ids)
            return await self._run(context, lambda: embed(rows))

        return compute

    async def _entity_rows(
        self, context: grpc.aio.ServicerContext, kind: str, ids: Sequence[str]
    ) -> tuple[list[Row | None], str | None]:
        """One feature row (or None) per id: the online features' (users: latest history,
        concepts, priors; items: priors) merged over the catalogue's, and the online version
        (None when there are no online features). Table lookups run in the compute pool."""
        online = self.online
        from_redis = await online.redis_rows(kind, ids) if online is not None else None
        catalogue = self.catalogues.get(kind)

        def lookup() -> tuple[list[Row | None], str | None]:
            if from_redis is not None:
                fresh, version = from_redis
            elif online is not None:
                fresh, version = online.disk_rows(kind, ids)
            else:
                fresh, version = [None] * len(ids), None
            static = catalogue_rows(catalogue, ids) if catalogue else [None] * len(ids)
            rows = [
                None if o is None and c is None else {**(c or {}), **(o or {})}
                for o, c in zip(fresh, static, strict=True)
            ]
            return rows, version

        return await self._run(context, lookup)

    async def _cache_version(self, bundle: Bundle, kind: str) -> str:
        """The version cached embeddings of ``kind`` are keyed by: a user's vector depends
        on the bundle and on the online features it was computed from."""
        if kind != "user" or self.online is None:
            return bundle.version
        features = await self.online.version()
        return bundle.version if features is None else f"{bundle.version}+{features}"

    def _spec(self, bundle: Bundle) -> FeatureSpec:
        """The feature spec ``bundle``'s model was built with (from its bundle.json)."""
        spec = self._specs.get(bundle.version)
        if spec is None:
            spec = FeatureSpec.from_dict(bundle.meta["model"]["kwargs"]["spec"])
            self._specs = {bundle.version: spec}  # only the current version's is kept
        return spec

    def _request_user(self, user_id: str, features: pb.UserFeatures) -> pd.DataFrame:
        for n, item in enumerate(features.history):
            if not item.strip(" "):
                raise invalid(f"features.history[{n}]: empty item id")
        return user_frame(
            user_id, list(features.history), list(features.concepts), dict(features.attributes)
        )

    # -- RPCs ----------------------------------------------------------------------------

    @rpc("GetEmbeddings")
    async def GetEmbeddings(  # noqa: N802 (gRPC method name)
        self, request: pb.GetEmbeddingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEmbeddingsResponse:
        if request.kind not in KINDS:
            raise invalid(f"kind: {request.kind!r}, expected one of {list(KINDS)}")
        ids = list(request.ids)
        check_ids("ids", ids, self.config.max_ids_per_call)
        bundle = self._bundle(self.embedder, "GetEmbeddings")
        compute = self._compute_fn(context, bundle, request.kind)
        version = await self._cache_version(bundle, request.kind)
        vectors = await self.store.get(version, request.kind, ids, compute)
        out = np.zeros((len(ids), bundle.model.tower_dim), dtype=np.float32)
        for n, v in enumerate(vectors):
            if v is not None:
                out[n] = v
        return pb.GetEmbeddingsResponse(
            embeddings=matrix(out),
            found=[v is not None for v in vectors],
            model_version=bundle.version,
        )

    @rpc("EmbedUser")
    async def EmbedUser(  # noqa: N802
        self, request: pb.EmbedUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedUserResponse:
        bundle = self._bundle(self.embedder, "EmbedUser")
        dim = bundle.model.tower_dim
        if request.HasField("features"):
            frame = self._request_user(request.user_id, request.features)
            vector = (await self._run(context, lambda: bundle.embed("user", frame)))[0]
        else:
            if not request.user_id.strip(" "):
                raise invalid("user_id: required when features are absent")
            compute = self._compute_fn(context, bundle, "user")
            version = await self._cache_version(bundle, "user")
            vector = (await self.store.get(version, "user", [request.user_id], compute))[0]
        found = vector is not None
        embedding = np.zeros((1, dim), np.float32) if vector is None else vector[None, :]
        return pb.EmbedUserResponse(
            embedding=matrix(embedding), model_version=bundle.version, found=found
        )

    @rpc("Score")
    async def Score(  # noqa: N802
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        item_ids = list(request.item_ids)
        if not item_ids:
            raise invalid("item_ids: at least one candidate is needed")
        check_ids("item_ids", item_ids, self.config.max_candidates)
        bundle = self._bundle(self.ranker, "Score")
        match_features = await self._match_features(context, bundle)
        user = await self._score_user(context, request)
        if "item" not in self.catalogues:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "Score: no item catalogue")
        ctx = request.context
        ts_ms = ctx.ts_ms or int(time.time() * 1000)
        spec = self._spec(bundle)
        item_rows, _ = await self._entity_rows(context, "item", item_ids)
        # an item the catalogue does not know is unknown, whatever online priors it has
        known = self.catalogues["item"]
        found = [r is not None and i in known for i, r in zip(item_ids, item_rows, strict=True)]

        def score() -> tuple[np.ndarray, list[bool]]:
            probs = np.full(len(item_ids), math.nan, dtype=np.float32)
            if any(found):
                items = rows_frame([r for r, f in zip(item_rows, found, strict=True) if f])
                table = score_table(spec, user, items, ts_ms, dict(ctx.attributes), dict(ctx.dense))
                match = None
                if match_features:
                    n = len(items)
                    history = [str(i) for i in user[HISTORY].iloc[0]]
                    match = match_matrix(
                        match_features,
                        np.full(n, request.user_id, dtype=object),
                        [history] * n,
                        items["item_id"].astype(str).to_numpy(dtype=object),
                    )
                probs[np.flatnonzero(found)] = rank_probabilities(bundle.model, spec, table, match)
            return probs, found

        probs, found = await self._run(context, score)
        explanations = []
        if request.explain:
            explained = [i for i, f in zip(item_ids, found, strict=True) if f]
            explanations = await self._explanations(context, request, explained)
        return pb.ScoreResponse(
            probabilities=probs.tolist(),
            found=found,
            model_version=bundle.version,
            explanations=explanations,
        )

    async def _explanations(
        self, context: grpc.aio.ServicerContext, request: pb.ScoreRequest, item_ids: list[str]
    ) -> list[pb.Explanation]:
        """Score's ``explain``: the SESA explanation of each found candidate."""
        bundle = self._bundle(self.explainer, "Score.explain")
        space = await self._space(context, bundle)
        features = request.user_features if request.HasField("user_features") else None
        history, declared = await self._explained_user(context, request.user_id, features)
        texts = await self._item_texts(context, space, item_ids)

        def explain() -> list[pb.Explanation]:
            return [
                pb.Explanation(
                    item_id=item_id,
                    contributions=contributions(
                        space.explain(
                            request.user_id, item_id, history=history, declared=declared,
                            item_text=text,
                        )
                    ),
                )
                for item_id, text in zip(item_ids, texts, strict=True)
            ]  # fmt: skip

        return await self._run(context, explain)

    async def _match_features(
        self, context: grpc.aio.ServicerContext, bundle: Bundle
    ) -> list[MatchFeature]:
        """The match features a ranker bundle was trained with, loaded once per version."""
        if not getattr(bundle.model, "num_match", 0):
            return []
        features = self._match.get(bundle.version)
        if features is None:
            try:
                features = await self._run(context, lambda: bundle_match_features(bundle.meta))
            except (BundleError, OSError, ValueError) as e:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"ranker {bundle.version}: its match features cannot be loaded: {e}",
                ) from None
            self._match = {bundle.version: features}
        return features

    async def _score_user(
        self, context: grpc.aio.ServicerContext, request: pb.ScoreRequest
    ) -> pd.DataFrame:
        """The request's user features, else the user's online/catalogue row."""
        if request.HasField("user_features"):
            return self._request_user(request.user_id, request.user_features)
        if not request.user_id.strip(" "):
            raise invalid("user_id: required when user_features are absent")
        row = (await self._entity_rows(context, "user", [request.user_id]))[0][0]
        if row is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"user_id {request.user_id!r}: unknown and no user_features given",
            )
        return rows_frame([row])

    @rpc("Retrieve")
    async def Retrieve(  # noqa: N802
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetrieveResponse:
        if request.k < 1:
            raise invalid("k: must be at least 1")
        if request.k > self.config.max_k:
            raise invalid(f"k: {request.k}, at most {self.config.max_k}")
        exclude = list(request.exclude_ids)
        check_ids("exclude_ids", exclude, self.config.max_ids_per_call)
        if request.WhichOneof("user") is None and not request.HasField("features"):
            raise invalid("user: give user_id, user_vector or features")
        bundle = self._bundle(self.embedder, "Retrieve")
        index = await self._index(context, bundle)
        query = await self._retrieve_query(context, request, bundle, index.dim)
        if request.exclude_history:
            exclude += await self._history(context, request)
        shortlist = self.config.retrieval_shortlist
        hits = (
            await self._run(context, lambda: index.search(query, request.k, shortlist, [exclude]))
        )[0]
        return pb.RetrieveResponse(
            item_ids=[str(i) for i in hits.ids.tolist()],
            scores=hits.scores.tolist(),
            model_version=bundle.version,
        )

    async def _index(self, context: grpc.aio.ServicerContext, bundle: Bundle) -> TwoTierIndex:
        """``bundle``'s retrieval index, opened once per version (the newest two are kept, so
        calls on both sides of a hot swap never reopen one)."""
        index = self._indexes.get(bundle.version)
        if index is not None:
            return index
        if bundle.index_dir is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Retrieve: bundle {bundle.version} has no retrieval index "
                "(run `recsys index --config <pipeline config>`)",
            )
        async with self._index_lock:  # concurrent first calls open it once
            index = self._indexes.get(bundle.version)
            if index is None:
                try:
                    index = await self._run(context, lambda: open_bundle_index(bundle))
                except BundleError as e:  # e.g. an index file removed after the bundle loaded
                    raise RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"Retrieve: {e}"
                    ) from None
                self._indexes[bundle.version] = index
                while len(self._indexes) > INDEXES_KEPT:
                    self._indexes.popitem(last=False)
        return index

    async def _retrieve_query(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.RetrieveRequest,
        bundle: Bundle,
        dim: int,
    ) -> np.ndarray:
        """The ``(1, dim)`` query: the request's vector, else the user embedded from the
        request's features, else the user's stored vector (cache tiers, as ``EmbedUser``)."""
        if request.WhichOneof("user") == "user_vector":
            return request_vector("user_vector", request.user_vector, dim)
        if request.HasField("features"):
            frame = self._request_user(request.user_id, request.features)
            return (await self._run(context, lambda: bundle.embed("user", frame)))[:1]
        if not request.user_id.strip(" "):
            raise invalid("user_id: empty id")
        compute = self._compute_fn(context, bundle, "user")
        version = await self._cache_version(bundle, "user")
        vector = (await self.store.get(version, "user", [request.user_id], compute))[0]
        if vector is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"user_id {request.user_id!r}: unknown and no features or user_vector given",
            )
        return np.asarray(vector, dtype=np.float32)[None, :]

    async def _history(
        self, context: grpc.aio.ServicerContext, request: pb.RetrieveRequest
    ) -> list[str]:
        """The user's history: from the request's features, else the online features or
        the user catalogue."""
        if request.HasField("features"):
            return list(request.features.history)
        if request.WhichOneof("user") != "user_id":
            return []
        row = (await self._entity_rows(context, "user", [request.user_id]))[0][0]
        history = [] if row is None else row.get(HISTORY)
        return [str(i) for i in history] if history is not None else []

    @rpc("Explain")
    async def Explain(  # noqa: N802
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        if not request.item_id.strip(" "):
            raise invalid("item_id: required")
        if not request.HasField("user_features") and not request.user_id.strip(" "):
            raise invalid("user_id: required when user_features are absent")
        bundle = self._bundle(self.explainer, "Explain")
        space = await self._space(context, bundle)
        features = request.user_features if request.HasField("user_features") else None
        history, declared = await self._explained_user(context, request.user_id, features)
        texts = await self._item_texts(context, space, [request.item_id])
        explanation = await self._run(
            context,
            lambda: space.explain(
                request.user_id, request.item_id, history=history, declared=declared,
                item_text=texts[0],
            ),
        )  # fmt: skip
        return pb.ExplainResponse(
            contributions=contributions(explanation),
            model_version=bundle.version,
            score=explanation.score,
            biases=explanation.biases,
        )

    async def _space(self, context: grpc.aio.ServicerContext, bundle: Bundle) -> Any:
        """``bundle``'s concept space (``recsys.concepts``), built once per version."""
        space = self._spaces.get(bundle.version)
        if space is None:
            from recsys.concepts.checkpoint import load_space

            space = await self._run(context, lambda: load_space(bundle))
            self._spaces = {bundle.version: space}  # only the current version's is kept
        return space

    async def _explained_user(
        self, context: grpc.aio.ServicerContext, user_id: str, features: pb.UserFeatures | None
    ) -> tuple[list[str], list[str] | None]:
        """``(history, declared concepts)``: the request's, else the user's online/catalogue
        row; ``declared`` None lets the space use the users table it was trained with."""
        if features is not None:
            self._request_user(user_id, features)  # the same field checks as the other calls
            return list(features.history), list(features.concepts)
        row = (await self._entity_rows(context, "user", [user_id]))[0][0]
        if row is None:
            return [], None
        history = row.get(HISTORY)
        declared = row.get(CONCEPTS)
        return (
            [str(i) for i in history] if history is not None else [],
            [str(c) for c in declared] if declared is not None else None,
        )

    async def _item_texts(
        self, context: grpc.aio.ServicerContext, space: Any, item_ids: Sequence[str]
    ) -> list[str | None]:
        """The catalogue text of items the space has never seen (encoded on the fly), None
        for the others; an id unknown to both is ``NOT_FOUND``."""
        rows, _ = await self._entity_rows(context, "item", item_ids)
        texts: list[str | None] = []
        for item_id, row in zip(item_ids, rows, strict=True):
            if space.knows_item(item_id):
                texts.append(None)
            elif row is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"item_id {item_id!r}: unknown")
            else:
                texts.append(item_text(row.get("title"), row.get("text")))  # a cold item
        return texts


def contributions(explanation: Any) -> list[pb.ConceptContribution]:
    """A ``recsys.concepts.space.Explanation``'s concepts as protobuf messages."""
    return [
        pb.ConceptContribution(concept=c.name, contribution=c.contribution, display=c.display)
        for c in explanation.concepts
    ]
