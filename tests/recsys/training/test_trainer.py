from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.bundle import load_bundle
from recsys.config import PipelineConfig, parse_config
from recsys.features.batcher import table_to_batch
from recsys.features.spec import FeatureSpec
from recsys.training import checkpoint as ckpt
from recsys.training import export, train
from recsys.training.checkpoint import CheckpointError, load_model_weights, read_checkpoint
from recsys.training.trainer import build_model, training_loss


def _cfg(kind: str = "ranker", **train_kw: object) -> PipelineConfig:
    return parse_config(
        {
            "name": "t",
            "source": {"kind": "simulator"},
            "embedding": {"dim": 8},
            "model": {"kind": kind, "mlp": [32, 16], "cross_layers": 2, "lt_head": True},
            "train": {"batch_size": 128, "epochs": 2, "progress": False, **train_kw},
        }
    )


def _spec(examples_dir: Path) -> FeatureSpec:
    return FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))


@pytest.fixture(scope="module")
def ranker_run(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ranker_run")
    return out, train(_cfg(), examples_dir, out, resume=False)


def test_ranker_training_learns_and_reports_auc_and_logloss_each_epoch(ranker_run) -> None:
    _, result = ranker_run
    assert [m["epoch"] for m in result.metrics] == [0.0, 1.0]
    assert result.steps == len(result.losses) == 2 * 13  # 1600 rows / 128, last batch partial
    for m in result.metrics:
        assert 0.5 < m["valid_auc"] <= 1.0 and m["valid_logloss"] > 0 and m["examples_per_s"] > 0
        assert m["valid_rows"] == 200
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert result.best_epoch in (0, 1) and result.checkpoint.exists()


def test_training_twice_with_the_same_seed_gives_identical_losses(
    examples_dir: Path, tmp_path: Path, ranker_run
) -> None:
    _, first = ranker_run
    again = train(_cfg(), examples_dir, tmp_path, resume=False)
    assert again.losses == first.losses
    assert again.metrics[-1]["valid_auc"] == first.metrics[-1]["valid_auc"]


def test_resuming_a_mid_epoch_checkpoint_reproduces_the_uninterrupted_loss_curve(
    examples_dir: Path, tmp_path: Path, ranker_run
) -> None:
    _, full = ranker_run
    interrupted = train(_cfg(max_steps=7), examples_dir, tmp_path)  # stops inside epoch 0
    assert interrupted.steps == 7 and interrupted.metrics == []
    assert read_checkpoint(tmp_path / "checkpoint.pt")["progress"]["batch"] == 7
    resumed = train(_cfg(), examples_dir, tmp_path, resume=True)
    assert resumed.losses == full.losses
    for a, b in zip(resumed.metrics, full.metrics, strict=True):
        assert {k: v for k, v in a.items() if k != "examples_per_s"} == {
            k: v for k, v in b.items() if k != "examples_per_s"
        }
    final_full = load_model_weights(full.last_checkpoint)
    final_resumed = load_model_weights(resumed.last_checkpoint)
    for k, v in final_full.items():
        assert torch.equal(v, final_resumed[k]), k


def test_a_checkpoint_that_fails_mid_write_never_replaces_the_good_one(
    examples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(_cfg(max_steps=3), examples_dir, tmp_path)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def half_write(obj: object, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        train(_cfg(max_steps=5), examples_dir, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_resuming_with_another_model_config_is_refused(examples_dir: Path, tmp_path: Path) -> None:
    train(_cfg(max_steps=2), examples_dir, tmp_path)
    other = parse_config(
        {**_cfg(max_steps=4).model_dump(mode="json"), "model": {"kind": "ranker", "mlp": [8]}}
    )
    with pytest.raises(CheckpointError, match="different 'kwargs'"):
        train(other, examples_dir, tmp_path)


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="checkpoint.pt: unreadable checkpoint"):
        read_checkpoint(bad)


def test_early_stopping_ends_training_after_patience_epochs_without_improvement(
    examples_dir: Path, tmp_path: Path
) -> None:
    cfg = _cfg(epochs=6, patience=1, lr_dense=0.5, lr_embedding=2.0)  # too hot to keep improving
    result = train(cfg, examples_dir, tmp_path, resume=False)
    aucs = [m["valid_auc"] for m in result.metrics]
    if len(aucs) < 6:
        assert result.stopped_early and aucs[-1] <= max(aucs[:-1])
    assert result.best_epoch == int(np.nanargmax(aucs))


def test_exported_ranker_bundle_predicts_exactly_like_the_checkpoint(
    examples_dir: Path, tmp_path: Path, ranker_run
) -> None:
    out, result = ranker_run
    cfg = _cfg()
    spec = _spec(examples_dir)
    torch.manual_seed(123)
    model = build_model(cfg, spec, examples_dir)
    model.load_state_dict(load_model_weights(result.checkpoint))
    model.eval()
    bundle_dir = export(cfg, out, tmp_path / "bundles", version="v1")
    bundle = load_bundle(bundle_dir)
    assert bundle.meta["model"]["kind"] == "ranker"
    assert bundle.meta["metrics"]["best_epoch"] == result.best_epoch
    assert bundle.meta["features"]["sparse"] == list(spec.sparse)
    assert "embedding" in bundle.meta["features"]["embeddings"]
    batch = table_to_batch(pq.read_table(examples_dir / "split=test"), spec)
    with torch.no_grad():
        expected = model(batch.sparse, batch.dense)
        got = bundle.model(batch.sparse, batch.dense)
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.lt7, got.lt7)


def test_two_tower_trains_reports_recall_and_exports_an_embedder(
    examples_dir: Path, tmp_path: Path
) -> None:
    cfg = _cfg("two_tower", epochs=2)
    result = train(cfg, examples_dir, tmp_path / "run", resume=False)
    k = cfg.train.recall_k
    assert result.metric_name == f"valid_recall@{k}"
    assert all(0.0 <= m[f"valid_recall@{k}"] <= 1.0 for m in result.metrics)
    assert all(math.isfinite(x) for x in result.losses)
    bundle = load_bundle(export(cfg, tmp_path / "run", tmp_path / "bundles", version="v1"))
    frame = pq.read_table(examples_dir / "split=test").to_pandas().head(7)
    spec = _spec(examples_dir)
    torch.manual_seed(5)
    model = build_model(cfg, spec).eval()
    model.load_state_dict(load_model_weights(result.checkpoint))
    for kind in ("user", "item"):
        vecs = bundle.embed(kind, frame)
        assert vecs.shape == (7, cfg.model.tower_dim)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(vecs, model.embed(kind, frame))


def test_rows_without_lt7_add_nothing_to_the_lt7_loss(examples_dir: Path) -> None:
    cfg = _cfg()
    spec = _spec(examples_dir)
    torch.manual_seed(0)
    model = build_model(cfg, spec)
    batch = table_to_batch(pq.read_table(examples_dir / "split=valid").slice(0, 32), spec)
    full = training_loss(model, model, batch, cfg)
    batch.lt7[16:] = float("nan")
    half = training_loss(model, model, batch, cfg)
    half.backward()
    assert torch.isfinite(half) and torch.isfinite(model.lt_head.weight.grad).all()
    batch.lt7 = None
    assert torch.isfinite(training_loss(model, model, batch, cfg))
    assert half.item() != full.item()
