from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import log_loss

from recsys.bundle import load_bundle
from recsys.config import PipelineConfig, parse_config
from recsys.features.batcher import table_to_batch
from recsys.features.spec import FeatureSpec
from recsys.training import checkpoint as ckpt
from recsys.training import export, train
from recsys.training.checkpoint import CheckpointError, load_model_weights, read_state
from recsys.training.model_factory import build_model
from recsys.training.trainer import training_loss


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
    saved, world_size = read_state(tmp_path / "checkpoint")
    assert (saved.epoch, saved.epoch_examples, saved.step, world_size) == (0, 7 * 128, 7, 1)
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


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_checkpoint_that_fails_mid_write_never_replaces_the_good_one(
    examples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(_cfg(max_steps=3), examples_dir, tmp_path)
    good = _files(tmp_path / "checkpoint")

    def half_write(obj: object, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_write)
    with pytest.raises(CheckpointError, match="checkpoint not written.*OSError: disk full"):
        train(_cfg(max_steps=5), examples_dir, tmp_path)
    monkeypatch.undo()
    assert _files(tmp_path / "checkpoint") == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert read_state(tmp_path / "checkpoint")[0].step == 3


def test_resuming_with_another_model_config_seed_or_learning_rate_is_refused_naming_the_keys(
    examples_dir: Path, tmp_path: Path
) -> None:
    train(_cfg(max_steps=2), examples_dir, tmp_path)
    before = _files(tmp_path / "checkpoint")
    other_model = parse_config(
        {**_cfg(max_steps=4).model_dump(mode="json"), "model": {"kind": "ranker", "mlp": [8]}}
    )
    with pytest.raises(CheckpointError, match=r"model\.mlp: \[32, 16\] -> \[8\]"):
        train(other_model, examples_dir, tmp_path)
    with pytest.raises(
        CheckpointError, match=r"train\.lr_dense: 0\.001 -> 0\.01.*train\.seed: 0 -> 1"
    ):
        train(_cfg(max_steps=4, seed=1, lr_dense=0.01), examples_dir, tmp_path)
    assert _files(tmp_path / "checkpoint") == before  # nothing trained, nothing written


def test_resuming_on_other_examples_is_refused(
    examples_dir: Path, examples_writer, tmp_path: Path
) -> None:
    other = tmp_path / "other_examples"
    examples_writer(other, n_rows=2000, seed=1)
    train(_cfg(max_steps=2), examples_dir, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"data\.sha256"):
        train(_cfg(max_steps=4), other, tmp_path / "run")


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint"
    bad.mkdir()
    (bad / "state.json").write_text('{"format": 2, "state": {"epoch"')
    with pytest.raises(CheckpointError, match="checkpoint/state.json: unreadable checkpoint"):
        read_state(bad)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_ends_training_after_patience_epochs_without_improvement(
    examples_dir: Path, tmp_path: Path, patience: int
) -> None:
    # learning rates far below float32 resolution: every update rounds away, the model never
    # changes, so no epoch after the first can have a strictly better validation AUC and
    # training must stop after 1 + patience epochs
    cfg = _cfg(epochs=6, patience=patience, lr_dense=1e-30, lr_embedding=1e-30)
    result = train(cfg, examples_dir, tmp_path, resume=False)
    aucs = [m["valid_auc"] for m in result.metrics]
    assert result.stopped_early
    assert len(aucs) == 1 + patience and result.steps == (1 + patience) * 13
    assert len(set(aucs)) == 1 and result.best_epoch == 0
    assert read_state(tmp_path / "checkpoint")[0].done


def test_training_runs_every_epoch_while_the_metric_keeps_improving(
    examples_dir: Path, tmp_path: Path, ranker_run
) -> None:
    _, result = ranker_run  # patience 2 > epochs without improvement possible in 2 epochs
    assert not result.stopped_early and len(result.metrics) == 2


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
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])  # it learns
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
    batch.lt7[16:] = float("nan")
    with torch.no_grad():
        out = model(batch.sparse, batch.dense)
    labels = batch.labels.numpy()
    bce = log_loss(labels, torch.sigmoid(out.logits).double().numpy(), labels=[0, 1])
    lt_mse = float(np.mean((out.lt7[:16].double() - batch.lt7[:16].double()).numpy() ** 2))
    # reference: scikit-learn's log loss over all 32 rows + the lt7 MSE of the 16 known rows
    loss = training_loss(model, model, batch, cfg)
    assert loss.item() == pytest.approx(bce + cfg.model.lt_weight * lt_mse, rel=1e-5)
    loss.backward()  # the NaN targets must not reach the gradient
    assert torch.isfinite(model.lt_head.weight.grad).all()
    batch.lt7 = None
    assert training_loss(model, model, batch, cfg).item() == pytest.approx(bce, rel=1e-5)


class _Payload:
    """Unpickling this runs ``os.system`` (what a tampered checkpoint could carry)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_tampered_checkpoint_metadata_is_refused_without_running_it(
    tmp_path: Path, ranker_run
) -> None:
    out, _ = ranker_run
    copy = tmp_path / "best"
    shutil.copytree(out / "best", copy)
    marker = tmp_path / "pwned"
    (copy / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="posix.system is not allowed|os.system is not"):
        load_model_weights(copy)
    assert not marker.exists()


class HistoryLength:
    """A tiny match feature: how many items the row's history holds."""

    name = "history_length"

    def score(self, user_ids, histories, item_ids):  # noqa: ANN001, ANN201
        return torch.tensor([float(len(h)) for h in histories])


def _match_cfg(**train_kw: object) -> PipelineConfig:
    cfg = _cfg(**train_kw).model_dump(mode="json")
    cfg["model"]["num_match"] = 1
    return parse_config(cfg)


class Zero:
    """A match feature that scores every pair 0: it can teach the ranker nothing."""

    name = "zero"

    def score(self, user_ids, histories, item_ids):  # noqa: ANN001, ANN201
        return torch.zeros(len(item_ids))


def test_a_ranker_with_a_match_input_trains_on_the_match_feature_scores(
    examples_dir: Path, tmp_path: Path
) -> None:
    cfg = _match_cfg(max_steps=1, weight_decay=0.0)
    torch.manual_seed(cfg.train.seed)  # what train() does before it builds the model
    init = build_model(cfg, _spec(examples_dir), examples_dir)

    def match_weights(feature: object, name: str) -> torch.Tensor:
        result = train(cfg, examples_dir, tmp_path / name, resume=False, match_features=[feature])
        assert result.steps == 1 and math.isfinite(result.losses[0])
        weights = load_model_weights(result.last_checkpoint)
        return weights["cross.kernels.0"][:, -1]  # the match input is the last input column

    before = init.state_dict()["cross.kernels.0"][:, -1]
    # AdamW (no weight decay) leaves a weight with zero gradient exactly as it was: the match
    # column moves only when the batches carried non-zero scores into the ranker
    assert torch.equal(match_weights(Zero(), "zero"), before)
    assert not torch.equal(match_weights(HistoryLength(), "length"), before)


def test_a_ranker_that_wants_match_features_refuses_to_train_without_them(
    examples_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"model\.num_match is 1 but 0 match features"):
        train(_match_cfg(max_steps=1), examples_dir, tmp_path, resume=False)
    spec = _spec(examples_dir)
    model = build_model(_match_cfg(), spec, examples_dir)
    batch = table_to_batch(pq.read_table(examples_dir / "split=valid").slice(0, 8), spec)
    with pytest.raises(ValueError, match=r"model\.num_match = 1"):
        training_loss(model, model, batch, _match_cfg())
