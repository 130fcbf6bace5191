"""The two-tier index: tier-1 codes shortlist, tier-2 dense vectors re-score exactly.

A search of one query ``q`` (float32 ``(d,)``) with ``k``, shortlist ``N`` and exclusions:

1. tier 1 returns the ``N + |excluded|`` rows with the best approximate inner product;
   excluded rows are dropped and the first ``N`` kept;
2. tier 2 reads only those rows from the memory-mapped vectors and computes exact inner
   products ``q' · v`` (``q' = q @ query_map`` when progressive optimisation learned one);
3. the ``k`` best by exact score are returned (ties: lower row first), so the result never
   depends on thread timing: the same index and queries give the same hits.

Directory layout (``write_index`` / the bundle's ``index/``), each file checksummed in
``index.json``::

    index.json       count, dim, tier-1 layout, default shortlist, files -> sha256
    codes.faiss      tier 1 (absent for an empty catalogue)
    vectors.npy      tier 2, float32 (count, dim)
    item_ids.npy     item id of each row (strings or integers; never pickled objects)
    query_map.npy    optional float32 (dim, dim), from progressive optimisation
"""

from __future__ import annotations

import hashlib
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.atomic import atomic_dir
from recsys.bundle import (
    BundleError,
    read_index_manifest,
    verify_index_dir,
    write_index_manifest,
)
from recsys.retrieval.compact import CompactCodes, TierOneConfig, TierOneShape
from recsys.retrieval.dense import DenseFileError, DenseVectors, write_dense

KIND = "two_tier"
CODES = "codes.faiss"
VECTORS = "vectors.npy"
ITEM_IDS = "item_ids.npy"
QUERY_MAP = "query_map.npy"
DEFAULT_SHORTLIST = 1000


class IndexFileError(BundleError):
    """An index directory that cannot be loaded; the message names the file at fault."""


@dataclass(frozen=True)
class Hits:
    """One query's result, best first: ``ids (k',)`` item ids, ``scores (k',)`` float32 exact
    inner products; ``k' = min(k, items not excluded)``."""

    ids: np.ndarray
    scores: np.ndarray


IdSets = Sequence[Iterable[Any]] | None


