"""Index directories: memory-mapped tier 2, checksums, and damaged files refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.bundle import _sha256
from recsys.retrieval.dense import DenseVectors, write_dense
from recsys.retrieval.two_tier import (
    CODES,
    ITEM_IDS,
    VECTORS,
    IndexFileError,
    TwoTierIndex,
    load_index,
    write_index,
)
from tests.recsys.retrieval.conftest import FAST


@pytest.fixture
def written(tmp_path: Path, catalogue) -> Path:
    vectors, ids, _ = catalogue
    return write_index(TwoTierIndex.build(vectors, ids, FAST), tmp_path / "index")


def _relist(path: Path, name: str) -> None:
    """Make index.json's checksum of ``name`` match its (altered) bytes again."""
    manifest = json.loads((path / "index.json").read_text())
    manifest["files"][name] = _sha256(path / name)
    (path / "index.json").write_text(json.dumps(manifest))


def test_memmap_rows_read_equal_the_vectors_written(tmp_path: Path, catalogue):
    vectors, _, _ = catalogue
    write_dense(tmp_path / "v.npy", vectors)
    dense = DenseVectors(tmp_path / "v.npy", *vectors.shape)
    assert isinstance(dense._mm, np.memmap)  # mapped, not read whole
    rows = np.array([599, 3, 3, 0, 250, 17])
    np.testing.assert_array_equal(dense.rows(rows), vectors[rows])
    assert dense.rows(np.array([], dtype=np.int64)).shape == (0, 16)


def test_a_written_index_loads_back_with_the_same_hits(written: Path, catalogue):
    vectors, ids, queries = catalogue
    built = TwoTierIndex.build(vectors, ids, FAST)
    loaded = load_index(written)
    assert isinstance(loaded.dense, DenseVectors)
    for a, b in zip(built.search(queries, 10, 50), loaded.search(queries, 10, 50), strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    listed = json.loads((written / "index.json").read_text())["files"]
    assert sorted(listed) == sorted([CODES, VECTORS, ITEM_IDS])


def test_an_empty_catalogue_writes_and_loads(tmp_path: Path):
    path = write_index(TwoTierIndex.build(np.zeros((0, 8), np.float32), []), tmp_path / "e")
    hits = load_index(path).search(np.ones((2, 8), np.float32), k=3)
    assert [len(h.ids) for h in hits] == [0, 0]


@pytest.mark.parametrize("name", [CODES, VECTORS, ITEM_IDS])
def test_a_corrupt_index_file_is_refused_naming_it(written: Path, name: str):
    data = bytearray((written / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (written / name).write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=rf"{written / name}: checksum mismatch"):
        load_index(written)


def test_vectors_of_another_shape_with_a_matching_checksum_are_refused_naming_them(
    written: Path,
):
    np.save(written / VECTORS, np.zeros((599, 16), np.float32))
    _relist(written, VECTORS)
    with pytest.raises(IndexFileError, match=rf"{written / VECTORS}: holds float32 \(599, 16\)"):
        load_index(written)


def test_codes_faiss_cannot_read_are_refused_naming_them(written: Path):
    (written / CODES).write_bytes(b"not a faiss index at all")
    _relist(written, CODES)
    with pytest.raises(IndexFileError, match=rf"{written / CODES}: not a FAISS index"):
        load_index(written)


def test_item_ids_stored_as_pickled_objects_are_refused_naming_them(written: Path):
    np.save(written / ITEM_IDS, np.array([{"x": 1}] * 600, dtype=object), allow_pickle=True)
    _relist(written, ITEM_IDS)
    with pytest.raises(IndexFileError, match=rf"{written / ITEM_IDS}: not a readable .npy"):
        load_index(written)


def test_an_unlisted_file_in_the_index_is_refused_naming_it(written: Path):
    (written / "extra.bin").write_bytes(b"x")
    with pytest.raises(IndexFileError, match=r"not listed in index.json: extra.bin"):
        load_index(written)


def test_a_missing_index_json_is_refused_naming_it(written: Path):
    (written / "index.json").unlink()
    with pytest.raises(IndexFileError, match=rf"{written / 'index.json'}: no index.json"):
        load_index(written)


def test_a_loaded_index_written_again_keeps_its_vectors_and_hits(
    written: Path, tmp_path: Path, catalogue
):
    _, _, queries = catalogue
    loaded = load_index(written)
    again = load_index(write_index(loaded, tmp_path / "copy"))
    assert (tmp_path / "copy" / VECTORS).read_bytes() == (written / VECTORS).read_bytes()
    for a, b in zip(loaded.search(queries, 10), again.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
