"""Tier 1: product-quantized item codes in memory (FAISS), searched for a shortlist.

Each item is stored as ``m`` one-byte (or smaller) codes after an OPQ rotation; the inner
product of a query with an item is approximated from per-subspace lookup tables (asymmetric
distance). Below ``ivf_min_items`` every code is scanned (``IndexPQ``); above, an inverted
file (``IndexIVFPQ``) scans only ``nprobe`` of ``ivf_lists`` clusters, at the price of
8 bytes of item id per vector stored in the inverted lists. ``m`` is chosen so that the
per-item bytes (codes + ids) are at most ``1 / min_compression`` of the float32 vector.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

# Bytes of item id per vector in FAISS inverted lists (``idx_t``).
IVF_ID_BYTES = 8
# k-means rounds of the PQ inside each OPQ alternation (FAISS: 40 for the first, 25 each):
# the rotation converges with far fewer, and OPQ training drops from minutes to about a
# second on 20k x 128 (the final PQ is still trained with FAISS's 25 rounds).
OPQ_FIRST_PQ_ITERATIONS = 10


@dataclass(frozen=True)
class TierOneConfig:
    """Knobs of tier 1 (``None`` = chosen from the catalogue size and dimension).

    Attributes:
        code_bytes: PQ sub-quantizers ``m`` (one code each; must divide the dimension).
        nbits: bits per code (8 = 256 centroids per subspace; fewer for tiny catalogues).
        opq: learn an OPQ rotation before quantizing (needs >= 256 training vectors).
        ivf_lists: inverted lists; 0 = scan all codes; None = 0 below ``ivf_min_items``,
            else about ``sqrt(n)``.
        ivf_min_items: catalogue size from which ``ivf_lists=None`` turns the inverted file on.
        nprobe: lists scanned per query (IVF only); None = ``max(1, ivf_lists // 8)``.
        min_compression: float32 bytes per item / tier-1 bytes per item, at least.
        train_size: vectors sampled (with ``seed``) to train the quantizers.
        opq_iterations: OPQ alternations (each retrains the PQ).
        seed: sampling and k-means seed; the same seed and vectors give the same codes.
    """

    code_bytes: int | None = None
    nbits: int | None = None
    opq: bool | None = None
    ivf_lists: int | None = None
    ivf_min_items: int = 50_000
    nprobe: int | None = None
    min_compression: float = 16.0
    train_size: int = 20_000
    opq_iterations: int = 4
    seed: int = 0


@dataclass(frozen=True)
class TierOneShape:
    """The resolved tier-1 layout for one catalogue (stored in ``index.json``)."""

    dim: int
    code_bytes: int
    nbits: int
    opq: bool
    ivf_lists: int
    nprobe: int

    def item_bytes(self) -> float:
        """Tier-1 bytes per item: codes plus, with IVF, the stored item id."""
        return self.code_bytes * self.nbits / 8 + (IVF_ID_BYTES if self.ivf_lists else 0)


def resolve_shape(config: TierOneConfig, count: int, dim: int) -> TierOneShape:
    """Pick ``m``, bits, OPQ and IVF for ``count`` vectors of width ``dim``.

    Raises ``ValueError`` when no layout meets ``min_compression`` (a dimension below 4).
    """
    nbits = config.nbits or max(1, min(8, int(math.log2(max(count, 2)))))
    ivf_lists = config.ivf_lists
    budget_flat = dim * 4 / config.min_compression
    if ivf_lists is None:
        big = count >= config.ivf_min_items
        ivf_lists = _pow2_near(math.sqrt(count)) if big else 0
        if ivf_lists and _largest_m(dim, budget_flat - IVF_ID_BYTES, nbits) < max(1, dim // 16):
            ivf_lists = 0  # ids would eat the budget: scan all codes instead
    budget = budget_flat - (IVF_ID_BYTES if ivf_lists else 0)
    m = config.code_bytes or _largest_m(dim, budget, nbits)
    if m < 1 or dim % m:
        raise ValueError(
            f"tier 1: no PQ layout of dimension {dim} is {config.min_compression}x smaller "
            f"than float32 (code_bytes={m}); lower min_compression or widen the vectors"
        )
    opq = config.opq if config.opq is not None else count >= 256
    nprobe = config.nprobe or max(1, ivf_lists // 8)
    return TierOneShape(dim, m, nbits, bool(opq), ivf_lists, min(nprobe, max(ivf_lists, 1)))


def _pow2_near(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def _largest_m(dim: int, budget_bytes: float, nbits: int) -> int:
    """The largest divisor ``m`` of ``dim`` whose codes fit ``budget_bytes``."""
    fits = [m for m in range(1, dim + 1) if dim % m == 0 and m * nbits / 8 <= budget_bytes]
    return max(fits, default=0)


class CompactCodes:
    """Tier 1 over ``n`` vectors: ``shortlist(queries, n)`` gives the approximate top rows.

    Rows are positions ``0..n-1`` in the order the vectors were added.
    """

    def __init__(self, index: faiss.Index, shape: TierOneShape) -> None:
        self.index = index
        self.shape = shape
        self._set_nprobe(shape.nprobe)

    @classmethod
    def train(cls, vectors: np.ndarray, config: TierOneConfig, *, add: bool = True) -> CompactCodes:
        """Train the quantizers on a seeded sample of ``vectors (n, d)`` and encode them all
        (``add=False``: encode none; ``encode`` then fills copies, e.g. one per shard)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        shape = resolve_shape(config, n, dim)
        index, borrowed = _new_index(shape, config)
        index.train(_training_sample(vectors, config, 2**shape.nbits))
        if borrowed is not None:  # drop the borrowed pointer before its owner goes
            faiss.downcast_VectorTransform(index.chain.at(0)).pq = None
        if add:
            index.add(vectors)
        return cls(index, shape)

    def encode(self, vectors: np.ndarray) -> CompactCodes:
        """A new tier 1 with these trained quantizers holding only ``vectors``."""
        index = faiss.clone_index(self.index)
        index.reset()
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return CompactCodes(index, self.shape)

    @classmethod
    def from_bytes(cls, data: bytes, shape: TierOneShape) -> CompactCodes:
        """Deserialize an index written by ``to_bytes`` (callers check the bytes first)."""
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, shape)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def memory_bytes(self) -> int:
        """Bytes tier 1 holds in memory: codes, ids, codebooks, rotation, centroids."""
        return int(faiss.serialize_index(self.index).nbytes)

    def shortlist(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top ``n`` of each query: ``rows (Q, n)`` int64 (-1 where fewer) and
        ``scores (Q, n)`` float32 approximate inner products, best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        n = max(1, min(n, self.count))
        scores, rows = self.index.search(q, n)
        return rows, scores

    def _set_nprobe(self, nprobe: int) -> None:
        if self.shape.ivf_lists:
            faiss.extract_index_ivf(self.index).nprobe = nprobe

    def describe(self) -> dict[str, Any]:
        return asdict(self.shape)


def _new_index(shape: TierOneShape, config: TierOneConfig) -> tuple[faiss.Index, Any]:
    """The untrained index and what must stay alive while it trains (``opq.pq`` is a
    borrowed pointer FAISS uses only in ``train``)."""
    d, m, nbits = shape.dim, shape.code_bytes, shape.nbits
    ip = faiss.METRIC_INNER_PRODUCT
    if shape.ivf_lists:
        quantizer = faiss.IndexFlatIP(d)
        base = faiss.IndexIVFPQ(quantizer, d, shape.ivf_lists, m, nbits, ip)
        base.own_fields = True
        quantizer.this.disown()
        base.cp.seed = config.seed
        base.cp.min_points_per_centroid = 1
    else:
        base = faiss.IndexPQ(d, m, nbits, ip)
    base.pq.cp.seed = config.seed + 1
    base.pq.cp.min_points_per_centroid = 1
    if not shape.opq:
        return base, None
    opq = faiss.OPQMatrix(d, m)
    opq.niter = config.opq_iterations
    opq.niter_pq_0 = OPQ_FIRST_PQ_ITERATIONS
    opq.max_train_points = config.train_size
    # OPQ retrains a PQ each alternation: the same bits as the final one (FAISS's default,
    # 8 bits, costs 256 centroids per subspace even for tiny catalogues).
    inner = faiss.ProductQuantizer(d, m, nbits)
    inner.cp.seed = config.seed + 2
    inner.cp.min_points_per_centroid = 1
    inner.cp.niter = OPQ_FIRST_PQ_ITERATIONS
    opq.pq = inner
    index = faiss.IndexPreTransform(opq, base)
    index.own_fields = True
    opq.this.disown()
    base.this.disown()
    return index, inner


def _training_sample(vectors: np.ndarray, config: TierOneConfig, centroids: int) -> np.ndarray:
    """A seeded sample of at most ``train_size`` rows; a catalogue smaller than ``centroids``
    (k-means needs one point per centroid) is repeated with tiny seeded jitter."""
    n = vectors.shape[0]
    rng = np.random.default_rng(config.seed)
    if n < centroids:
        reps = np.resize(vectors, (centroids, vectors.shape[1]))
        jitter = rng.standard_normal(reps.shape).astype(np.float32) * 1e-4
        return np.ascontiguousarray(reps + jitter)
    if n <= config.train_size:
        return vectors
    rows = np.sort(rng.choice(n, config.train_size, replace=False))
    return vectors[rows]
