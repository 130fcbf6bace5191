"""The index stage: a bundle's item vectors indexed into ``<bundle>/index``, verified on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.bundle import INDEX_DIR, BundleError, export_bundle, load_bundle, newest_version
from recsys.config import PipelineConfig, parse_config
from recsys.retrieval.build import build_index, open_bundle_index
from tests.recsys.id_embedding import KIND, IdEmbedding, register
from tests.recsys.retrieval.conftest import FAST

KWARGS = {"num_buckets": 997, "dim": 8, "salt": 3}
ITEMS = [f"item-{i}" for i in range(300)]


@pytest.fixture(autouse=True)
def _id_embedding_kind() -> None:
    register()


@pytest.fixture
def cfg(tmp_path: Path) -> PipelineConfig:
    cfg = parse_config(
        {"name": "t", "output_dir": str(tmp_path / "run"), "source": {"kind": "simulator"}}
    )
    (cfg.out / "raw").mkdir(parents=True)
    pd.DataFrame({"item_id": ITEMS, "title": ["t"] * len(ITEMS)}).to_parquet(
        cfg.out / "raw" / "items.parquet"
    )
    return cfg


def _export(cfg: PipelineConfig, seed: int, version: str) -> tuple[Path, IdEmbedding]:
    torch.manual_seed(seed)
    model = IdEmbedding(**KWARGS)
    return export_bundle(cfg.out / "bundles", model, KIND, KWARGS, version=version), model


def test_build_index_indexes_the_items_of_the_newest_bundle(cfg: PipelineConfig):
    _export(cfg, 1, "v1")
    newest, model = _export(cfg, 2, "v2")
    assert newest_version(cfg.out / "bundles") == newest
    path = build_index(cfg, tier_one=FAST)
    assert path == newest / INDEX_DIR
    bundle = load_bundle(newest)  # verifies index/ like the rest of the bundle
    index = open_bundle_index(bundle)
    vectors = model.embed("item", pd.DataFrame({"item_id": ITEMS}))
    np.testing.assert_array_equal(index.dense.rows(np.arange(300)), vectors)
    hits = index.search(vectors[:5], k=1, shortlist=300)
    exact = [ITEMS[int(np.argmax(vectors @ v))] for v in vectors[:5]]
    assert [h.ids[0] for h in hits] == exact
    assert not (newest.parent / "v1" / INDEX_DIR).exists()


def test_bundle_json_is_untouched_and_index_json_lists_every_index_file(cfg: PipelineConfig):
    path, _ = _export(cfg, 1, "v1")
    before = (path / "bundle.json").read_bytes()
    build_index(cfg, path, tier_one=FAST)
    assert (path / "bundle.json").read_bytes() == before
    manifest = json.loads((path / INDEX_DIR / "index.json").read_text())
    on_disk = sorted(p.name for p in (path / INDEX_DIR).iterdir() if p.name != "index.json")
    assert sorted(manifest["files"]) == on_disk and manifest["count"] == 300
    assert [p.name for p in (cfg.out / "bundles").iterdir()] == ["v1"]  # no temporary left


def test_a_second_build_is_refused_unless_replace_then_swaps_the_index(cfg: PipelineConfig):
    path, _ = _export(cfg, 1, "v1")
    build_index(cfg, path, tier_one=FAST)
    before = (path / INDEX_DIR / "index.json").read_text()
    with pytest.raises(BundleError, match=rf"{path / INDEX_DIR}: the bundle already has an index"):
        build_index(cfg, path, tier_one=FAST)
    build_index(cfg, path, tier_one=FAST, shortlist=77, replace=True)
    after = json.loads((path / INDEX_DIR / "index.json").read_text())
    assert after["default_shortlist"] == 77 and before != json.dumps(after)
    load_bundle(path)
    assert [p.name for p in (cfg.out / "bundles").iterdir()] == ["v1"]


def test_a_bundle_without_an_index_says_so(cfg: PipelineConfig):
    path, _ = _export(cfg, 1, "v1")
    with pytest.raises(BundleError, match=r"no index \(run `recsys index` first\)"):
        open_bundle_index(load_bundle(path))


def test_no_bundle_to_index_is_an_error_naming_the_directory(cfg: PipelineConfig):
    with pytest.raises(BundleError, match=rf"{cfg.out / 'bundles'}: no bundle versions"):
        build_index(cfg)
