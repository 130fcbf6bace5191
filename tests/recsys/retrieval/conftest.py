"""Small clustered catalogues for retrieval tests: unit vectors around a few centres."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval.compact import TierOneConfig

# Small codebooks and few OPQ rounds keep each build well under a second.
FAST = TierOneConfig(nbits=6, opq_iterations=4, seed=0)


def clustered(n: int, dim: int, seed: int, centres: int = 12) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors scattered around ``centres`` random directions."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_top(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """``(Q, k)`` rows of the exact top-k inner products (ties: lower row first)."""
    scores = queries @ vectors.T
    return np.array([np.lexsort((np.arange(len(s)), -s))[:k] for s in scores])


@pytest.fixture(scope="module")
def catalogue() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors (600, 16), item ids 'i0'..'i599', queries (40, 16))``."""
    both = clustered(640, 16, seed=1)  # queries near the same centres as the items
    return both[:600], np.array([f"i{r}" for r in range(600)]), both[600:]
