"""A test-only model kind for bundle tests: hashed id -> learned vector.

It is not a production model, so the library does not register it; a test (or a subprocess a
test starts) calls ``register()`` to make bundles of kind ``"id_embedding"`` loadable there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys.bundle import register_model_kind
from recsys.features.hashing import hash_values, mix64, to_int64

KIND = "id_embedding"


class IdEmbedding(nn.Module):
    """The simplest embedder: hashed id -> learned vector, one table per kind.

    Args:
        num_buckets: rows per table.
        dim: vector width.
        salt: hashing salt for ids.
    Input: ``embed(kind, frame)`` reads ``frame[f"{kind}_id"]`` (length ``B``).
    Output: ``float32`` array ``(B, dim)``.
    """

    def __init__(self, num_buckets: int, dim: int, salt: int = 0) -> None:
        super().__init__()
        self.num_buckets, self.salt = num_buckets, salt
        self.tables = nn.ModuleDict({k: nn.Embedding(num_buckets, dim) for k in ("item", "user")})
        for t in self.tables.values():
            nn.init.uniform_(t.weight, -0.05, 0.05)

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        h = mix64(hash_values(ids, self.salt), 0) % np.uint64(self.num_buckets)
        return torch.from_numpy(to_int64(h).copy())

    def forward(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        return self.tables[kind](rows)

    def embed(self, kind: str, frame: pd.DataFrame) -> np.ndarray:
        col = f"{kind}_id"
        if col not in frame.columns:
            raise ValueError(f"embed({kind!r}): input has no column {col!r}")
        with torch.no_grad():
            return self(kind, self.rows(frame[col].to_numpy())).numpy().astype(np.float32)


def register() -> None:
    """Make bundles of kind ``"id_embedding"`` loadable in this process."""
    register_model_kind(KIND, IdEmbedding)
