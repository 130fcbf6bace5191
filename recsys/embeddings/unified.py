"""Unified embedding (feature multiplexing): one shared table for every categorical feature.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML
Systems" (NeurIPS 2023). Every (feature, probe) pair hashes the feature's value with its own
salt into one shared table (or a few sub-tables); a feature of width ``k * dim`` concatenates
``k`` probes. Features thus share capacity: rare values of big features borrow rows that small
features leave idle, which beats a per-feature split of the same budget.

TorchRec mapping: each (feature, probe) is a *virtual feature*; the virtual features of one
sub-table are the ``feature_names`` of one ``EmbeddingBagConfig``, so fused optimizers, the
sharding planner, ``DistributedModelParallel`` and quantized inference see an ordinary
``EmbeddingBagCollection``. Probes are assigned to sub-tables round-robin across all features
(as the TensorFlow Recommenders reference does), so the probes of a feature land on different
sub-tables whenever ``probes <= num_tables``.

Pooling defaults to ``mean``: multi-valued features (history, concepts) then have the scale of
single-valued ones whatever their length, which suits the shared table (a sum would let a long
history dominate the rows it shares with other features); empty bags give zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.base import EmbeddingError, FeatureEmbedding, table_config
from recsys.features.hashing import mix64, name_salt, salt_multiplier


@dataclass(frozen=True)
class UnifiedEmbeddingConfig:
    """Shape of a unified embedding.

    Args:
        features: real feature name -> number of probes (chunks); order = output order.
        rows_per_table: rows (buckets) of each sub-table.
        dim: chunk dimension ``d``; feature ``f`` is ``features[f] * dim`` wide.
        num_tables: sub-tables; probes go to them round-robin.
        salt: global salt; the (feature, probe) salt is ``name_salt(f"{f}#{p}", salt)``.
        init_scale: weights start uniform in ``[-init_scale, init_scale]``.
        pooling: ``"mean"`` or ``"sum"`` over the values of a multi-valued feature.
        name: prefix of the TorchRec table names.
    """

    features: Mapping[str, int]
    rows_per_table: int
    dim: int
    num_tables: int = 1
    salt: int = 0
    init_scale: float = 0.05
    pooling: str = "mean"
    name: str = "unified"
    _probes: tuple[tuple[str, int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        feats = dict(self.features)
        if not feats:
            raise EmbeddingError("UnifiedEmbeddingConfig.features: no features")
        for f, k in feats.items():
            if not isinstance(k, int) or k < 1:
                raise EmbeddingError(f"UnifiedEmbeddingConfig.features[{f!r}]: probes {k!r} < 1")
        for name in ("rows_per_table", "dim", "num_tables"):
            if getattr(self, name) < 1:
                raise EmbeddingError(f"UnifiedEmbeddingConfig.{name} must be >= 1")
        object.__setattr__(self, "features", feats)
        probes, t = [], 0
        for f, k in feats.items():
            for p in range(k):
                probes.append((f, p, t, name_salt(f"{f}#{p}", self.salt)))
                t = (t + 1) % self.num_tables
        object.__setattr__(self, "_probes", tuple(probes))

    @classmethod
    def from_budget(
        cls,
        param_budget: int,
        dim: int,
        num_tables: int,
        features: Mapping[str, int],
        **kwargs: Any,
    ) -> UnifiedEmbeddingConfig:
        """Rows follow from the budget: ``rows_per_table = param_budget // (dim * num_tables)``."""
        rows = int(param_budget) // (dim * num_tables)
        if rows < 1:
            raise EmbeddingError(
                f"param_budget {param_budget} is below one row per table "
                f"(dim {dim} x num_tables {num_tables})"
            )
        return cls(features=features, rows_per_table=rows, dim=dim, num_tables=num_tables, **kwargs)

    @property
    def probes(self) -> tuple[tuple[str, int, int, int], ...]:
        """``(feature, probe, table, salt)`` for every probe, feature-major."""
        return self._probes

    @property
    def output_dims(self) -> dict[str, int]:
        return {f: k * self.dim for f, k in self.features.items()}

    def num_parameters(self) -> int:
        return self.rows_per_table * self.dim * self.num_tables

    def rows(self, feature: str, raw: np.ndarray) -> np.ndarray:
        """Reference (numpy) rows of ``raw`` int64 hashes: ``(len(raw), probes)`` table rows."""
        cols = [
            (mix64(raw.astype(np.int64).view(np.uint64), s) % np.uint64(self.rows_per_table))
            for f, _, _, s in self._probes
            if f == feature
        ]
        if not cols:
            raise EmbeddingError(f"unknown feature {feature!r}")
        return np.stack(cols, axis=1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; features as ``[[name, probes], ...]`` so order survives ``sort_keys``."""
        return {
            "features": [[f, k] for f, k in self.features.items()],
            "rows_per_table": self.rows_per_table,
            "dim": self.dim,
            "num_tables": self.num_tables,
            "salt": self.salt,
            "init_scale": self.init_scale,
            "pooling": self.pooling,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnifiedEmbeddingConfig:
        d = dict(d)
        feats = d.pop("features")
        pairs = feats.items() if isinstance(feats, Mapping) else feats
        return cls(features={str(f): int(k) for f, k in pairs}, **d)


def virtual_name(feature: str, probe: int) -> str:
    """Name of the virtual feature carrying probe ``probe`` of ``feature``."""
    return f"{feature}__p{probe}"


class UnifiedEmbedding(FeatureEmbedding):
    """Multiplexed embedding of all categorical features in one (or a few) shared tables.

    Args:
        config: the table shape and the probes per feature.
        device: where the tables live (``"meta"`` for ``DistributedModelParallel`` init).

    Input: ``KeyedJaggedTensor`` with keys ``config.features`` (extra keys ignored), values =
    raw ``int64`` hashes, shape ``(F, B, L[f][b])``.
    Output: ``KeyedTensor`` with keys ``feature_names``; ``values()`` is
    ``(B, dim * sum(probes))``; feature ``f`` occupies ``probes[f] * dim`` columns, probe 0
    first.

    Each probe ``p`` of feature ``f`` looks up row
    ``mix64(raw, name_salt(f"{f}#{p}", salt)) mod rows_per_table`` of its sub-table.

    Example::

        cfg = UnifiedEmbeddingConfig({"s_user": 2, "s_item": 1}, rows_per_table=1000, dim=8)
        emb = UnifiedEmbedding(cfg)
        #        b0        b1
        # s_user [h(u1)]   [h(u2)]
        # s_item [h(i7)]   [h(i7), h(i9)]      (raw hashes from Batch.sparse)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["s_user", "s_item"], values=raw, lengths=torch.tensor([1, 1, 1, 2]))
        kt = emb(kjt)
        kt.values().shape          # (2, 24): s_user 16 columns, s_item 8 columns
        kt["s_user"].shape         # (2, 16)
    """

    def __init__(
        self, config: UnifiedEmbeddingConfig, device: torch.device | str | None = None
    ) -> None:
        self.config = config
        per_table: list[list[str]] = [[] for _ in range(config.num_tables)]
        virtual: dict[str, list[str]] = {f: [] for f in config.features}
        for f, p, t, _ in config.probes:
            per_table[t].append(virtual_name(f, p))
            virtual[f].append(virtual_name(f, p))
        tables = [
            table_config(
                f"{config.name}_{t}",
                config.rows_per_table,
                config.dim,
                names,
                config.init_scale,
                config.pooling,
            )
            for t, names in enumerate(per_table)
            if names
        ]
        super().__init__(list(config.features), virtual, tables, device)
        salt_of = {virtual_name(f, p): s for f, p, _, s in config.probes}
        self._multipliers = [salt_multiplier(salt_of[v]) for v in self._ebc_order]

    def remap(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return self._hash_route(features, self._multipliers, self.config.rows_per_table)

    def config_dict(self) -> dict[str, Any]:
        return {"kind": "unified", "config": self.config.to_dict()}
