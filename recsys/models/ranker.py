"""DCN-v2 ranker over feature embeddings, dense features and optional match features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import EmbeddingConfig, ModelConfig
from recsys.embeddings import FeatureEmbedding, build_embedding, embedding_from_dict
from recsys.features.spec import FeatureSpec

LT_MIN, LT_MAX = 1.0, 7.0  # lt7 counts active days in a 7-day window, 1..7


class RankerOutput(NamedTuple):
    """``logits``: ``(B,)`` click/positive logits; ``lt7``: ``(B,)`` predicted lt7 or ``None``."""

    logits: torch.Tensor
    lt7: torch.Tensor | None


class Ranker(nn.Module):
    """DCN-v2 (stacked): ``[dense projection | embeddings | match] -> CrossNet -> MLP -> logit``.

    Dense features are first projected to ``dense_dim`` by a linear layer; the feature
    embedding's ``KeyedTensor`` is concatenated as is; match features (SESA / omni-modal
    scores, added by later issues) are appended raw. With ``lt_head`` a second linear head on
    the MLP output regresses lt7 into ``[1, 7]``.

    Args:
        embedding: a ``FeatureEmbedding`` over the sparse features the ranker reads.
        num_dense: number of dense features (``D``), may be 0.
        num_match: number of match features (``M``), may be 0.
        dense_dim: width of the dense projection (default: the embedding's chunk width, 16).
        cross_layers: number of cross layers.
        cross_low_rank: rank of ``LowRankCrossNet``; ``None`` = full-rank ``CrossNet``.
        mlp: hidden layer sizes of the deep part (ReLU).
        lt_head: add the lt7 regression head.

    Call:
        sparse: ``KeyedJaggedTensor`` of hashed ids, keys ``embedding.feature_names``,
            shape ``(F, B, L[f][i])``.
        dense: ``(B, D)`` float32.
        match: ``(B, M)`` float32 or ``None`` when ``num_match == 0``.

    Returns:
        ``RankerOutput(logits (B,), lt7 (B,) | None)``.

    Example::

        emb = build_embedding(EmbeddingConfig(dim=8), spec)      # 3 features -> (B, 24)
        ranker = Ranker(emb, num_dense=2, cross_layers=2, mlp=[32])
        out = ranker(batch.sparse, batch.dense)                   # out.logits: (B,)
    """

    def __init__(
        self,
        embedding: FeatureEmbedding,
        num_dense: int,
        *,
        num_match: int = 0,
        dense_dim: int = 16,
        cross_layers: int = 3,
        cross_low_rank: int | None = None,
        mlp: list[int] | tuple[int, ...] = (128, 64),
        lt_head: bool = False,
    ) -> None:
        super().__init__()
        if not mlp:
            raise ValueError("model.mlp: needs at least one layer size")
        self.embedding = embedding
        self.num_dense, self.num_match = num_dense, num_match
        self.dense_proj = nn.Linear(num_dense, dense_dim) if num_dense > 0 else None
        in_features = (
            (dense_dim if num_dense > 0 else 0)
            + sum(embedding.output_dims[f] for f in embedding.feature_names)
            + num_match
        )
        self.in_features = in_features
        if cross_low_rank is None:
            self.cross: nn.Module = CrossNet(in_features, cross_layers)
        else:
            self.cross = LowRankCrossNet(in_features, cross_layers, low_rank=cross_low_rank)
        self.mlp = MLP(in_features, list(mlp))
        self.logit = nn.Linear(mlp[-1], 1)
        self.lt_head = nn.Linear(mlp[-1], 1) if lt_head else None

    def forward(
        self,
        sparse: KeyedJaggedTensor,
        dense: torch.Tensor,
        match: torch.Tensor | None = None,
    ) -> RankerOutput:
        parts = []
        if self.dense_proj is not None:
            if dense.dim() != 2 or dense.shape[1] != self.num_dense:
                raise ValueError(
                    f"Ranker: dense must be (B, {self.num_dense}), got {tuple(dense.shape)}"
                )
            parts.append(self.dense_proj(dense))
        parts.append(self.embedding(sparse).values())
        if self.num_match:
            if match is None or match.shape[-1] != self.num_match:
                got = None if match is None else tuple(match.shape)
                raise ValueError(f"Ranker: match must be (B, {self.num_match}), got {got}")
            parts.append(match)
        x = torch.cat(parts, dim=1)
        h = self.mlp(self.cross(x))
        logits = self.logit(h).squeeze(-1)
        lt7 = None
        if self.lt_head is not None:
            lt7 = LT_MIN + (LT_MAX - LT_MIN) * torch.sigmoid(self.lt_head(h).squeeze(-1))
        return RankerOutput(logits, lt7)

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        embedding: EmbeddingConfig,
        spec: FeatureSpec,
        vocab: Mapping[str, np.ndarray] | None = None,
    ) -> Ranker:
        """Build a ranker over every sparse and dense feature of ``spec`` (``vocab`` for
        collisionless tables)."""
        return cls.from_embedding(model, build_embedding(embedding, spec, vocab=vocab), spec)

    @classmethod
    def from_embedding(
        cls, model: ModelConfig, embedding: FeatureEmbedding, spec: FeatureSpec
    ) -> Ranker:
        """Build a ranker around an existing ``embedding`` (over ``spec.sparse``)."""
        return cls(
            embedding,
            len(spec.dense),
            num_match=model.num_match,
            dense_dim=model.dense_dim or min(embedding.output_dims.values()),
            cross_layers=model.cross_layers,
            cross_low_rank=model.cross_low_rank,
            mlp=list(model.mlp),
            lt_head=model.lt_head,
        )

    def kwargs(self, model: ModelConfig, spec: FeatureSpec) -> dict[str, Any]:
        """JSON arguments of :func:`ranker_from_kwargs` that rebuild this module."""
        return {
            "embedding": self.embedding.config_dict(),
            "spec": spec.to_dict(),
            "model": model.model_dump(mode="json"),
        }


def in_feature_order(obj: Any, order: list[str] | tuple[str, ...]) -> Any:
    """``obj`` with every dict keyed exactly by features re-keyed in ``order``.

    ``bundle.json`` is written with sorted keys, but an embedding's ``config_dict()`` maps
    features to sizes in dicts whose order decides the output columns; the feature spec's
    lists keep the true order, so the factories restore it from them.
    """
    if isinstance(obj, dict):
        obj = {k: in_feature_order(v, order) for k, v in obj.items()}
        if obj and set(obj) <= set(order):
            return {k: obj[k] for k in order if k in obj}
    return obj


def ranker_from_kwargs(
    embedding: dict[str, Any], spec: dict[str, Any], model: dict[str, Any]
) -> Ranker:
    """Bundle factory: rebuild a ``Ranker`` from the JSON stored in ``bundle.json``
    (``embedding`` is the embedding's ``config_dict()``; weights come from the state_dict)."""
    feature_spec = FeatureSpec.from_dict(spec)
    return Ranker.from_embedding(
        ModelConfig.model_validate(model),
        embedding_from_dict(in_feature_order(embedding, feature_spec.sparse)),
        feature_spec,
    )
