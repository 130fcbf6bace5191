"""recsys.bundle: versions are unique and immutable; a bundle round-trips its model exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import recsys.bundle as bundle_module
from recsys.bundle import META, WEIGHTS, BundleError, export_bundle, load_bundle
from tests.recsys.id_embedding import KIND, IdEmbedding, register

KWARGS = {"num_buckets": 31, "dim": 4, "salt": 5}


@pytest.fixture(autouse=True)
def _id_embedding_kind() -> None:
    register()


def _model(seed: int) -> IdEmbedding:
    torch.manual_seed(seed)
    return IdEmbedding(**KWARGS)


def _versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_a_bundle_loads_back_to_the_same_weights_and_embeddings(tmp_path: Path):
    model = _model(1)
    path = export_bundle(tmp_path, model, KIND, KWARGS, metrics={"auc": 0.5})
    loaded = load_bundle(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    frame = pd.DataFrame({"item_id": ["a", "b", "c"]})
    np.testing.assert_array_equal(loaded.embed("item", frame), model.embed("item", frame))
    assert loaded.version == path.name and loaded.meta["metrics"] == {"auc": 0.5}
    assert not loaded.model.training


def test_bundle_json_lists_every_file_with_its_checksum(tmp_path: Path):
    def write_vocab(p: Path) -> None:
        p.write_text("a\nb\n")

    path = export_bundle(
        tmp_path, _model(1), KIND, KWARGS, extra_files={"vocab/items.txt": write_vocab}
    )
    files = json.loads((path / META).read_text())["files"]
    assert sorted(files) == sorted([WEIGHTS, "vocab/items.txt"])
    assert files["vocab/items.txt"] == bundle_module._sha256(path / "vocab/items.txt")
    load_bundle(path)


def test_two_exports_in_the_same_second_get_different_versions(tmp_path: Path, monkeypatch):
    frozen = time.gmtime(1_700_000_000)
    monkeypatch.setattr(bundle_module, "_utc_now", lambda: frozen)
    a = export_bundle(tmp_path, _model(1), KIND, KWARGS)
    b = export_bundle(tmp_path, _model(2), KIND, KWARGS)
    assert a != b and a.name.startswith("20231114T221320Z-") and b.name.startswith("20231114T")
    assert not torch.equal(
        load_bundle(a).model.state_dict()["tables.item.weight"],
        load_bundle(b).model.state_dict()["tables.item.weight"],
    )


def test_identical_content_in_the_same_second_gets_a_suffix_not_the_old_directory(
    tmp_path: Path, monkeypatch
):
    frozen = time.gmtime(1_700_000_000)
    monkeypatch.setattr(bundle_module, "_utc_now", lambda: frozen)
    first = export_bundle(tmp_path, _model(1), KIND, KWARGS)
    first_meta = (first / META).read_bytes()
    second = export_bundle(tmp_path, _model(1), KIND, KWARGS)
    assert second.name == f"{first.name}-1"
    assert (first / META).read_bytes() == first_meta  # the first version was not touched
    assert load_bundle(second).version == second.name


def test_an_explicit_version_that_exists_is_refused_and_left_unchanged(tmp_path: Path):
    path = export_bundle(tmp_path, _model(1), KIND, KWARGS, version="v1")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(BundleError, match=rf"{path}: version already exists"):
        export_bundle(tmp_path, _model(2), KIND, KWARGS, version="v1")
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _versions(tmp_path) == ["v1"]  # and no temporary directory is left behind
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("bad", ["", "../v1", ".hidden", "a/b", "-v"])
def test_a_version_name_that_is_not_a_plain_name_is_refused(tmp_path: Path, bad: str):
    with pytest.raises(BundleError, match="version"):
        export_bundle(tmp_path / "b", _model(1), KIND, KWARGS, version=bad)
    assert not (tmp_path / "b").exists()


def test_a_failing_extra_file_writer_leaves_no_version_and_no_temporary(tmp_path: Path):
    def broken(p: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_bundle(tmp_path, _model(1), KIND, KWARGS, extra_files={"index.bin": broken})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [WEIGHTS, META, "../outside.bin", "/tmp/abs.bin"])
def test_an_extra_file_may_not_replace_weights_meta_or_escape(tmp_path: Path, name: str):
    with pytest.raises(BundleError, match="reserved or not a plain relative name"):
        export_bundle(tmp_path, _model(1), KIND, KWARGS, extra_files={name: lambda p: None})
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kind_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(BundleError, match="unknown model kind 'nope'"):
        export_bundle(tmp_path / "b", _model(1), "nope", KWARGS)
    assert not (tmp_path / "b").exists()


def test_the_library_registers_only_production_kinds():
    code = "import recsys.bundle as b; print(sorted(b._FACTORIES), hasattr(b, 'IdEmbedding'))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split("\n")[0] == "['omni', 'ranker', 'sesa', 'two_tower'] False"


@pytest.mark.parametrize("name", ["index", "index/codes.faiss"])
def test_extra_files_may_not_use_the_index_directory(tmp_path: Path, name: str):
    with pytest.raises(BundleError, match="reserved or not a plain relative name"):
        export_bundle(tmp_path, _model(1), KIND, KWARGS, extra_files={name: lambda p: None})
    assert list(tmp_path.iterdir()) == []


def test_an_index_added_after_export_is_verified_by_its_own_list(tmp_path: Path):
    path = export_bundle(tmp_path, _model(1), KIND, KWARGS, version="v1")

    def write(tmp: Path) -> dict:
        (tmp / "a.bin").write_bytes(b"abc")
        return {"kind": "test"}

    index = bundle_module.write_bundle_index(path, write)
    manifest = json.loads((index / bundle_module.INDEX_META).read_text())
    assert manifest["files"] == {"a.bin": bundle_module._sha256(index / "a.bin")}
    assert load_bundle(path).index_dir == index
    (index / "a.bin").write_bytes(b"abd")
    with pytest.raises(BundleError, match=rf"{index / 'a.bin'}: checksum mismatch"):
        load_bundle(path)


def test_bundle_json_may_not_list_files_under_index(tmp_path: Path):
    path = export_bundle(tmp_path, _model(1), KIND, KWARGS, version="v1")
    meta = json.loads((path / META).read_text())
    meta["files"]["index/x.bin"] = "0" * 64
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"files: 'index/x.bin' is not a file of the bundle"):
        load_bundle(path)
