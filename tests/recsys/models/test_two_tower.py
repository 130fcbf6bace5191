from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from recsys.bundle import Embedder
from recsys.config import EmbeddingConfig, ModelConfig
from recsys.features.batcher import ExampleBatcher
from recsys.features.sparse_rule import FeatureRuleError
from recsys.features.spec import FeatureSpec
from recsys.models.two_tower import ItemFrequency, TwoTower, TwoTowerOutput


def _spec(examples_dir: Path) -> FeatureSpec:
    return FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))


def _model(examples_dir: Path, **model: object) -> TwoTower:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="two_tower", mlp=[32], tower_dim=12, **model)
    return TwoTower.from_config(cfg, EmbeddingConfig(dim=8), _spec(examples_dir))


def test_in_batch_loss_with_log_q_is_finite_and_decreases(examples_dir: Path) -> None:
    model = _model(examples_dir)
    batch = next(iter(ExampleBatcher(examples_dir, "train", _spec(examples_dir), 256, prefetch=0)))
    positives = batch.labels > 0.5
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(batch.sparse, positives)
        loss = model.in_batch_loss(out, positives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    assert float(model.item_frequency.total) == 12 * int(positives.sum())


def test_log_q_is_higher_for_items_seen_more_often() -> None:
    freq = ItemFrequency(buckets=64)
    freq.update(torch.tensor([5, 5, 5, 7]))
    lq = freq.log_prob(torch.tensor([5, 7, 9]))
    assert lq[0] > lq[1] > lq[2]


def test_another_row_with_the_same_item_is_not_a_negative(examples_dir: Path) -> None:
    model = _model(examples_dir, logq=False)
    user = torch.nn.functional.normalize(torch.randn(3, 12), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(3, 12), dim=-1)
    ids = torch.tensor([4, 4, 9])
    out = TwoTowerOutput(user, item, torch.zeros(3), ids)
    positives = torch.tensor([True, True, False])
    # rows 0 and 1 share item 4: each has only itself left in its softmax, so the loss is 0
    assert model.in_batch_loss(out, positives).item() == 0.0
    distinct = TwoTowerOutput(user, item, torch.zeros(3), torch.tensor([4, 5, 9]))
    assert model.in_batch_loss(distinct, positives).item() > 0.0


def test_embed_returns_unit_vectors_of_tower_dim_for_raw_rows(examples_dir: Path) -> None:
    model = _model(examples_dir).eval()
    assert isinstance(model, Embedder)
    frame = pq.read_table(examples_dir / "split=valid").to_pandas().head(10)
    items = model.embed("item", frame[["s_item", "s_item_creator", "s_item_concepts"]])
    users = model.embed("user", frame[["s_user", "s_user_country", "s_user_concepts", "history"]])
    for vecs in (items, users):
        assert vecs.shape == (10, 12) and vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    empty = model.embed(
        "item",
        pd.DataFrame(
            {"s_item": [[], None], "s_item_creator": [[], None], "s_item_concepts": [None, []]}
        ),
    )
    assert empty.shape == (2, 12)
    with pytest.raises(FeatureRuleError, match="s_user_country"):
        model.embed("user", frame[["s_user"]])
