"""Retrieval index faults: killed index builds, damaged index files, an index swapped while
a reader holds the old one.

A killed build is a real process SIGKILLed while it writes; every damaged index must be refused
with a ``BundleError`` naming the file at fault, and the bundle without an index keeps loading.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.bundle import INDEX_DIR, BundleError, _sha256, export_bundle, load_bundle
from recsys.config import PipelineConfig, parse_config
from recsys.retrieval.build import build_index, open_bundle_index
from recsys.retrieval.compact import TierOneConfig
from tests.recsys.id_embedding import KIND, IdEmbedding, register

REPO = Path(__file__).resolve().parents[2]
KWARGS = {"num_buckets": 997, "dim": 8, "salt": 3}
FAST = TierOneConfig(nbits=6, opq_iterations=4, seed=0)

# Starts an index write into a bundle whose writer stalls after writing part of a file.
STALLED_BUILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from recsys.bundle import write_bundle_index
bundle, marker = Path(sys.argv[1]), Path(sys.argv[2])
def stall(tmp):
    (tmp / "vectors.npy").write_bytes(b"partial")
    marker.touch()
    time.sleep(120)
    return {{}}
write_bundle_index(bundle, stall)
"""


@pytest.fixture(autouse=True)
def _id_embedding_kind() -> None:
    register()


@pytest.fixture
def cfg(tmp_path: Path) -> PipelineConfig:
    cfg = parse_config(
        {"name": "t", "output_dir": str(tmp_path / "run"), "source": {"kind": "simulator"}}
    )
    (cfg.out / "raw").mkdir(parents=True)
    items = [f"item-{i}" for i in range(200)]
    pd.DataFrame({"item_id": items}).to_parquet(cfg.out / "raw" / "items.parquet")
    return cfg


@pytest.fixture
def bundle(cfg: PipelineConfig) -> Path:
    torch.manual_seed(0)
    return export_bundle(cfg.out / "bundles", IdEmbedding(**KWARGS), KIND, KWARGS, version="v1")


@pytest.fixture
def indexed(cfg: PipelineConfig, bundle: Path) -> Path:
    build_index(cfg, bundle, tier_one=FAST)
    return bundle


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"builder exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path.name}")
        time.sleep(0.01)


def test_a_build_killed_mid_write_leaves_the_bundle_loadable_and_the_next_build_sweeps_it(
    cfg: PipelineConfig, bundle: Path, tmp_path: Path
):
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_BUILD.format(repo=str(REPO)), str(bundle), str(marker)],
        stderr=subprocess.PIPE,
    )
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    root = bundle.parent
    leftovers = [p.name for p in root.iterdir() if p.name != "v1"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".export-")  # hidden, beside
    assert load_bundle(bundle).index_dir is None  # the version never saw the partial index
    build_index(cfg, bundle, tier_one=FAST)
    assert [p.name for p in root.iterdir()] == ["v1"]  # the dead build's directory is gone
    assert load_bundle(bundle).index_dir == bundle / INDEX_DIR


@pytest.mark.parametrize("name", ["vectors.npy", "codes.faiss", "item_ids.npy"])
def test_an_index_file_altered_after_the_build_makes_the_bundle_refused_naming_it(
    indexed: Path, name: str
):
    file = indexed / INDEX_DIR / name
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{file}: checksum mismatch with index/index.json"):
        load_bundle(indexed)


def test_an_unlisted_file_under_index_makes_the_bundle_refused_naming_it(indexed: Path):
    (indexed / INDEX_DIR / "sneaky.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"not listed in bundle.json or index/index.json: "):
        load_bundle(indexed)


def test_an_index_json_listing_a_file_outside_the_index_is_refused(indexed: Path):
    meta = indexed / INDEX_DIR / "index.json"
    manifest = json.loads(meta.read_text())
    manifest["files"]["../weights.pt"] = _sha256(indexed / "weights.pt")
    meta.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"{meta}: files: '../weights.pt' is not a file"):
        load_bundle(indexed)


def test_an_index_directory_without_index_json_is_refused_naming_it(indexed: Path):
    (indexed / INDEX_DIR / "index.json").unlink()
    with pytest.raises(BundleError, match=rf"{indexed / INDEX_DIR / 'index.json'}: no index"):
        load_bundle(indexed)


def test_an_index_that_is_a_symlink_to_another_directory_is_refused(indexed: Path, tmp_path: Path):
    (indexed / INDEX_DIR).rename(tmp_path / "elsewhere")
    (indexed / INDEX_DIR).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match=r"not listed in bundle.json: index$"):
        load_bundle(indexed)


def test_a_reader_of_the_old_index_keeps_working_while_it_is_replaced(
    cfg: PipelineConfig, indexed: Path
):
    old = open_bundle_index(load_bundle(indexed))
    queries = np.asarray(old.dense.rows(np.arange(5)))
    before = old.search(queries, k=5)
    build_index(cfg, indexed, tier_one=TierOneConfig(nbits=5, seed=3), replace=True)
    after = old.search(queries, k=5)  # its files were unlinked, its mappings stay valid
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
    assert open_bundle_index(load_bundle(indexed)).codes.shape.nbits == 5
