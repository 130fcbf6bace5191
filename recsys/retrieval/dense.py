"""Tier 2: the float32 item vectors in a memory-mapped ``.npy`` file, read row by row.

Only the rows a query's shortlist names are read (the operating system pages in those rows
and nothing else), so the resident memory of tier 2 is the pages recently touched, not the
catalogue. The file is a plain ``.npy`` (header + C-order ``float32 (n, d)``), written to a
temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recsys.atomic import atomic_file


class DenseFileError(ValueError):
    """A dense-vector file that cannot be used; the message names the file."""


def write_dense(path: str | Path, vectors: np.ndarray) -> None:
    """Write ``vectors (n, d)`` as float32 ``.npy`` at ``path`` (temp name, fsync, rename)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{path}: dense vectors must be 2-D (n, d), got shape {array.shape}")
    with atomic_file(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


class DenseVectors:
    """Read-only view of a dense-vector file: ``rows(ids) -> (len(ids), d)`` float32.

    Args:
        path: the ``.npy`` file.
        count, dim: the shape the index expects; another shape or dtype is refused.
    """

    def __init__(self, path: str | Path, count: int, dim: int) -> None:
        self.path = Path(path)
        try:
            mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DenseFileError(f"{self.path}: not a readable .npy file: {e}") from None
        if mm.dtype != np.float32 or mm.ndim != 2 or mm.shape != (count, dim):
            raise DenseFileError(
                f"{self.path}: holds {mm.dtype} {mm.shape}, expected float32 ({count}, {dim})"
            )
        self._mm = mm
        self._array = np.asarray(mm)  # plain ndarray view of the mapping: no memmap subclass
        self.count, self.dim = count, dim

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), d)`` float32 copies of rows ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        out[order] = self._array[ids[order]]  # ascending reads: one pass over the pages touched
        return out

    def take(self, ids: np.ndarray) -> np.ndarray:
        """``ids.shape + (d,)`` float32 copies of rows ``ids`` (any shape, order, repeats), in
        one gather: for a batch ``(G, L)`` of row lists, ``(G, L, d)``."""
        return self._array[np.asarray(ids, dtype=np.int64)]

    def file_bytes(self) -> int:
        return os.path.getsize(self.path)
