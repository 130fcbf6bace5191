"""Stream example Parquet into TorchRec batches: hashed ``KeyedJaggedTensor`` + dense + labels.

``ExampleBatcher`` reads ``<examples_dir>/split=<split>/*.parquet`` one buffer of row groups at a
time (never a whole split), featurises only the rows of its own batches, and hands them over
through a bounded queue filled by a background thread so the training step is not input-bound.

Order is a pure function of ``(seed, epoch)``: row groups are permuted, then rows are shuffled
within a buffer of ``shuffle_row_groups`` consecutive row groups. The stream is cut into global
batches of ``batch_size`` rows; global batch ``g`` belongs to rank ``g % world_size``. Because
row counts come from Parquet metadata, resuming (``skip_examples(n)``: the epoch's stream starts
at its row ``n``, whatever batch size or world size read the first ``n`` rows) and sharding skip
the reading of buffers that hold none of this rank's rows. With ``drop_last=True`` every rank gets
the same number of full batches (what synchronous data-parallel training needs); with
``drop_last=False`` every row is served exactly once and ranks may differ by one batch.

Featurisation (``table_to_batch``, shared with serving and batch jobs): each sparse value is
``to_int64(hash_values(str(value), salt=0))``; the embedding modules derive table rows from it.
A feature that examples store under another column is read from it (``s_history`` from
``history``, ``recsys.features.sparse_rule.example_column``). Dense columns are standardised with
the manifest's ``dense_stats`` (``FeatureSpec.dense_scale``). With match features
(``recsys.models.match``) each batch also carries their ``(B, M)`` scores, computed in the
prefetch thread from the rows' user ids, histories and item ids.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.features.hashing import hash_values, to_int64
from recsys.features.sparse_rule import HISTORY, example_column
from recsys.features.spec import FeatureSpec

if TYPE_CHECKING:  # recsys.models imports this module: a runtime import here would be a cycle
    from recsys.models.match import MatchFeature

LABEL = "label"
LT7 = "lt7"
USER_ID = "user_id"
ITEM_ID = "item_id"
# Batches featurised together (see _Features); bounded so a chunk stays small in memory.
FEATURISE_BATCHES = 8

log = logging.getLogger(__name__)


class BatcherError(ValueError):
    """Examples that cannot be batched; the message names the directory, file or column."""


@dataclass
class Batch:
    """One training batch of ``B`` examples.

    Attributes:
        sparse: keys = ``spec.sparse``; values ``int64`` raw hashes (salt 0), lengths ``int32``.
        dense: ``(B, len(spec.dense))`` float32; columns with ``spec.dense_scale`` are
            standardised (``(x - mean) / std``), nulls -> 0.
        labels: ``(B,)`` float32 in {0, 1}.
        lt7: ``(B,)`` float32 when the column exists and is not entirely null (NaN where null).
        user_ids: ``(B,)`` object array of user ids (for GAUC), when the column exists.
        item_ids: ``(B,)`` object array of item ids, when the column exists.
        histories: ``B`` lists of the raw item ids of each row's ``history`` (oldest first;
            null -> ``[]``), when match features or ``histories=True`` asked for them.
        match: ``(B, M)`` float32 scores of the ``M`` match features, in their order, when
            match features were given (the ranker's ``match`` input).
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    lt7: torch.Tensor | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    histories: list[list[str]] | None = None
    match: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with its tensors on ``device`` (id arrays stay on the host)."""
        return Batch(
            sparse=self.sparse.to(torch.device(device), non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            lt7=None if self.lt7 is None else self.lt7.to(device, non_blocking=non_blocking),
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            histories=self.histories,
            match=None if self.match is None else self.match.to(device, non_blocking=non_blocking),
        )


def _hash_flat(flat: pa.Array) -> np.ndarray:
    """int64 hashes of a flat array of values: each distinct value is hashed once."""
    if len(flat) == 0:
        return np.zeros(0, dtype=np.int64)
    if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)):
        flat = pc.cast(flat, pa.string())
    enc = pc.dictionary_encode(flat)
    uniq = enc.dictionary.to_numpy(zero_copy_only=False)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    return to_int64(hash_values(uniq, salt=0))[codes]


def sparse_hashes(col: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(lengths int32 (B,), values int64) of one sparse column; null lists/values are dropped."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = pc.list_flatten(arr)
        if flat.null_count:
            parents = pc.list_parent_indices(arr).to_numpy()
            keep = pc.is_valid(flat)
            lengths = np.bincount(parents[keep.to_numpy(zero_copy_only=False)], minlength=n)
            flat = flat.filter(keep)
        else:
            lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
        valid = pc.is_valid(arr)
        lengths = valid.to_numpy(zero_copy_only=False).astype(np.int32)
        flat = arr.filter(valid) if arr.null_count else arr
    else:
        raise BatcherError(f"sparse column {name!r}: type {t} (expected list<string> or string)")
    return lengths.astype(np.int32, copy=False), _hash_flat(flat)


def _float_column(table: pa.Table, name: str, fill: float) -> np.ndarray:
    col = table.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise BatcherError(f"column {name!r}: type {col.type} is not numeric")
    return np.array(pc.fill_null(pc.cast(col, pa.float32()), fill).to_numpy(), dtype=np.float32)


def _take_jagged(
    lengths: np.ndarray, offsets: np.ndarray, values: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``idx`` of one jagged column -> (lengths, offsets from 0, values)."""
    ln = lengths[idx]
    out_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(ln, out=out_offsets[1:])
    # value p of output row r sits at offsets[idx[r]] + (p - out_offsets[r]) in the input
    pos = np.repeat(offsets[idx] - out_offsets[:-1], ln) + np.arange(out_offsets[-1])
    return ln, out_offsets, values[pos]


def _histories(arr: pa.Array) -> list[list[str]]:
    return [h if h is not None else [] for h in arr.to_pylist()]


# Bytes one object-array entry (a short Python str and its pointer) costs, for ``nbytes``.
_OBJECT_BYTES = 64


@dataclass
class _Features:
    """Featurised rows of one Arrow table, column by column, ready to be cut into batches.

    Featurising several batches' rows at once and slicing afterwards halves the input cost per
    row at batch size 1,024 (fewer pyarrow/numpy calls per row; measured in docs/benchmarks.md).
    ``take``, ``slice`` and ``concat`` let an in-memory split be re-ordered every epoch
    without featurising it again.
    """

    keys: list[str]
    lengths: list[np.ndarray]  # per sparse feature, (N,) int32
    offsets: list[np.ndarray]  # per sparse feature, (N + 1,) int64 into its values
    values: list[np.ndarray]  # per sparse feature, int64 hashes
    dense: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) float32
    lt7: np.ndarray | None
    user_ids: np.ndarray | None
    item_ids: np.ndarray | None
    histories: pa.Array | None = None  # (N,) list<string>, when asked for
    match: np.ndarray | None = None  # (N, M) float32, when match features were given

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def nbytes(self) -> int:
        """Memory held by these rows (object arrays estimated at ``_OBJECT_BYTES`` a row)."""
        arrays = [*self.lengths, *self.offsets, *self.values, self.dense, self.labels]
        arrays += [a for a in (self.lt7, self.match) if a is not None]
        n = sum(a.nbytes for a in arrays)
        n += sum(_OBJECT_BYTES * len(a) for a in (self.user_ids, self.item_ids) if a is not None)
        return n + (self.histories.nbytes if self.histories is not None else 0)

    def rows(self, a: int, b: int) -> Batch:
        """Rows ``[a, b)`` as a ``Batch`` (arrays are copied, so batches do not pin the chunk)."""
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(
                np.concatenate(
                    [v[o[a] : o[b]] for v, o in zip(self.values, self.offsets, strict=True)]
                )
                if self.keys
                else np.zeros(0, np.int64)
            ),
            lengths=torch.from_numpy(
                np.concatenate([ln[a:b] for ln in self.lengths])
                if self.keys
                else np.zeros(0, np.int32)
            ),
            stride=b - a,
        )

        def cut(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[a:b]

        lt7, match = cut(self.lt7), cut(self.match)
        return Batch(
            sparse=kjt,
            dense=torch.from_numpy(np.ascontiguousarray(self.dense[a:b])),
            labels=torch.from_numpy(self.labels[a:b].copy()),
            lt7=None if lt7 is None else torch.from_numpy(lt7.copy()),
            user_ids=cut(self.user_ids),
            item_ids=cut(self.item_ids),
            histories=None if self.histories is None else _histories(self.histories[a:b]),
            match=None if match is None else torch.from_numpy(match.copy()),
        )

    def _map(
        self,
        rows: Callable[[np.ndarray], np.ndarray],
        arrow: Callable[[pa.Array], pa.Array],
        jagged: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]],
    ) -> _Features:
        lengths, offsets, values = [], [], []
        for ln, o, v in zip(self.lengths, self.offsets, self.values, strict=True):
            ln2, o2, v2 = jagged(ln, o, v)
            lengths.append(ln2)
            offsets.append(o2)
            values.append(v2)

        def opt(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else rows(x)

        return _Features(
            keys=self.keys,
            lengths=lengths,
            offsets=offsets,
            values=values,
            dense=rows(self.dense),
            labels=rows(self.labels),
            lt7=opt(self.lt7),
            user_ids=opt(self.user_ids),
            item_ids=opt(self.item_ids),
            histories=None if self.histories is None else arrow(self.histories),
            match=opt(self.match),
        )

    def take(self, idx: np.ndarray) -> _Features:
        """Rows ``idx`` (any order, a copy)."""
        return self._map(
            lambda x: x[idx],
            lambda x: x.take(pa.array(idx)),
            lambda ln, o, v: _take_jagged(ln, o, v, idx),
        )

    def slice(self, a: int, n: int) -> _Features:
        """Rows ``[a, a + n)`` (views where possible)."""

        def jagged(ln: np.ndarray, o: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
            return ln[a : a + n], o[a : a + n + 1] - o[a], v[o[a] : o[a + n]]

        return self._map(lambda x: x[a : a + n], lambda x: x.slice(a, n), jagged)

    @staticmethod
    def concat(parts: Sequence[_Features]) -> _Features:
        """The rows of ``parts``, one after the other."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]

        def cat(name: str) -> np.ndarray | None:
            xs = [getattr(p, name) for p in parts]
            return None if any(x is None for x in xs) else np.concatenate(xs)

        lengths = [np.concatenate([p.lengths[k] for p in parts]) for k in range(len(first.keys))]
        offsets = []
        for ln in lengths:
            o = np.zeros(len(ln) + 1, dtype=np.int64)
            np.cumsum(ln, out=o[1:])
            offsets.append(o)
        histories = [p.histories for p in parts]
        return _Features(
            keys=first.keys,
            lengths=lengths,
            offsets=offsets,
            values=[np.concatenate([p.values[k] for p in parts]) for k in range(len(first.keys))],
            dense=np.concatenate([p.dense for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            lt7=cat("lt7"),
            user_ids=cat("user_ids"),
            item_ids=cat("item_ids"),
            histories=None
            if any(h is None for h in histories)
            else pa.concat_arrays([h for h in histories]),  # type: ignore[misc]
            match=cat("match"),
        )


def _sparse_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """Feature ``name``'s values: its own column, or the column examples store it under."""
    if name in table.column_names:
        return table.column(name)
    return table.column(example_column(name))


def missing_feature_columns(spec: FeatureSpec, columns: Sequence[str]) -> list[str]:
    """Feature columns of ``spec`` that ``columns`` provide in neither form (own name or
    ``example_column``)."""
    have = set(columns)
    sparse = [c for c in spec.sparse if c not in have and example_column(c) not in have]
    return sparse + [c for c in spec.dense if c not in have]


def feature_columns(spec: FeatureSpec, columns: Sequence[str]) -> list[str]:
    """The columns of ``columns`` to read for ``spec``'s features (``history`` for
    ``s_history`` when the feature has no column of its own)."""
    have = set(columns)
    wanted = [c if c in have else example_column(c) for c in spec.sparse]
    return list(dict.fromkeys([*wanted, *spec.dense]))


def _featurise(
    table: pa.Table,
    spec: FeatureSpec,
    match_features: Sequence[MatchFeature] = (),
    histories: bool = False,
) -> _Features:
    missing = missing_feature_columns(spec, table.column_names)
    if missing:
        raise BatcherError(f"table has no feature column(s) {missing}")
    b = table.num_rows
    lengths, offsets, values = [], [], []
    for name in spec.sparse:
        ln, v = sparse_hashes(_sparse_column(table, name), name)
        lengths.append(ln)
        offsets.append(np.concatenate([[0], np.cumsum(ln, dtype=np.int64)]))
        values.append(v)
    if spec.dense:
        cols = []
        for c in spec.dense:
            if c in spec.dense_scale:
                mean, std = spec.dense_scale[c]
                x = _float_column(table, c, mean)
                cols.append(((x - np.float32(mean)) / np.float32(std)).astype(np.float32))
            else:
                cols.append(_float_column(table, c, 0.0))
        dense = np.stack(cols, axis=1)
    else:
        dense = np.zeros((b, 0), dtype=np.float32)
    names = table.column_names
    labels = _float_column(table, LABEL, 0.0) if LABEL in names else np.zeros(b, np.float32)
    lt7 = None
    if LT7 in names and table.column(LT7).null_count < b:
        lt7 = _float_column(table, LT7, float("nan"))

    def ids(col: str) -> np.ndarray | None:
        if col not in names or (b and table.column(col).null_count == b):
            return None
        return table.column(col).to_numpy(zero_copy_only=False)

    history = None
    if match_features or histories:
        missing = [c for c in (HISTORY, USER_ID, ITEM_ID) if c not in names]
        if missing:
            what = (
                "match features " + str([f.name for f in match_features])
                if match_features
                else "histories"
            )
            raise BatcherError(f"{what} need column(s) {missing}; the table has {names}")
        history = table.column(HISTORY).combine_chunks()
    match = None
    if match_features:
        from recsys.models.match import match_matrix  # noqa: PLC0415 - see TYPE_CHECKING

        match = match_matrix(
            match_features,
            table.column(USER_ID).to_numpy(zero_copy_only=False),
            _histories(history),  # type: ignore[arg-type]
            table.column(ITEM_ID).to_numpy(zero_copy_only=False),
        ).numpy()
    return _Features(
        keys=list(spec.sparse),
        lengths=lengths,
        offsets=offsets,
        values=values,
        dense=dense,
        labels=labels,
        lt7=lt7,
        user_ids=ids(USER_ID),
        item_ids=ids(ITEM_ID),
        histories=history,
        match=match,
    )


def table_to_batch(
    table: pa.Table,
    spec: FeatureSpec,
    match_features: Sequence[MatchFeature] = (),
    *,
    histories: bool = False,
) -> Batch:
    """Featurise any Arrow table holding ``spec``'s columns (training, serving, batch jobs).

    A missing ``label`` gives all-zero labels (inference); other missing feature columns are
    errors naming the column. ``s_history`` may come as ``history``. With ``match_features``
    (which need ``user_id``, ``item_id`` and ``history``) ``Batch.match`` holds their
    ``(B, M)`` scores; with ``histories`` ``Batch.histories`` holds the raw histories.
    """
    return _featurise(table, spec, match_features, histories).rows(0, table.num_rows)


_Rows = TypeVar("_Rows", pa.Table, _Features)


@dataclass(frozen=True)
class _RowGroup:
    file: int
    index: int
    num_rows: int


class ExampleBatcher:
    """Iterate ``Batch`` es over one split of an examples directory.

    Args:
        examples_dir: directory holding ``split=<split>/*.parquet`` (and ``manifest.json``).
        split: ``"train"``, ``"valid"`` or ``"test"``.
        spec: which columns are features.
        batch_size: rows per batch (global batch = ``batch_size`` rows on each rank).
        shuffle: permute row groups and rows within buffers, by ``(seed, epoch)``.
        seed: shuffle seed.
        prefetch: batches prepared ahead by the background thread (0 = no thread).
        drop_last: drop the last partial batch, and trim so every rank has equally many.
        rank, world_size: this process's shard of the batches.
        shuffle_row_groups: row groups per shuffle buffer (memory ~ this many row groups).
        match_features: frozen scorers (``recsys.models.match``) whose ``(B, M)`` scores each
            batch carries as ``Batch.match`` (needs ``user_id``, ``item_id``, ``history``).
        histories: also fill ``Batch.histories`` without match features.

    Example::

        spec = FeatureSpec.from_manifest(json.load(open(d / "manifest.json")))
        batcher = ExampleBatcher(d, "train", spec, 1024, shuffle=True, seed=0)
        batcher.set_epoch(3)
        batcher.skip_examples(122_880)    # resume: row 122,880 of epoch 3's order comes next
        for batch in batcher:             # Batch(sparse=KJT, dense=(B, D), labels=(B,), ...)
            ...
    """

    def __init__(
        self,
        examples_dir: str | Path,
        split: str,
        spec: FeatureSpec,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shuffle_row_groups: int = 8,
        match_features: Sequence[MatchFeature] = (),
        histories: bool = False,
    ) -> None:
        if batch_size < 1:
            raise BatcherError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise BatcherError(f"rank {rank} outside 0..{world_size - 1}")
        self.dir = Path(examples_dir) / f"split={split}"
        self.files = sorted(self.dir.glob("*.parquet"))
        if not self.files:
            raise BatcherError(f"{self.dir}: no *.parquet files")
        self.split, self.spec, self.batch_size = split, spec, batch_size
        self.shuffle, self.seed, self.prefetch = shuffle, seed, prefetch
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.shuffle_row_groups = max(1, shuffle_row_groups)
        self.epoch = 0
        self._skip_rows = 0  # global rows of the epoch's order to skip (resume)
        self._row_groups: list[_RowGroup] = []
        schema_names: set[str] | None = None
        for i, f in enumerate(self.files):
            pf = pq.ParquetFile(f)
            md = pf.metadata
            names = set(pf.schema_arrow.names)
            missing = missing_feature_columns(spec, names) + [c for c in (LABEL,) if c not in names]
            if missing:
                raise BatcherError(f"{f}: missing column(s) {missing}")
            schema_names = names if schema_names is None else schema_names & names
            self._row_groups += [
                _RowGroup(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)
            ]
        self.num_rows = sum(g.num_rows for g in self._row_groups)
        self._schema_names = schema_names or set()
        self._memory: dict[tuple[int, int], _Features] | None = None  # see keep_in_memory
        self._budget = 0
        self.memory_bytes = 0  # featurised bytes kept in memory
        self.estimated_bytes = 0
        self.set_match_features(match_features, histories=histories)

    def set_match_features(
        self, match_features: Sequence[MatchFeature], *, histories: bool = False
    ) -> None:
        """Make every batch carry ``match_features``' scores (``Batch.match``) and, with
        match features or ``histories``, the raw histories (``Batch.histories``)."""
        self.match_features = tuple(match_features)
        self.histories = histories
        if self._memory:  # featurised without (or with other) match features: start again
            self._memory, self.memory_bytes = {}, 0
        names = self._schema_names
        wants_history = bool(self.match_features) or histories
        if wants_history:
            missing = [c for c in (HISTORY, USER_ID, ITEM_ID) if c not in names]
            if missing:
                what = [f.name for f in self.match_features] or "histories"
                raise BatcherError(f"{self.dir}: {what} need column(s) {missing}")
        extra = [c for c in (LT7, USER_ID, ITEM_ID) if c in names]
        extra += [HISTORY] if wants_history else []
        self.columns = list(dict.fromkeys([*feature_columns(self.spec, names), LABEL, *extra]))

    # -- order -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shuffle order); also clears any pending skip."""
        self.epoch = epoch
        self._skip_rows = 0

    def skip_examples(self, n: int) -> None:
        """Make the next iteration start at row ``n`` of the current epoch's order (counted
        over all ranks): global batch 0 is then rows ``[n, n + batch_size)``."""
        if n < 0:
            raise BatcherError(f"skip_examples: n must be >= 0, got {n}")
        self._skip_rows = n

    def skip_batches(self, n: int) -> None:
        """Make the next iteration start at this rank's batch ``n`` of the current epoch
        (``skip_examples`` of the ``n * world_size`` global batches before it)."""
        if n < 0:
            raise BatcherError(f"skip_batches: n must be >= 0, got {n}")
        self._skip_rows = n * self.world_size * self.batch_size

    def _num_global_batches(self, skip_rows: int = 0) -> int:
        full, rest = divmod(max(self.num_rows - skip_rows, 0), self.batch_size)
        if self.drop_last:
            return full - full % self.world_size
        return full + (rest > 0)

    def num_batches(self) -> int:
        """Batches this rank yields per epoch (before ``skip_batches``)."""
        g = self._num_global_batches()
        return len(range(self.rank, g, self.world_size))

    def __len__(self) -> int:
        return self.num_batches()

    def _buffers(self, epoch: int) -> list[list[_RowGroup]]:
        groups = list(self._row_groups)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, 0])
            groups = [groups[i] for i in rng.permutation(len(groups))]
        k = self.shuffle_row_groups if self.shuffle else 1
        return [groups[i : i + k] for i in range(0, len(groups), k)]

    def _read(
        self,
        buf: list[_RowGroup],
        epoch: int,
        buf_index: int,
        files: dict[int, pq.ParquetFile],
        *,
        shuffle: bool = True,
    ) -> pa.Table:
        parts = []
        for g in buf:
            if g.file not in files:
                files[g.file] = pq.ParquetFile(self.files[g.file])
            try:
                parts.append(files[g.file].read_row_group(g.index, columns=self.columns))
            except (OSError, pa.ArrowException) as e:
                raise BatcherError(f"{self.files[g.file]}: row group {g.index}: {e}") from e
        table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
        if shuffle and self.shuffle and table.num_rows > 1:
            rng = np.random.default_rng([self.seed, epoch, 1 + buf_index])
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        return table

    def _cut(
        self, epoch: int, skip_rows: int, load: Callable[[list[_RowGroup], int], _Rows]
    ) -> Iterator[list[_Rows]]:
        """This rank's batches as lists of row pieces (``pa.Table`` or ``_Features``, as
        ``load(buffer, buffer_index)`` gives them), loading only buffers that hold its rows."""
        n_global, bs, ws = self._num_global_batches(skip_rows), self.batch_size, self.world_size
        wanted = range(self.rank, n_global, ws)
        if not wanted:
            return
        pos = 0  # index into wanted
        pieces: list[_Rows] = []
        start = 0  # global row of the current buffer
        for bi, buf in enumerate(self._buffers(epoch)):
            stop = start + sum(g.num_rows for g in buf)
            g0 = skip_rows + wanted[pos] * bs
            if g0 >= stop:
                start = stop
                continue
            rows = load(buf, bi)
            while pos < len(wanted):
                lo = skip_rows + wanted[pos] * bs
                hi = min(lo + bs, self.num_rows)
                if lo >= stop:
                    break
                a, b = max(lo, start), min(hi, stop)
                pieces.append(rows.slice(a - start, b - a))
                if hi > stop:
                    break
                yield pieces
                pieces = []
                pos += 1
            if pos >= len(wanted):
                return
            start = stop

    def _tables(self, epoch: int, skip_rows: int) -> Iterator[pa.Table]:
        """This rank's batches as Arrow tables, reading only buffers that hold its rows."""
        files: dict[int, pq.ParquetFile] = {}

        def load(buf: list[_RowGroup], bi: int) -> pa.Table:
            return self._read(buf, epoch, bi, files)

        for pieces in self._cut(epoch, skip_rows, load):
            yield pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    # -- in memory -------------------------------------------------------------------------

    def keep_in_memory(self, budget_mb: float) -> bool:
        """Keep the featurised split in memory across epochs when it fits in ``budget_mb`` MiB.

        Decided first from the Parquet metadata (``estimated_bytes``), then checked on the
        real arrays while the first epoch fills the memory: past the budget they are dropped
        and every later epoch streams. In memory each epoch is re-ordered from the featurised
        row groups (the same buffers and permutations as streaming, so batches are identical)
        instead of reading and featurising again. Returns whether the split will be kept.
        """
        self._budget = int(budget_mb * 2**20)
        self.estimated_bytes = self._estimate_bytes()
        keep = 0 < self.estimated_bytes <= self._budget
        self._memory = {} if keep else None
        self.memory_bytes = 0
        if not keep and budget_mb > 0:
            log.info(
                "%s: featurised split ~%.0f MiB > train.in_memory_mb %s: streaming every epoch",
                self.dir, self.estimated_bytes / 2**20, budget_mb,
            )  # fmt: skip
        return keep

    @property
    def in_memory(self) -> bool:
        """Whether the featurised split is (being) kept in memory."""
        return self._memory is not None

    def _estimate_bytes(self) -> int:
        """The featurised split's size from Parquet metadata: 8 bytes per sparse value, 12 per
        row and sparse feature (length + offset), 4 per dense value, label and lt7, and
        ``_OBJECT_BYTES`` per id (user, item) of every row."""
        sparse_cols = {example_column(c) for c in self.spec.sparse} | {
            c for c in self.spec.sparse if c in self._schema_names
        }
        values = 0
        for g in self._row_groups:
            md = pq.ParquetFile(self.files[g.file]).metadata.row_group(g.index)
            for j in range(md.num_columns):
                col = md.column(j)
                if col.path_in_schema.split(".")[0] in sparse_cols:
                    values += col.num_values
        per_row = 12 * len(self.spec.sparse) + 4 * (len(self.spec.dense) + 2) + 2 * _OBJECT_BYTES
        # every rank keeps every row group it reads: with batches dealt round-robin, nearly all
        return 8 * values + per_row * self.num_rows

    def _group_features(self, g: _RowGroup, files: dict[int, pq.ParquetFile]) -> _Features:
        """Row group ``g`` featurised: from memory, or read now (and kept while in budget)."""
        key = (g.file, g.index)
        memory = self._memory
        if memory is not None and key in memory:
            return memory[key]
        feats = _featurise(
            self._read([g], 0, -1, files, shuffle=False),
            self.spec,
            self.match_features,
            self.histories,
        )
        if memory is not None:
            size = feats.nbytes()
            if self.memory_bytes + size > self._budget:
                log.info(
                    "%s: featurised split passed train.in_memory_mb %.0f MiB: streaming",
                    self.dir, self._budget / 2**20,
                )  # fmt: skip
                self._memory, self.memory_bytes = None, 0
            else:
                memory[key] = feats
                self.memory_bytes += size
        return feats

    def _memory_batches(self, epoch: int, skip_rows: int) -> Iterator[Batch]:
        """The epoch's batches re-ordered from featurised row groups (see ``keep_in_memory``)."""
        files: dict[int, pq.ParquetFile] = {}

        def load(buf: list[_RowGroup], bi: int) -> _Features:
            feats = _Features.concat([self._group_features(g, files) for g in buf])
            if self.shuffle and feats.num_rows > 1:
                rng = np.random.default_rng([self.seed, epoch, 1 + bi])
                feats = feats.take(rng.permutation(feats.num_rows))
            return feats

        for pieces in self._cut(epoch, skip_rows, load):
            feats = _Features.concat(pieces)
            yield feats.rows(0, feats.num_rows)

    def _batches(self, epoch: int, skip_rows: int) -> Iterator[Batch]:
        """Featurise ``FEATURISE_BATCHES`` batches' rows at a time, then cut them apart (or
        re-order the featurised split kept in memory)."""
        if self._memory is not None:
            yield from self._memory_batches(epoch, skip_rows)
            return
        chunk: list[pa.Table] = []

        def flush() -> Iterator[Batch]:
            feats = _featurise(
                pa.concat_tables(chunk), self.spec, self.match_features, self.histories
            )
            start = 0
            for t in chunk:
                yield feats.rows(start, start + t.num_rows)
                start += t.num_rows
            chunk.clear()

        for t in self._tables(epoch, skip_rows):
            chunk.append(t)
            if len(chunk) == FEATURISE_BATCHES:
                yield from flush()
        if chunk:
            yield from flush()

    def __iter__(self) -> Iterator[Batch]:
        """This rank's batches of the current epoch; a pending skip is consumed. With
        ``prefetch`` the background thread starts preparing them at once (``close()`` the
        iterator to stop it early)."""
        skip_rows, self._skip_rows = self._skip_rows, 0
        gen = self._batches(self.epoch, skip_rows)
        if self.prefetch <= 0:
            return gen
        return _Prefetched(gen, self.prefetch)


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Prefetched:
    """``gen`` run in a daemon thread, ``depth`` items ahead, started at once (so a caller can
    have batches prepared while it does something else); errors re-raise in the consumer.
    ``close()`` (also on garbage collection) stops and joins the thread."""

    def __init__(self, gen: Iterator[Batch], depth: int) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._work, args=(gen,), name="ExampleBatcher-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, gen: Iterator[Batch]) -> None:
        try:
            for item in gen:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))

    def __iter__(self) -> _Prefetched:
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


def read_split(
    examples_dir: str | Path, split: str, columns: Sequence[str] | None = None
) -> pa.Table:
    """Read a whole split (small splits only: evaluation, tests)."""
    d = Path(examples_dir) / f"split={split}"
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise BatcherError(f"{d}: no *.parquet files")
    return pa.concat_tables(
        [pq.read_table(f, columns=list(columns) if columns else None) for f in files],
        promote_options="default",
    )
