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
Dense columns are standardised with the manifest's ``dense_stats`` (``FeatureSpec.dense_scale``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.features.hashing import hash_values, to_int64
from recsys.features.spec import FeatureSpec

LABEL = "label"
LT7 = "lt7"
USER_ID = "user_id"
ITEM_ID = "item_id"
# Batches featurised together (see _Features); bounded so a chunk stays small in memory.
FEATURISE_BATCHES = 8


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
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    lt7: torch.Tensor | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

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


@dataclass
class _Features:
    """Featurised rows of one Arrow table, column by column, ready to be cut into batches.

    Featurising several batches' rows at once and slicing afterwards halves the input cost per
    row at batch size 1,024 (fewer pyarrow/numpy calls per row; measured in docs/benchmarks.md).
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

        lt7 = cut(self.lt7)
        return Batch(
            sparse=kjt,
            dense=torch.from_numpy(np.ascontiguousarray(self.dense[a:b])),
            labels=torch.from_numpy(self.labels[a:b].copy()),
            lt7=None if lt7 is None else torch.from_numpy(lt7.copy()),
            user_ids=cut(self.user_ids),
            item_ids=cut(self.item_ids),
        )


def _featurise(table: pa.Table, spec: FeatureSpec) -> _Features:
    missing = [c for c in (*spec.sparse, *spec.dense) if c not in table.column_names]
    if missing:
        raise BatcherError(f"table has no feature column(s) {missing}")
    b = table.num_rows
    lengths, offsets, values = [], [], []
    for name in spec.sparse:
        ln, v = sparse_hashes(table.column(name), name)
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
    )


def table_to_batch(table: pa.Table, spec: FeatureSpec) -> Batch:
    """Featurise any Arrow table holding ``spec``'s columns (training, serving, batch jobs).

    A missing ``label`` gives all-zero labels (inference); other missing feature columns are
    errors naming the column.
    """
    return _featurise(table, spec).rows(0, table.num_rows)


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
            missing = [c for c in (*spec.sparse, *spec.dense, LABEL) if c not in names]
            if missing:
                raise BatcherError(f"{f}: missing column(s) {missing}")
            schema_names = names if schema_names is None else schema_names & names
            self._row_groups += [
                _RowGroup(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)
            ]
        self.num_rows = sum(g.num_rows for g in self._row_groups)
        extra = [c for c in (LT7, USER_ID, ITEM_ID) if c in (schema_names or set())]
        self.columns = list(dict.fromkeys([*spec.sparse, *spec.dense, LABEL, *extra]))

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
        self, buf: list[_RowGroup], epoch: int, buf_index: int, files: dict[int, pq.ParquetFile]
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
        if self.shuffle and table.num_rows > 1:
            rng = np.random.default_rng([self.seed, epoch, 1 + buf_index])
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        return table

    def _tables(self, epoch: int, skip_rows: int) -> Iterator[pa.Table]:
        """This rank's batches as Arrow tables, reading only buffers that hold its rows."""
        n_global, bs, ws = self._num_global_batches(skip_rows), self.batch_size, self.world_size
        wanted = range(self.rank, n_global, ws)
        if not wanted:
            return
        pos = 0  # index into wanted
        pieces: list[pa.Table] = []
        files: dict[int, pq.ParquetFile] = {}
        start = 0  # global row of the current buffer
        for bi, buf in enumerate(self._buffers(epoch)):
            stop = start + sum(g.num_rows for g in buf)
            g0 = skip_rows + wanted[pos] * bs
            if g0 >= stop:
                start = stop
                continue
            table = self._read(buf, epoch, bi, files)
            while pos < len(wanted):
                lo = skip_rows + wanted[pos] * bs
                hi = min(lo + bs, self.num_rows)
                if lo >= stop:
                    break
                a, b = max(lo, start), min(hi, stop)
                pieces.append(table.slice(a - start, b - a))
                if hi > stop:
                    break
                yield pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
                pieces = []
                pos += 1
            if pos >= len(wanted):
                return
            start = stop

    def _batches(self, epoch: int, skip_rows: int) -> Iterator[Batch]:
        """Featurise ``FEATURISE_BATCHES`` batches' rows at a time, then cut them apart."""
        chunk: list[pa.Table] = []

        def flush() -> Iterator[Batch]:
            feats = _featurise(pa.concat_tables(chunk), self.spec)
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
        """This rank's batches of the current epoch; a pending skip is consumed."""
        skip_rows, self._skip_rows = self._skip_rows, 0
        gen = self._batches(self.epoch, skip_rows)
        if self.prefetch <= 0:
            return gen
        return _prefetched(gen, self.prefetch)


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(gen: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``gen`` in a daemon thread, ``depth`` items ahead; errors re-raise in the consumer."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in gen:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Failure(e))

    thread = threading.Thread(target=work, name="ExampleBatcher-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)


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
