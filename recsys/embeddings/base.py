"""The interface every embedding kind implements, and the routing they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.features.hashing import mix64_torch, umod_torch

POOLINGS = {"mean": PoolingType.MEAN, "sum": PoolingType.SUM}


class EmbeddingError(ValueError):
    """An embedding that cannot be built or fed; the message names the feature or field."""


def table_config(
    name: str, rows: int, dim: int, features: Sequence[str], init_scale: float, pooling: str
) -> EmbeddingBagConfig:
    """One TorchRec table, initialised uniform in ``[-init_scale, init_scale]``.

    ``weight_init_min/max`` (not a custom ``init_fn``) carry the init, so sharded tables built
    by ``DistributedModelParallel`` are initialised the same way as unsharded ones.
    """
    if pooling not in POOLINGS:
        raise EmbeddingError(f"pooling {pooling!r}: expected one of {sorted(POOLINGS)}")
    if rows < 1:
        raise EmbeddingError(f"table {name!r}: {rows} rows; the budget is too small")
    return EmbeddingBagConfig(
        name=name,
        num_embeddings=int(rows),
        embedding_dim=int(dim),
        feature_names=list(features),
        pooling=POOLINGS[pooling],
        weight_init_min=-init_scale,
        weight_init_max=init_scale,
    )


class FeatureEmbedding(nn.Module):
    """Base of ``UnifiedEmbedding``, ``HashedEmbedding`` and ``CollisionlessEmbedding``.

    A subclass maps the raw 64-bit hashes of each real feature to table rows of one or more
    *virtual* features (``remap``), looks them up in one ``EmbeddingBagCollection`` (``ebc``:
    what fused optimizers, the sharding planner and quantization see), and concatenates the
    virtual features of each real feature in order.

    Input: ``KeyedJaggedTensor`` with (at least) the keys ``feature_names``, values = raw
    ``int64`` hashes (``Batch.sparse``), shape ``(F, B, L[f][b])``.
    Output: ``KeyedTensor`` with keys ``feature_names`` (in that order), ``values()`` of shape
    ``(B, sum(output_dims.values()))``; key ``f`` spans ``output_dims[f]`` columns.

    The remapping runs in plain torch ops outside the EBC, with constants kept per device in a
    cache (not parameters, not buffers): nothing to shard, nothing a meta-device init can zero.
    """

    ebc: EmbeddingBagCollection

    def __init__(
        self,
        feature_names: Sequence[str],
        virtual: Mapping[str, Sequence[str]],
        tables: list[EmbeddingBagConfig],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if len(set(feature_names)) != len(feature_names):
            raise EmbeddingError(f"duplicate feature names in {list(feature_names)}")
        self.feature_names = list(feature_names)
        self.virtual = {f: list(virtual[f]) for f in self.feature_names}
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device or "cpu"))
        dims = {v: t.embedding_dim for t in tables for v in t.feature_names}
        self.output_dims = {f: sum(dims[v] for v in self.virtual[f]) for f in self.feature_names}
        # Virtual features in EBC order (table by table), and the source feature of each.
        self._ebc_order = [v for t in tables for v in t.feature_names]
        self._concat_order = [v for f in self.feature_names for v in self.virtual[f]]
        src = {v: f for f, vs in self.virtual.items() for v in vs}
        self._source = [src[v] for v in self._ebc_order]
        self._cache: dict[Any, Any] = {}

    @property
    def output_dim(self) -> int:
        """Total width of the output (sum of ``output_dims``)."""
        return sum(self.output_dims.values())

    def num_embedding_parameters(self) -> int:
        """Parameters held by the embedding tables."""
        return sum(c.num_embeddings * c.embedding_dim for c in self.ebc.embedding_bag_configs())

    def config_dict(self) -> dict[str, Any]:
        """JSON kwargs that rebuild this module (``embedding_from_dict``); weights not included."""
        raise NotImplementedError

    def remap(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Raw hashes of the real features -> row ids of the virtual features (EBC order)."""
        raise NotImplementedError

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        kt = self.ebc(self.remap(features))
        if kt.keys() == self._concat_order:
            values = kt.values()
        else:
            parts = kt.to_dict()
            values = torch.cat([parts[v] for v in self._concat_order], dim=1)
        return KeyedTensor(
            keys=self.feature_names,
            length_per_key=[self.output_dims[f] for f in self.feature_names],
            values=values,
        )

    # -- shared routing --------------------------------------------------------------------

    def _source_positions(self, features: KeyedJaggedTensor) -> torch.Tensor:
        keys = tuple(features.keys())
        key = ("src", keys, features.values().device)
        if key not in self._cache:
            pos = {k: i for i, k in enumerate(keys)}
            missing = [f for f in self.feature_names if f not in pos]
            if missing:
                raise EmbeddingError(f"input KeyedJaggedTensor has no feature(s) {missing}")
            idx = [pos[f] for f in self._source]
            self._cache[key] = torch.tensor(idx, dtype=torch.long, device=key[2])
        return self._cache[key]

    def _gather(
        self, features: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(values, lengths, virtual index per value, stride) of the virtual-feature KJT.

        Virtual feature ``v`` copies the jagged slice of its source feature; all in a constant
        number of vectorised ops, whatever the number of features and probes.
        """
        src = self._source_positions(features)
        b = features.stride()
        n_keys = len(features.keys())
        lengths = features.lengths().view(n_keys, b)
        per_key = lengths.sum(dim=1, dtype=torch.long)
        key_start = torch.cumsum(per_key, 0) - per_key
        seg_len = per_key[src]
        seg_start = key_start[src]
        out_start = torch.cumsum(seg_len, 0) - seg_len
        total = int(seg_len.sum())
        vid = torch.repeat_interleave(
            torch.arange(len(src), device=src.device), seg_len, output_size=total
        )
        gather = torch.arange(total, device=src.device) + (seg_start - out_start)[vid]
        values = features.values()[gather]
        return values, lengths[src].reshape(-1), vid, b

    def _constants(self, name: str, values: Sequence[int], device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(list(values), dtype=torch.long, device=device)
        return self._cache[key]

    def _hash_route(
        self,
        features: KeyedJaggedTensor,
        multipliers: Sequence[int],
        rows: Sequence[int] | int,
    ) -> KeyedJaggedTensor:
        """Virtual KJT with row ``mix64(raw, salt_v) mod rows_v`` (bit-exact with numpy).

        ``rows``: one count per virtual feature, or one ``int`` for all (unified tables),
        which takes the modulo by a scalar, ~2x faster than by a gathered per-value tensor."""
        values, lengths, vid, b = self._gather(features)
        dev = values.device
        mult = self._constants("mult", multipliers, dev)
        mixed = mix64_torch(values, mult[vid])
        if isinstance(rows, int):
            ids = umod_torch(mixed, rows, (1 << 64) % rows)
        else:
            nrows = self._constants("rows", rows, dev)
            wrap = self._constants("wrap", [(1 << 64) % r for r in rows], dev)
            ids = umod_torch(mixed, nrows[vid], wrap[vid])
        return KeyedJaggedTensor(keys=self._ebc_order, values=ids, lengths=lengths, stride=b)