class Retriever(ABC):
    """What a shard offers and what a set of shards offers: the same ``search``.

    Subclasses give the two tiers (``shortlist``, ``rescore``) and the row <-> id maps;
    ``search`` composes them.
    """

    dim: int
    count: int
    default_shortlist: int

    @abstractmethod
    def shortlist(
        self, queries: np.ndarray, sizes: Sequence[int], exclude: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: ``(rows (<=N,) int64, approx (<=N,) float32)``, best first, without
        the query's excluded rows."""

    @abstractmethod
    def rescore(self, queries: np.ndarray, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per query: exact float32 scores of its ``rows`` (tier 2)."""

    @abstractmethod
    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Item ids of ``rows``."""

    @abstractmethod
    def rows_of(self, ids: Iterable[Any]) -> np.ndarray:
        """Sorted int64 rows of the known ids among ``ids`` (unknown ids are ignored)."""

    def search(
        self,
        queries: np.ndarray,
        k: int | Sequence[int],
        shortlist: int | Sequence[int] | None = None,
        exclude: IdSets = None,
    ) -> list[Hits]:
        """Top ``k`` items of each query by exact inner product among its tier-1 shortlist.

        Args:
            queries: float32 ``(Q, d)`` (or ``(d,)`` for one query).
            k: results per query, one int for all or one per query; may exceed the catalogue.
            shortlist: tier-1 candidates ``N`` per query (at least ``k`` is used); default
                ``default_shortlist``.
            exclude: per query, item ids never to return (e.g. items already seen).
        Returns:
            ``Q`` ``Hits``, best first.
        """
        q = as_queries(queries, self.dim)
        nq = q.shape[0]
        ks = per_query(k, nq, "k", minimum=0)
        sizes = per_query(
            self.default_shortlist if shortlist is None else shortlist, nq, "shortlist", 1
        )
        sizes = [max(n, kk) for n, kk in zip(sizes, ks, strict=True)]
        excluded = self._excluded_rows(exclude, nq)
        if self.count == 0 or nq == 0:
            return [_empty_hits(self) for _ in range(nq)]
        candidates = [rows for rows, _ in self.shortlist(q, sizes, excluded)]
        exact = self.rescore(q, candidates)
        best = best_first(candidates, exact, ks)
        best_rows = [rows[b] for rows, b in zip(candidates, best, strict=True)]
        ids = self.ids_of(np.concatenate(best_rows))
        bounds = np.cumsum([0] + [b.size for b in best])
        return [
            Hits(ids[lo:hi], scores[b].astype(np.float32))
            for lo, hi, scores, b in zip(bounds[:-1], bounds[1:], exact, best, strict=True)
        ]

    def _excluded_rows(self, exclude: IdSets, nq: int) -> list[np.ndarray]:
        if exclude is None:
            return [np.empty(0, dtype=np.int64)] * nq
        if len(exclude) != nq:
            raise ValueError(f"exclude: {len(exclude)} id sets for {nq} queries")
        return [self.rows_of(ids) for ids in exclude]


def as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """``(Q, dim)`` contiguous float32; one ``(dim,)`` vector becomes ``(1, dim)``."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries: shape {q.shape}, expected (Q, {dim})")
    if not np.isfinite(q).all():
        bad = int(np.argwhere(~np.isfinite(q))[0][0])
        raise ValueError(f"queries[{bad}]: not finite")
    return np.ascontiguousarray(q)


def per_query(value: int | Sequence[int], nq: int, name: str, minimum: int) -> list[int]:
    """One int per query from an int or a sequence; each at least ``minimum``."""
    values = [int(value)] * nq if np.isscalar(value) else [int(v) for v in value]
    if len(values) != nq:
        raise ValueError(f"{name}: {len(values)} values for {nq} queries")
    low = [i for i, v in enumerate(values) if v < minimum]
    if low:
        raise ValueError(f"{name}[{low[0]}]: {values[low[0]]} < {minimum}")
    return values


TOP_K_ENTRIES = 1 << 22  # padded (queries x longest list) entries per sort in ``best_first``
RESCORE_CHUNK_BYTES = 4 << 20  # gathered float32 rows per chunk (one query more): stays in cache
_NO_ROW = np.iinfo(np.int64).max


def sort_padded(
    rows: np.ndarray, scores: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per line of ``rows (Q, W)`` / ``scores (Q, W)``: positions best first (score
    descending, ties: lower row first), the ``valid (Q, W)`` ones before the rest; and how many
    are valid per line ``(Q,)``. One sort for all lines, the same order as
    ``np.lexsort((rows, -scores))`` of each line's valid entries."""
    neg = np.where(valid, -scores, np.float32(np.nan))  # NaN sorts last; pads then by row
    if rows.size and (rows[valid].max(initial=0) >= 1 << 32 or rows[valid].min(initial=0) < 0):
        return np.lexsort((np.where(valid, rows, _NO_ROW), neg), axis=-1), valid.sum(axis=1)
    key = (_ordered_int32(neg).astype(np.int64) << 32) + rows  # unique per line: rows differ
    key[~valid] = _NO_ROW
    return np.argsort(key, axis=-1), valid.sum(axis=1)


def _ordered_int32(values: np.ndarray) -> np.ndarray:
    """float32 -> int32 with the same order as ``np.lexsort`` compares the floats: ``-0.0``
    equals ``0.0``, every NaN equal and after ``inf``."""
    v = np.where(np.isnan(values), np.float32(np.nan), values + np.float32(0.0))  # -0.0 -> 0.0
    bits = np.abs(v).view(np.int32)  # NaN: positive quiet NaN bits, above +inf's
    return np.where(np.signbit(v), -bits, bits)


def best_first(
    rows: Sequence[np.ndarray], scores: Sequence[np.ndarray], ks: Sequence[int]
) -> list[np.ndarray]:
    """Per query: positions of its ``ks[i]`` best ``scores[i]`` (ties: lower ``rows[i]``
    first), sorted in padded ``(chunk, max N)`` blocks rather than one query at a time."""
    out: list[np.ndarray] = []
    step = max(1, TOP_K_ENTRIES // max([r.size for r in rows] + [1]))  # bounded memory
    for lo in range(0, len(rows), step):
        r, sc = rows[lo : lo + step], scores[lo : lo + step]
        lengths = np.array([x.size for x in r], dtype=np.int64)
        width = int(lengths.max(initial=0))
        valid = np.arange(width) < lengths[:, None]
        padded_rows = np.zeros(valid.shape, dtype=np.int64)
        padded_scores = np.zeros(valid.shape, dtype=np.float32)
        if width:
            padded_rows[valid] = np.concatenate(r)
            padded_scores[valid] = np.concatenate(sc)
        order, _ = sort_padded(padded_rows, padded_scores, valid)
        chunk_ks = ks[lo : lo + step]
        out.extend(
            order[i, : min(kk, n)] for i, (kk, n) in enumerate(zip(chunk_ks, lengths, strict=True))
        )
    return out


def query_chunks(lengths: Sequence[int], dim: int, budget: int) -> list[range]:
    """Consecutive query ranges whose ``sum(lengths) * dim`` float32 rows fit ``budget``
    bytes (a range holds at least one query)."""
    chunks, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        size = int(n) * dim * 4
        if i > start and used + size > budget:
            chunks.append(range(start, i))
            start, used = i, 0
        used += size
    if start < len(lengths):
        chunks.append(range(start, len(lengths)))
    return chunks


def _empty_hits(index: Retriever) -> Hits:
    return Hits(index.ids_of(np.empty(0, dtype=np.int64)), np.empty(0, dtype=np.float32))


class TwoTierIndex(Retriever):
    """Tier-1 ``CompactCodes`` + tier-2 ``DenseVectors`` over one catalogue (one shard).

    Args:
        codes: tier 1 (``None`` for an empty catalogue).
        dense: tier 2, rows aligned with ``codes``.
        item_ids: ``(n,)`` id of each row.
        default_shortlist: ``N`` when a search does not give one.
        query_map: optional float32 ``(d, d)`` applied to queries before exact scoring.

    Example::

        index = TwoTierIndex.build(item_vectors, item_ids, TierOneConfig(seed=0))
        write_index(index, "runs/x/index")
        hits = load_index("runs/x/index").search(user_vectors, k=50, exclude=seen)
    """

    def __init__(
        self,
        codes: CompactCodes | None,
        dense: DenseVectors | np.ndarray,
        item_ids: np.ndarray,
        *,
        default_shortlist: int = DEFAULT_SHORTLIST,
        query_map: np.ndarray | None = None,
    ) -> None:
        self.codes = codes
        self.dense = dense
        self.item_ids = np.asarray(item_ids)
        self.count = int(self.item_ids.shape[0])
        self.dim = int(dense.shape[1] if isinstance(dense, np.ndarray) else dense.dim)
        self.default_shortlist = default_shortlist
        self.query_map = query_map
        self._row_of: dict[Any, int] | None = None
        if codes is not None and codes.count != self.count:
            raise ValueError(f"tier 1 holds {codes.count} items, item ids {self.count}")

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        config: TierOneConfig | None = None,
        *,
        default_shortlist: int = DEFAULT_SHORTLIST,
    ) -> TwoTierIndex:
        """Train tier 1 on ``vectors (n, d)`` and keep them as tier 2 (in memory until
        ``write_index``; ``load_index`` memory-maps them)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = _id_array(item_ids)
        if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors {vectors.shape} do not match {ids.shape[0]} item ids")
        if len(set(ids.tolist())) != ids.shape[0]:
            raise ValueError("item ids: duplicates")
        codes = CompactCodes.train(vectors, config or TierOneConfig()) if len(ids) else None
        return cls(codes, vectors, ids, default_shortlist=default_shortlist)

    # -- tiers -----------------------------------------------------------------------------

    def shortlist(
        self, queries: np.ndarray, sizes: Sequence[int], exclude: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.codes is None:
            return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in sizes]
        fetch = max(n + len(e) for n, e in zip(sizes, exclude, strict=True))
        rows, approx = self.codes.shortlist(queries, min(fetch, self.count))
        keep = (rows >= 0) & ~self._excluded_mask(rows, exclude)
        order, kept = sort_padded(rows, approx, keep)
        out = []
        for r, a, o, n, m in zip(rows, approx, order, sizes, kept, strict=True):
            o = o[: min(n, m)]
            out.append((r[o], a[o]))
        return out

    def _excluded_mask(self, rows: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
        """``(Q, F)`` True where ``rows[i, j]`` is among query ``i``'s excluded rows."""
        if not any(e.size for e in exclude):
            return np.zeros(rows.shape, dtype=bool)
        owner = np.repeat(np.arange(len(exclude), dtype=np.int64), [e.size for e in exclude])
        excluded_keys = owner * self.count + np.concatenate(exclude).astype(np.int64)
        keys = np.arange(rows.shape[0], dtype=np.int64)[:, None] * self.count + rows
        return np.isin(keys, excluded_keys)

    def rescore(self, queries: np.ndarray, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores, a chunk of queries at a time (``RESCORE_CHUNK_BYTES`` of gathered
        rows): one gather from tier 2 and one product per row count in the chunk."""
        q = queries @ self.query_map if self.query_map is not None else queries
        scores: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(rows)
        lengths = [r.size for r in rows]
        for chunk in query_chunks(lengths, self.dim, RESCORE_CHUNK_BYTES):
            self._rescore_chunk(q, rows, chunk, scores)
        return scores

    def _rescore_chunk(
        self, q: np.ndarray, rows: Sequence[np.ndarray], chunk: range, scores: list[np.ndarray]
    ) -> None:
        """Fill ``scores[i]`` for ``i`` in ``chunk``.

        The ``G`` queries with ``L`` rows each are gathered as one ``(G, L, d)`` block and
        scored by one ``(G, L, d) @ (G, d, 1)`` product: BLAS runs the same matrix-vector
        kernel per query as for a single query, so the scores are bit-identical to
        ``dense_rows(rows[i]) @ q[i]``. (A product padded to the longest list, or ``einsum``,
        rounds some scores differently; reading the chunk's rows once through ``np.unique``
        was slower than this gather when the rows are in the page cache.)"""
        members = np.arange(chunk.start, chunk.stop)
        lengths = np.array([rows[i].size for i in members], dtype=np.int64)
        for length in np.unique(lengths[lengths > 0]):
            group = members[lengths == length]
            block = self._take(np.stack([rows[i] for i in group]))  # (G, L, d)
            exact = np.matmul(block, q[group][:, :, None])[:, :, 0]
            for g, i in enumerate(group):
                scores[i] = exact[g]

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """``rows.shape + (d,)`` float32 tier-2 vectors, one gather."""
        if isinstance(self.dense, np.ndarray):
            return self.dense[rows]
        return self.dense.take(rows)

    def dense_rows(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), d)`` float32 tier-2 vectors of ``rows`` (only those are read)."""
        if isinstance(self.dense, np.ndarray):
            return self.dense[rows]
        return self.dense.rows(rows)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        return self.item_ids[rows]

    def rows_of(self, ids: Iterable[Any]) -> np.ndarray:
        if self._row_of is None:
            self._row_of = {v: i for i, v in enumerate(self.item_ids.tolist())}
        found = [self._row_of[i] for i in _plain(ids) if i in self._row_of]
        return np.unique(np.asarray(found, dtype=np.int64))

    # -- sizes -----------------------------------------------------------------------------

    def tier_one_bytes(self) -> int:
        """Memory of tier 1 (codes, ids, codebooks, rotation, centroids)."""
        return self.codes.memory_bytes() if self.codes is not None else 0

    def dense_bytes(self) -> int:
        """Bytes of the float32 vectors (on disk, mapped on demand)."""
        return self.count * self.dim * 4

    def describe(self) -> dict[str, Any]:
        """What ``index.json`` records besides the file list."""
        return {
            "kind": KIND,
            "count": self.count,
            "dim": self.dim,
            "default_shortlist": self.default_shortlist,
            "tier_one": self.codes.describe() if self.codes is not None else None,
            "query_map": self.query_map is not None,
        }

    # -- files -----------------------------------------------------------------------------

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the index's files into the existing ``directory``; return ``describe()``."""
        directory = Path(directory)
        if self.codes is not None:
            (directory / CODES).write_bytes(self.codes.to_bytes())
        if isinstance(self.dense, np.ndarray):
            write_dense(directory / VECTORS, self.dense)
        else:  # a loaded index: copy the file, never the whole catalogue into memory
            shutil.copyfile(self.dense.path, directory / VECTORS)
        np.save(directory / ITEM_IDS, self.item_ids, allow_pickle=False)
        if self.query_map is not None:
            np.save(directory / QUERY_MAP, self.query_map.astype(np.float32), allow_pickle=False)
        return self.describe()


def _id_array(item_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    ids = np.asarray(item_ids)
    if ids.size == 0 and ids.dtype.kind not in "iuU":
        return np.empty(0, dtype="<U1")  # an empty list: no type to keep
    if ids.dtype == object:
        ids = ids.astype(str)
    if ids.ndim != 1 or ids.dtype.kind not in "iuU":
        raise ValueError(f"item ids: expected a 1-D array of strings or integers, got {ids.dtype}")
    return ids


def _plain(ids: Iterable[Any]) -> Iterable[Any]:
    """Ids as Python scalars, so numpy strings/integers match ``tolist()`` keys."""
    return np.asarray(list(ids)).tolist() if not isinstance(ids, (set, frozenset)) else ids


def write_index(index: TwoTierIndex, path: str | Path) -> Path:
    """Write ``index`` as a standalone directory ``path`` (temporary sibling, then rename).

    For a bundle use ``recsys.bundle.write_bundle_index(bundle_dir, index.save)``.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_index_manifest(tmp, index.save(tmp))
    return path


def load_index(path: str | Path, *, verify: bool = True) -> TwoTierIndex:
    """Open an index directory: tier 1 in memory, tier 2 memory-mapped.

    ``verify`` checks every file against ``index.json`` first (``load_bundle`` already did for
    a bundle's index). Raises ``IndexFileError`` naming the file: a checksum mismatch, an
    unlisted or missing file, codes FAISS cannot read or of another size, vectors of another
    shape or dtype, item ids that are not strings or integers.
    """
    path = Path(path)
    try:
        manifest = verify_index_dir(path) if verify else read_index_manifest(path)
    except IndexFileError:
        raise
    except BundleError as e:
        raise IndexFileError(str(e)) from None
    meta = _index_meta(path, manifest)
    count, dim = meta["count"], meta["dim"]
    codes = _load_codes(path, manifest, meta) if count else None
    try:
        dense = DenseVectors(path / VECTORS, count, dim)
    except DenseFileError as e:
        raise IndexFileError(str(e)) from None
    item_ids = _load_array(path / ITEM_IDS, (count,), "iuU")
    query_map = None
    if meta.get("query_map"):
        query_map = _load_array(path / QUERY_MAP, (dim, dim), "f").astype(np.float32)
    return TwoTierIndex(
        codes,
        dense,
        item_ids,
        default_shortlist=int(meta.get("default_shortlist", DEFAULT_SHORTLIST)),
        query_map=query_map,
    )


def _index_meta(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    where = path / "index.json"
    if manifest.get("kind") != KIND:
        raise IndexFileError(f"{where}: kind {manifest.get('kind')!r}, expected {KIND!r}")
    for key in ("count", "dim"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 0:
            raise IndexFileError(f"{where}: {key}: missing or not a non-negative integer")
    if manifest["count"] and not isinstance(manifest.get("tier_one"), dict):
        raise IndexFileError(f"{where}: tier_one: missing")
    return manifest


def _load_codes(path: Path, manifest: dict[str, Any], meta: dict[str, Any]) -> CompactCodes:
    file = path / CODES
    try:
        data = file.read_bytes()
    except OSError as e:
        raise IndexFileError(f"{file}: cannot be read: {e}") from None
    digest = manifest["files"].get(CODES)
    if digest is None or hashlib.sha256(data).hexdigest() != digest:
        raise IndexFileError(f"{file}: checksum mismatch with index.json (or not listed)")
    try:
        shape = TierOneShape(**meta["tier_one"])
        codes = CompactCodes.from_bytes(data, shape)
    except (RuntimeError, TypeError, ValueError) as e:
        raise IndexFileError(f"{file}: not a FAISS index of this layout: {e}") from None
    if codes.count != meta["count"] or codes.index.d != meta["dim"]:
        raise IndexFileError(
            f"{file}: holds {codes.count} x {codes.index.d}, "
            f"index.json says {meta['count']} x {meta['dim']}"
        )
    return codes


def _load_array(file: Path, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IndexFileError(f"{file}: not a readable .npy file: {e}") from None
    if array.shape != shape or array.dtype.kind not in kinds:
        raise IndexFileError(f"{file}: holds {array.dtype} {array.shape}, expected {shape}")
    return array
