"""A frozen relevance space (SESA, its latent baseline or ESA): scores, explanations, files.

``ConceptSpace`` holds what scoring needs, precomputed from a trained model: every item's
vector ``(I, K)`` (SESA: top-k sparse non-negative concept activations) and bias, every
user's declared part ``(U, K)`` and bias, the history weight ``beta``, the per-dimension
weights ``w (K,)`` and the global bias. For a user ``u`` with history ``h`` and an item ``i``::

    user(u, h) = declared_u + beta * mean_{j in h} item_j        (K,)
    score      = sum_k w_k * user_k * item_k + global + user_bias_u + item_bias_i

(ESA: ``cosine = True``, both vectors unit-normalised, no biases). It implements the ranker's
``MatchFeature`` (``recsys.models.match``), and ``explain`` splits one score into one term per
named concept plus the bias terms, which sum to the score exactly (``math.fsum``).

On disk (the ``sesa`` bundle kind, ``write_space_files`` / ``read_space_files``):
``concepts.json`` (vocabulary), ``space.json`` (scalars, ``w``), ``items.parquet``
(``item_id``, ``concept_ids``, ``weights``, ``bias``: the sparse item vectors,
``content_bias``) and ``users.parquet`` (``user_id``, ``concept_ids``, ``weights``, ``bias``).
The ranker reads ``match_feature()``: the score without its id biases.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys.concepts.vocabulary import ConceptVocabulary

CONCEPTS_FILE, SPACE_FILE = "concepts.json", "space.json"
ITEMS_FILE, USERS_FILE = "items.parquet", "users.parquet"
_CHUNK = 8192  # rows scored at once (bounds the (rows, history, K) gather)


@dataclass(frozen=True)
class ConceptContribution:
    """One named dimension's share of a score: ``contribution = weight * user * item``."""

    concept_id: int
    name: str
    display: str
    contribution: float
    user_value: float
    item_value: float
    weight: float


@dataclass(frozen=True)
class Explanation:
    """A score split into per-concept contributions and bias terms (``global``, ``user``,
    ``item``): ``math.fsum(contributions) + math.fsum(biases) == score`` exactly.

    ``concepts`` lists every concept the item carries or the score uses, the largest
    contribution first; concepts with equal contributions (a user with no declared concepts
    and no history contributes 0 everywhere) follow the item's weight on them."""

    user_id: str
    item_id: str
    score: float
    concepts: tuple[ConceptContribution, ...]
    biases: dict[str, float]

    @property
    def top_concept(self) -> str | None:
        """Normalised name of the first concept (largest contribution), ``None`` if none."""
        return self.concepts[0].name if self.concepts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "score": self.score,
            "biases": dict(self.biases),
            "concepts": [c.__dict__ for c in self.concepts],
        }


