"""Per-feature embedding tables, the baselines unified embedding is measured against.

- ``HashedEmbedding``: the hashing trick, one table per feature; buckets proportional to the
  feature's cardinality so that the total meets a parameter budget.
- ``CollisionlessEmbedding``: one row per value seen in training (exact vocabulary, built by
  ``recsys.features.vocabulary.build_vocabulary``) plus one OOV row per feature. Raw hashes are
  mapped to rows with ``torch.searchsorted`` on the sorted vocabulary; a value absent from it
  (new at serving time, or below ``min_count``) takes the OOV row. The vocabulary is a buffer,
  so it travels in the ``state_dict`` with the weights.

Both take the same input and give the same output as ``UnifiedEmbedding`` (same widths: a
feature with ``k`` probes is ``k * dim`` wide), so a model can swap one for another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.base import EmbeddingError, FeatureEmbedding, table_config
from recsys.features.hashing import name_salt, salt_multiplier


class HashedEmbedding(FeatureEmbedding):
    """Per-feature hashing trick: feature ``f`` looks up row ``mix64(raw, salt_f) mod buckets[f]``.

    Args:
        buckets: feature -> rows of its table (order = output order).
        dims: feature -> width of its table.
        salt: global salt; feature ``f`` uses ``name_salt(f"{f}#0", salt)``.
        init_scale, pooling, device: as for ``UnifiedEmbedding``.

    Input: ``KeyedJaggedTensor`` of raw ``int64`` hashes with keys ``buckets`` (extras ignored).
    Output: ``KeyedTensor`` keyed by feature, ``values()`` of shape ``(B, sum(dims))``.

    Example::

        emb = HashedEmbedding({"s_user": 500, "s_item": 200}, {"s_user": 16, "s_item": 8})
        kt = emb(batch.sparse)      # kt["s_user"]: (B, 16), kt["s_item"]: (B, 8)
        emb.num_embedding_parameters()  # 500*16 + 200*8 = 9600
    """

    def __init__(
        self,
        buckets: Mapping[str, int],
        dims: Mapping[str, int],
        salt: int = 0,
        init_scale: float = 0.05,
        pooling: str = "mean",
        device: torch.device | str | None = None,
    ) -> None:
        names = list(buckets)
        missing = [f for f in names if f not in dims]
        if missing:
            raise EmbeddingError(f"HashedEmbedding: no dim for feature(s) {missing}")
        self.buckets = {f: int(buckets[f]) for f in names}
        self.dims = {f: int(dims[f]) for f in names}
        self.salt, self.init_scale, self.pooling = salt, init_scale, pooling
        tables = [
            table_config(f"hash_{f}", self.buckets[f], self.dims[f], [f], init_scale, pooling)
            for f in names
        ]
        super().__init__(names, {f: [f] for f in names}, tables, device)
        self._multipliers = [salt_multiplier(name_salt(f"{f}#0", salt)) for f in self._ebc_order]
        self._rows = [self.buckets[f] for f in self._ebc_order]

    @classmethod
    def from_budget(
        cls,
        param_budget: int,
        cardinality: Mapping[str, int],
        dims: Mapping[str, int],
        **kwargs: Any,
    ) -> HashedEmbedding:
        """Buckets ``∝`` cardinality: ``buckets[f] = floor(s * card[f])`` (at least 1), with
        ``s = param_budget / sum(card[g] * dims[g])``, so the total stays within the budget
        (up to the one-row minimum of very small features)."""
        full = sum(cardinality[f] * dims[f] for f in cardinality)
        if full <= 0:
            raise EmbeddingError("HashedEmbedding.from_budget: total cardinality is 0")
        scale = param_budget / full
        buckets = {f: max(1, int(scale * c)) for f, c in cardinality.items()}
        return cls(buckets, dims, **kwargs)

    def remap(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return self._hash_route(features, self._multipliers, self._rows)

    def config_dict(self) -> dict[str, Any]:
        return {
            "kind": "hashing",
            "feature_names": list(self.feature_names),
            "buckets": dict(self.buckets),
            "dims": dict(self.dims),
            "salt": self.salt,
            "init_scale": self.init_scale,
            "pooling": self.pooling,
        }


class CollisionlessEmbedding(FeatureEmbedding):
    """One row per known value of each feature, plus an OOV row (the last row of each table).

    Args:
        vocab: feature -> sorted unique raw hashes (``int64`` array, ``build_vocabulary``), or
            an int (the vocabulary size) to allocate an empty vocabulary that
            ``load_state_dict`` fills (how a saved bundle is rebuilt).
        dims: feature -> width of its table.
        init_scale, pooling, device: as for ``UnifiedEmbedding``.

    Input: ``KeyedJaggedTensor`` of raw ``int64`` hashes with keys ``vocab`` (extras ignored).
    Output: ``KeyedTensor`` keyed by feature, ``values()`` of shape ``(B, sum(dims))``.

    Example::

        vocab = build_vocabulary(examples_dir, ["s_user", "s_item"])
        emb = CollisionlessEmbedding(vocab, {"s_user": 16, "s_item": 16})
        kt = emb(batch.sparse)      # kt["s_user"]: (B, 16); an unseen user -> its OOV row
    """

    def __init__(
        self,
        vocab: Mapping[str, np.ndarray | int],
        dims: Mapping[str, int],
        init_scale: float = 0.05,
        pooling: str = "mean",
        device: torch.device | str | None = None,
    ) -> None:
        names = list(vocab)
        missing = [f for f in names if f not in dims]
        if missing:
            raise EmbeddingError(f"CollisionlessEmbedding: no dim for feature(s) {missing}")
        arrays: dict[str, torch.Tensor] = {}
        for f in names:
            v = vocab[f]
            if isinstance(v, int | np.integer):
                arrays[f] = torch.zeros(int(v), dtype=torch.long)
            else:
                a = np.asarray(v, dtype=np.int64)
                if a.size > 1 and not (a[1:] > a[:-1]).all():
                    raise EmbeddingError(f"vocab[{f!r}]: not sorted and unique")
                arrays[f] = torch.from_numpy(a.copy())
        self.dims = {f: int(dims[f]) for f in names}
        self.init_scale, self.pooling = init_scale, pooling
        tables = [
            table_config(f"vocab_{f}", len(arrays[f]) + 1, self.dims[f], [f], init_scale, pooling)
            for f in names
        ]
        super().__init__(names, {f: [f] for f in names}, tables, device)
        # Buffers always on a real device (never meta), so DMP's meta-init cannot zero them.
        self._vocab_names = {f: f"vocab_{i}" for i, f in enumerate(names)}
        for f in names:
            self.register_buffer(self._vocab_names[f], arrays[f])

    def vocabulary(self, feature: str) -> torch.Tensor:
        """Sorted raw hashes of ``feature``; value ``vocabulary[i]`` has row ``i``."""
        return getattr(self, self._vocab_names[feature])

    def remap(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        values, lengths, vid, b = self._gather(features)
        counts = torch.bincount(vid, minlength=len(self._ebc_order)).tolist()
        rows = []
        for f, part in zip(self._ebc_order, values.split(counts), strict=True):
            voc = self.vocabulary(f).to(values.device)
            n = voc.numel()
            if n == 0:
                rows.append(torch.zeros_like(part))
                continue
            idx = torch.searchsorted(voc, part)
            hit = voc[idx.clamp(max=n - 1)] == part
            rows.append(torch.where(hit, idx, torch.full_like(idx, n)))
        ids = torch.cat(rows) if rows else values
        return KeyedJaggedTensor(keys=self._ebc_order, values=ids, lengths=lengths, stride=b)

    def config_dict(self) -> dict[str, Any]:
        return {
            "kind": "collisionless",
            "feature_names": list(self.feature_names),
            "vocab": {f: int(self.vocabulary(f).numel()) for f in self.feature_names},
            "dims": dict(self.dims),
            "init_scale": self.init_scale,
            "pooling": self.pooling,
        }
