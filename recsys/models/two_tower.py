"""Two-tower retrieval model: user and item towers, in-batch negatives with log-Q correction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import EmbeddingConfig, ModelConfig
from recsys.embeddings import FeatureEmbedding, build_embedding, embedding_from_dict
from recsys.features.batcher import table_to_batch
from recsys.features.sparse_rule import sparse_feature_columns
from recsys.features.spec import FeatureSpec
from recsys.models.ranker import in_feature_order


class TwoTowerOutput(NamedTuple):
    """``user``/``item``: ``(B, T)`` unit vectors; ``log_q``: ``(B,)`` log sampling probability
    of each row's item; ``item_ids``: ``(B,)`` int64 hashed item id (first ``spec.item`` value)."""

    user: torch.Tensor
    item: torch.Tensor
    log_q: torch.Tensor
    item_ids: torch.Tensor


def first_ids(features: KeyedJaggedTensor, key: str) -> torch.Tensor:
    """``(B,)`` the first id of ``key`` in each row (0 for an empty row)."""
    jt = features[key]
    lengths, values = jt.lengths(), jt.values()
    starts = jt.offsets()[:-1].clamp(max=max(values.numel() - 1, 0))
    picked = values[starts] if values.numel() else torch.zeros_like(lengths, dtype=torch.int64)
    return torch.where(lengths > 0, picked, torch.zeros_like(picked))