@dataclass
class ConceptSpace:
    """A frozen scorer over ``K`` dimensions (see the module docstring for the formula).

    Args:
        name: how configs, manifests and benchmarks call it (``"sesa"``, ``"latent"``, ``"esa"``).
        vocabulary: the concept vocabulary (``C`` concepts).
        explicit: dimensions are the vocabulary's concepts (``K == C``); else latent.
        item_ids, item_vectors, item_bias: ``(I,)``, ``(I, K)`` float32, ``(I,)`` float32.
        user_ids, user_declared, user_bias: ``(U,)``, ``(U, K)`` float32, ``(U,)`` float32.
        beta: weight of the history mean; ``weights``: ``(K,)`` float32; ``global_bias``.
        declared_map: ``(C, K)`` float32 turning declared concepts (weights summing to 1) into
            the declared part of a user (``alpha * I`` for SESA).
        history_length: only the last this many history items count.
        cosine: unit-normalise user and item vectors (ESA).
        concept_scores: optional ``(I, C)`` per-concept item scores (concept prediction).
        encoder: optional ``texts -> (vectors (N, K), bias (N,))`` for items never seen.
        item_content_bias: optional ``(I,)`` float32, the part of ``item_bias`` read from the
            item's text (the rest is the hashed item-id bias); see ``match_feature``.
    """

    name: str
    vocabulary: ConceptVocabulary
    explicit: bool
    item_ids: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray
    user_ids: np.ndarray
    user_declared: np.ndarray
    user_bias: np.ndarray
    beta: float
    weights: np.ndarray
    global_bias: float
    declared_map: np.ndarray
    history_length: int = 20
    cosine: bool = False
    concept_scores: np.ndarray | None = None
    encoder: Any = None
    item_content_bias: np.ndarray | None = None
    _items: dict[str, int] = field(default_factory=dict, repr=False)
    _users: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._items = {str(i): n for n, i in enumerate(self.item_ids)}
        self._users = {str(u): n for n, u in enumerate(self.user_ids)}
        k = self.item_vectors.shape[1]
        if self.user_declared.shape[1:] != (k,) or self.weights.shape != (k,):
            raise ValueError(f"ConceptSpace {self.name}: user/weight widths differ from {k}")

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def dimension_names(self) -> tuple[tuple[str, str], ...]:
        """``(name, display)`` of each dimension (latent ones are ``latent:<d>``)."""
        if self.explicit:
            return tuple(zip(self.vocabulary.names, self.vocabulary.display, strict=True))
        return tuple((f"latent:{d}", f"latent:{d}") for d in range(self.dim))

    # ---- vectors ----------------------------------------------------------------------

    def _item_rows(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        get = self._items.get
        return np.fromiter((get(str(i), -1) for i in item_ids), np.int64, len(item_ids))

    def _user_rows(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        get = self._users.get
        return np.fromiter((get(str(u), -1) for u in user_ids), np.int64, len(user_ids))

    def knows_item(self, item_id: str) -> bool:
        """Whether the space holds ``item_id``'s vector (others are encoded from text)."""
        return str(item_id) in self._items

    def items(
        self, item_ids: Sequence[str] | np.ndarray, texts: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (N, K) float64, bias (N,) float64)`` of items; an unknown item is
        encoded from ``texts[n]`` when given and an encoder is attached, else zeros."""
        rows = self._item_rows(item_ids)
        known = rows >= 0
        vectors = np.zeros((len(rows), self.dim), np.float64)
        bias = np.zeros(len(rows), np.float64)
        vectors[known] = self.item_vectors[rows[known]]
        bias[known] = self.item_bias[rows[known]]
        cold = np.flatnonzero(~known)
        if texts is not None and self.encoder is not None and len(cold):
            v, b = self.encoder([texts[n] or "" for n in cold])
            vectors[cold], bias[cold] = v, b
        return vectors, bias

    def users(
        self,
        user_ids: Sequence[str] | np.ndarray,
        histories: Sequence[Sequence[str]],
        declared: Sequence[Sequence[str] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (B, K) float64, bias (B,) float64)``: declared part (from the users
        table, or from ``declared[b]`` concept names when not ``None``) plus ``beta`` times the
        mean vector of the known items among the last ``history_length`` of ``histories[b]``."""
        rows = self._user_rows(user_ids)
        known = rows >= 0
        vectors = np.zeros((len(rows), self.dim), np.float64)
        bias = np.zeros(len(rows), np.float64)
        vectors[known] = self.user_declared[rows[known]]
        bias[known] = self.user_bias[rows[known]]
        for b, names in enumerate(declared or ()):
            if names is not None:
                vectors[b] = self.declared_vector(names)
        length = self.history_length
        for b, history in enumerate(histories):
            recent = list(history)[-length:] if length else []
            hrows = self._item_rows(recent)
            hrows = hrows[hrows >= 0]
            if len(hrows):
                mean = self.item_vectors[hrows].astype(np.float64).mean(0)
                vectors[b] += self.beta * mean
        return vectors, bias

    def declared_vector(self, names: Sequence[str]) -> np.ndarray:
        """``(K,)`` float64 declared part of a user who declared concept ``names``."""
        ids = self.vocabulary.ids_of(names)
        out = np.zeros(self.dim, np.float64)
        if ids:
            weights = np.zeros(len(self.vocabulary), np.float32)
            weights[ids] = np.float32(1.0 / len(ids))
            out = (weights @ self.declared_map).astype(np.float32).astype(np.float64)
        return out

    # ---- scores -----------------------------------------------------------------------

    def _terms(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """``(B, K)`` per-dimension terms ``w * user * item`` (cosine: of unit vectors)."""
        if self.cosine:
            user = user / np.maximum(np.linalg.norm(user, axis=-1, keepdims=True), 1e-12)
            item = item / np.maximum(np.linalg.norm(item, axis=-1, keepdims=True), 1e-12)
        return self.weights.astype(np.float64) * user * item

    def match_feature(self) -> ConceptSpace:
        """This space as the ranker's match feature: concept terms plus the items' content bias,
        without the user- and item-id biases and the global bias.

        The id biases memorise the training labels; a ranker trained on the same rows then
        leans on them and loses on test (MovieLens, 2 seeds: test AUC 0.8466 -> 0.8412 with
        the full score, -> 0.8495 with this one). The ranker has its own id embeddings.
        """
        content = self.item_content_bias
        if content is None:
            content = np.zeros_like(self.item_bias)
        return dataclasses.replace(
            self,
            item_bias=content.astype(np.float32),
            user_bias=np.zeros_like(self.user_bias),
            global_bias=0.0,
        )

    def score(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
    ) -> torch.Tensor:
        """``MatchFeature.score``: ``(B,)`` float32 scores of (user, history, item) rows."""
        return torch.from_numpy(self.score_numpy(user_ids, histories, item_ids).astype(np.float32))

    def score_numpy(
        self,
        user_ids: np.ndarray,
        histories: Sequence[Sequence[str]],
        item_ids: np.ndarray,
        item_texts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """``(B,)`` float64 scores (see the module docstring), in chunks of rows."""
        out = np.zeros(len(item_ids), np.float64)
        for start in range(0, len(item_ids), _CHUNK):
            end = min(start + _CHUNK, len(item_ids))
            user, user_bias = self.users(user_ids[start:end], histories[start:end])
            texts = None if item_texts is None else item_texts[start:end]
            item, item_bias = self.items(item_ids[start:end], texts)
            out[start:end] = (
                self._terms(user, item).sum(1) + self.global_bias + user_bias + item_bias
            )
        return out

    def explain(
        self,
        user_id: str,
        item_id: str,
        *,
        history: Sequence[str] = (),
        declared: Sequence[str] | None = None,
        item_text: str | None = None,
    ) -> Explanation:
        """Split the score of ``(user_id, item_id)`` into named concepts and bias terms.

        ``history``: the user's earlier positive item ids, oldest first; ``declared``: concept
        names that replace the users table's declared concepts; ``item_text``: the text of an
        item the space has never seen. ``fsum(contributions) + fsum(biases) == score``.
        """
        user, user_bias = self.users(
            [user_id], [list(history)], None if declared is None else [declared]
        )
        item, item_bias = self.items([item_id], None if item_text is None else [item_text])
        terms = self._terms(user, item)[0]
        names = self.dimension_names()
        u = user[0] if not self.cosine else user[0] / max(np.linalg.norm(user[0]), 1e-12)
        i = item[0] if not self.cosine else item[0] / max(np.linalg.norm(item[0]), 1e-12)
        # every concept the item carries or the score uses; largest contribution first, then
        # (for users with nothing to contribute) the item's strongest concepts
        strength = self.weights.astype(np.float64) * np.abs(i)
        used = np.flatnonzero((terms != 0) | (i != 0))
        order = sorted(used, key=lambda k: (-terms[k], -strength[k], k))
        concepts = tuple(
            ConceptContribution(
                int(k), names[k][0], names[k][1], float(terms[k]), float(u[k]), float(i[k]),
                float(self.weights[k]),
            )
            for k in order
        )  # fmt: skip
        biases = {
            "global": float(self.global_bias),
            "user": float(user_bias[0]),
            "item": float(item_bias[0]),
        }
        total = math.fsum([c.contribution for c in concepts] + list(biases.values()))
        return Explanation(str(user_id), str(item_id), total, concepts, biases)

    def item_concept_ranking(self, item_ids: Sequence[str] | np.ndarray, k: int) -> np.ndarray:
        """``(N, k)`` vocabulary ids of each item's ``k`` highest concept scores (-1 if unknown)."""
        scores = self.concept_scores if self.concept_scores is not None else self.item_vectors
        rows = self._item_rows(item_ids)
        out = np.full((len(rows), k), -1, np.int64)
        known = rows >= 0
        if known.any():
            part = scores[rows[known]]
            out[known] = np.argsort(-part, axis=1, kind="stable")[:, :k]
        return out


# ---- files (the sesa bundle kind) ---------------------------------------------------------


def _sparse_rows(matrix: np.ndarray) -> tuple[list[list[int]], list[list[float]]]:
    ids, values = [], []
    for row in matrix:
        nz = np.flatnonzero(row)
        ids.append(nz.astype(np.int32).tolist())
        values.append(row[nz].astype(np.float32).tolist())
    return ids, values


def _sparse_table(
    key: str,
    ids: np.ndarray,
    matrix: np.ndarray,
    bias: np.ndarray,
    content_bias: np.ndarray | None = None,
) -> pa.Table:
    concept_ids, values = _sparse_rows(matrix)
    columns = {
        key: pa.array([str(i) for i in ids], pa.string()),
        "concept_ids": pa.array(concept_ids, pa.list_(pa.int32())),
        "weights": pa.array(values, pa.list_(pa.float32())),
        "bias": pa.array(bias.astype(np.float32), pa.float32()),
    }
    if content_bias is not None:
        columns["content_bias"] = pa.array(content_bias.astype(np.float32), pa.float32())
    return pa.table(columns)


def _dense_from_table(table: pa.Table, key: str, dim: int, origin: str) -> tuple[np.ndarray, ...]:
    if not {key, "concept_ids", "weights", "bias"} <= set(table.column_names):
        raise ValueError(f"{origin}: needs columns {key}, concept_ids, weights, bias")
    n = table.num_rows
    matrix = np.zeros((n, dim), np.float32)
    for row, (ids, values) in enumerate(
        zip(
            table.column("concept_ids").to_pylist(),
            table.column("weights").to_pylist(),
            strict=True,
        )
    ):
        if len(ids) != len(values) or (ids and (min(ids) < 0 or max(ids) >= dim)):
            raise ValueError(f"{origin}: row {row}: concept_ids/weights malformed for width {dim}")
        matrix[row, ids] = values
    ids = np.array(table.column(key).to_pylist(), dtype=object)
    bias = table.column("bias").to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, matrix, bias


def space_files(space: ConceptSpace) -> dict[str, Any]:
    """``{file name: writer(path)}`` for ``recsys.bundle.export_bundle(extra_files=...)``."""
    meta = {
        "name": space.name,
        "explicit": space.explicit,
        "cosine": space.cosine,
        "dim": space.dim,
        "beta": float(space.beta),
        "global_bias": float(space.global_bias),
        "history_length": space.history_length,
        "weights": space.weights.astype(np.float32).tolist(),
        "declared_map": _sparse_rows(space.declared_map),
    }
    items = _sparse_table(
        "item_id", space.item_ids, space.item_vectors, space.item_bias, space.item_content_bias
    )
    users = _sparse_table("user_id", space.user_ids, space.user_declared, space.user_bias)
    return {
        CONCEPTS_FILE: lambda p: p.write_text(json.dumps(space.vocabulary.to_dict(), indent=1)),
        SPACE_FILE: lambda p: p.write_text(json.dumps(meta)),
        ITEMS_FILE: lambda p: pq.write_table(items, p),
        USERS_FILE: lambda p: pq.write_table(users, p),
    }


def read_space_files(directory: str | Path, encoder: Any = None) -> ConceptSpace:
    """The ``ConceptSpace`` stored by ``space_files`` in ``directory`` (a verified bundle);
    errors name the file at fault."""
    directory = Path(directory)
    vocab = ConceptVocabulary.from_dict(
        json.loads((directory / CONCEPTS_FILE).read_text()), origin=str(directory / CONCEPTS_FILE)
    )
    meta_path = directory / SPACE_FILE
    try:
        meta = json.loads(meta_path.read_text())
        dim = int(meta["dim"])
        map_ids, map_values = meta["declared_map"]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{meta_path}: not a concept space: {type(e).__name__}: {e}") from None
    declared_map = np.zeros((len(vocab), dim), np.float32)
    for row, (ids, values) in enumerate(zip(map_ids, map_values, strict=True)):
        declared_map[row, ids] = values
    items_table = pq.read_table(directory / ITEMS_FILE)
    item_ids, item_vectors, item_bias = _dense_from_table(
        items_table, "item_id", dim, str(directory / ITEMS_FILE)
    )
    content_bias = None
    if "content_bias" in items_table.column_names:
        content_bias = items_table.column("content_bias").to_numpy(zero_copy_only=False)
        content_bias = content_bias.astype(np.float32)
    user_ids, user_declared, user_bias = _dense_from_table(
        pq.read_table(directory / USERS_FILE), "user_id", dim, str(directory / USERS_FILE)
    )
    return ConceptSpace(
        name=str(meta["name"]),
        vocabulary=vocab,
        explicit=bool(meta["explicit"]),
        item_ids=item_ids,
        item_vectors=item_vectors,
        item_bias=item_bias,
        user_ids=user_ids,
        user_declared=user_declared,
        user_bias=user_bias,
        beta=float(meta["beta"]),
        weights=np.asarray(meta["weights"], np.float32),
        global_bias=float(meta["global_bias"]),
        declared_map=declared_map,
        history_length=int(meta["history_length"]),
        cosine=bool(meta["cosine"]),
        encoder=encoder,
        item_content_bias=content_bias,
    )