class ItemFrequency(nn.Module):
    """Streaming estimate of each item's probability of appearing as an in-batch positive.

    Counts positives per hashed item bucket (``counts``) and in total; the estimate is
    ``(count + 1) / (total + buckets)`` (add-one smoothing). Counts are summed over all ranks
    when a process group is running, so the estimate does not depend on the world size.
    Buffers are part of ``state_dict`` and hence checkpointed and exported.

    Args:
        buckets: number of hash buckets for item ids.
    """

    def __init__(self, buckets: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.register_buffer("counts", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))

    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(ids, self.buckets)

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """Count ``ids`` (``(N,)`` int64 hashed item ids) as seen once each."""
        delta = torch.bincount(self.bucket(ids), minlength=self.buckets).to(torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(delta)
        self.counts += delta
        self.total += delta.sum()

    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float32 log of the estimated sampling probability of each id."""
        p = (self.counts[self.bucket(ids)] + 1.0) / (self.total + self.buckets)
        return torch.log(p).to(torch.float32)


class GatheredItems(NamedTuple):
    """The in-batch positives of every rank, padded to the largest rank's count.

    ``vectors (W*M, T)``, ``log_q (W*M,)``, ``ids (W*M,)``, ``valid (W*M,)`` bool (False on
    padding); ``first``: this rank's first column; ``total``: positives over all ranks;
    ``world``: number of ranks ``W``.
    """

    vectors: torch.Tensor
    log_q: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor
    first: int
    total: int
    world: int


def _gather_items(v: torch.Tensor, log_q: torch.Tensor, ids: torch.Tensor) -> GatheredItems:
    """All ranks' positives ``v (N, T)``, ``log_q (N,)``, ``ids (N,)``; ``v`` keeps its
    gradient (``torch.distributed.nn.all_gather`` sums the ranks' gradients back to the
    owner). Without a process group: this rank's own rows."""
    n = v.shape[0]
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        valid = torch.ones(n, dtype=torch.bool, device=v.device)
        return GatheredItems(v, log_q, ids, valid, 0, n, 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    # on v's device: nccl gathers only CUDA tensors
    counts = [torch.zeros(1, dtype=torch.int64, device=v.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.int64, device=v.device))
    sizes = [int(c) for c in counts]
    m = max(sizes)
    pad = m - n
    vectors = torch.cat(dist_nn.all_gather(F.pad(v, (0, 0, 0, pad))))
    rest = []
    for x, fill in ((log_q, 0.0), (ids, -1)):
        padded = F.pad(x, (0, pad), value=fill)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        rest.append(torch.cat(parts))
    valid = torch.cat([torch.arange(m, device=v.device) < k for k in sizes])
    return GatheredItems(vectors, rest[0], rest[1], valid, rank * m, sum(sizes), world)


class Tower(nn.Module):
    """Feature embedding -> MLP -> linear -> L2 normalise.

    Args:
        embedding: the side's ``FeatureEmbedding``.
        mlp: hidden sizes (ReLU).
        out_dim: output width ``T``.

    Call: ``KeyedJaggedTensor`` with keys ``embedding.feature_names``, batch ``B``.
    Returns: ``(B, T)`` unit-norm float32 vectors.
    """

    def __init__(self, embedding: FeatureEmbedding, mlp: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.embedding = embedding
        in_size = sum(embedding.output_dims[f] for f in embedding.feature_names)
        self.mlp = MLP(in_size, list(mlp)) if mlp else nn.Identity()
        self.out = nn.Linear(mlp[-1] if mlp else in_size, out_dim)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        x = self.embedding(features).values()  # extra keys in ``features`` are ignored
        return F.normalize(self.out(self.mlp(x)), dim=-1)


class TwoTower(nn.Module):
    """User tower over ``spec.user`` features, item tower over ``spec.item`` features.

    Trained with in-batch negatives: for the ``P`` positive rows of a batch the logits are
    ``U @ V.T / temperature - log q(item_j)`` (log-Q correction, Yi et al. RecSys 2019, with
    ``q`` from :class:`ItemFrequency`), and the loss is cross-entropy against the diagonal.

    Args:
        user_embedding: ``FeatureEmbedding`` restricted to the user-side features.
        item_embedding: ``FeatureEmbedding`` restricted to the item-side features.
        spec: the feature spec (``user``/``item`` lists; ``item[0]`` identifies the item).
        mlp: hidden sizes of both towers.
        tower_dim: output width ``T``.
        temperature: softmax temperature of the in-batch loss.
        logq: apply the log-Q correction.
        freq_buckets: hash buckets of the item frequency estimate.

    Call:
        sparse: ``KeyedJaggedTensor`` holding at least ``spec.user + spec.item``, batch ``B``.
        positives: optional ``(B,)`` bool; in training mode these rows update the frequency
            estimate before ``log_q`` is read.

    Returns:
        ``TwoTowerOutput(user (B, T), item (B, T), log_q (B,))``.

    Example::

        tt = TwoTower.from_config(ModelConfig(kind="two_tower"), EmbeddingConfig(), spec)
        out = tt(batch.sparse, batch.labels > 0)
        loss = tt.in_batch_loss(out, batch.labels > 0)
        vecs = tt.embed("item", items_frame)                    # (N, T) float32, unit norm
    """

    def __init__(
        self,
        user_embedding: FeatureEmbedding,
        item_embedding: FeatureEmbedding,
        spec: FeatureSpec,
        *,
        mlp: Sequence[int] = (128, 64),
        tower_dim: int = 32,
        temperature: float = 0.05,
        logq: bool = True,
        freq_buckets: int = 1 << 16,
    ) -> None:
        super().__init__()
        if not spec.user or not spec.item:
            raise ValueError("two-tower: feature spec needs both user and item features")
        self.spec = spec
        self.user_features = tuple(spec.user)
        self.item_features = tuple(spec.item)
        self.item_key = spec.item[0]
        self.temperature, self.logq = temperature, logq
        self.user_tower = Tower(user_embedding, mlp, tower_dim)
        self.item_tower = Tower(item_embedding, mlp, tower_dim)
        self.item_frequency = ItemFrequency(freq_buckets)
        self.tower_dim = tower_dim

    def forward(
        self, sparse: KeyedJaggedTensor, positives: torch.Tensor | None = None
    ) -> TwoTowerOutput:
        ids = first_ids(sparse, self.item_key)
        if self.training and positives is not None:
            self.item_frequency.update(ids[positives])
        return TwoTowerOutput(
            self.user_tower(sparse),
            self.item_tower(sparse),
            self.item_frequency.log_prob(ids),
            ids,
        )

    def in_batch_loss(self, out: TwoTowerOutput, positives: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy of each positive pair against the batch's other items.

        Another row holding the same item is not a negative: it is masked out. Under
        ``torchrun`` the negatives are the positives of *every* rank's share of the batch
        (gathered with gradients), and the loss is scaled so that the ranks' averaged
        gradients equal those of one process over the whole batch.
        """
        u, v, log_q = out.user[positives], out.item[positives], out.log_q[positives]
        ids = out.item_ids[positives]
        items = _gather_items(v, log_q, ids)
        # zero that keeps every parameter in the graph (DDP wants a grad for each, also on a
        # rank without positives)
        keep_graph = (out.user.sum() + out.item.sum()) * 0.0
        if items.total < 2:  # nothing to contrast
            return keep_graph
        logits = u @ items.vectors.T / self.temperature
        if self.logq:
            logits = logits - items.log_q[None, :]
        labels = items.first + torch.arange(u.shape[0], device=u.device)
        others = torch.ones_like(logits, dtype=torch.bool)
        others[torch.arange(u.shape[0], device=u.device), labels] = False
        hidden = (ids[:, None] == items.ids[None, :]) & others | ~items.valid[None, :]
        logits = logits.masked_fill(hidden, float("-inf"))
        loss = F.cross_entropy(logits, labels, reduction="sum")
        return (loss + keep_graph) * items.world / items.total

    def side_spec(self, kind: str) -> FeatureSpec:
        if kind not in ("user", "item"):
            raise ValueError(f"embed: kind must be 'user' or 'item', got {kind!r}")
        cols = self.user_features if kind == "user" else self.item_features
        return FeatureSpec(
            sparse=tuple(cols),
            dense=(),
            user=tuple(cols) if kind == "user" else (),
            item=tuple(cols) if kind == "item" else (),
            cardinality=self.spec.cardinality,
        )

    def embed(self, kind: str, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Embed rows of a raw ``items``/``users`` table (or examples rows) with ``kind``'s tower.

        Each feature of the side is taken from its ``s_*`` column when ``frame`` has it, else
        built from the raw columns by the feature rule (``recsys.features.sparse_rule``); a
        feature in neither form raises ``FeatureRuleError`` naming it.
        Returns float32 ``(len(frame), tower_dim)`` unit vectors.
        """
        spec = self.side_spec(kind)
        columns = sparse_feature_columns(frame, spec.sparse)
        columns["label"] = pa.array(np.zeros(len(frame), dtype=np.int8))
        batch = table_to_batch(pa.table(columns), spec)
        tower = self.user_tower if kind == "user" else self.item_tower
        with torch.no_grad():
            return tower(batch.sparse).numpy().astype(np.float32)

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        embedding: EmbeddingConfig,
        spec: FeatureSpec,
        vocab: Mapping[str, np.ndarray] | None = None,
    ) -> TwoTower:
        """Build both towers from config; each side gets its own ``FeatureEmbedding``."""
        return cls.from_embeddings(
            model,
            build_embedding(embedding, spec, features=list(spec.user), vocab=vocab),
            build_embedding(embedding, spec, features=list(spec.item), vocab=vocab),
            spec,
        )

    @classmethod
    def from_embeddings(
        cls,
        model: ModelConfig,
        user_embedding: FeatureEmbedding,
        item_embedding: FeatureEmbedding,
        spec: FeatureSpec,
    ) -> TwoTower:
        return cls(
            user_embedding,
            item_embedding,
            spec,
            mlp=list(model.mlp),
            tower_dim=model.tower_dim,
            temperature=model.temperature,
            logq=model.logq,
            freq_buckets=model.freq_buckets,
        )

    def kwargs(self, model: ModelConfig, spec: FeatureSpec) -> dict[str, Any]:
        """JSON arguments of :func:`two_tower_from_kwargs` that rebuild this module."""
        return {
            "user_embedding": self.user_tower.embedding.config_dict(),
            "item_embedding": self.item_tower.embedding.config_dict(),
            "spec": spec.to_dict(),
            "model": model.model_dump(mode="json"),
        }


def two_tower_from_kwargs(
    user_embedding: dict[str, Any],
    item_embedding: dict[str, Any],
    spec: dict[str, Any],
    model: dict[str, Any],
) -> TwoTower:
    """Bundle factory: rebuild a ``TwoTower`` from the JSON stored in ``bundle.json``
    (embeddings as their ``config_dict()``; weights come from the state_dict)."""
    feature_spec = FeatureSpec.from_dict(spec)
    return TwoTower.from_embeddings(
        ModelConfig.model_validate(model),
        embedding_from_dict(in_feature_order(user_embedding, feature_spec.user)),
        embedding_from_dict(in_feature_order(item_embedding, feature_spec.item)),
        feature_spec,
    )
