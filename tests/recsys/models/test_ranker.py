from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from recsys.config import EmbeddingConfig, ModelConfig
from recsys.features.batcher import Batch, ExampleBatcher
from recsys.features.spec import FeatureSpec
from recsys.models.ranker import Ranker


def _spec(examples_dir: Path) -> FeatureSpec:
    return FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))


def _batch(examples_dir: Path, n: int = 64) -> Batch:
    spec = _spec(examples_dir)
    return next(iter(ExampleBatcher(examples_dir, "train", spec, n, prefetch=0)))


def _ranker(examples_dir: Path, **model: object) -> Ranker:
    torch.manual_seed(0)
    cfg = ModelConfig(mlp=[32, 16], cross_layers=2, **model)
    return Ranker.from_config(cfg, EmbeddingConfig(dim=8), _spec(examples_dir))


def test_ranker_gives_one_logit_per_row_and_lt7_between_1_and_7(examples_dir: Path) -> None:
    ranker = _ranker(examples_dir, lt_head=True)
    batch = _batch(examples_dir, 48)
    out = ranker(batch.sparse, batch.dense)
    assert out.logits.shape == (48,)
    assert out.lt7 is not None and out.lt7.shape == (48,)
    assert bool(((out.lt7 >= 1) & (out.lt7 <= 7)).all())
    spec = _spec(examples_dir)
    assert ranker.in_features == 8 * len(spec.sparse) + 8  # embeddings + dense projection


def test_ranker_uses_a_low_rank_cross_net_only_when_a_rank_is_given(examples_dir: Path) -> None:
    assert isinstance(_ranker(examples_dir).cross, CrossNet)
    low = _ranker(examples_dir, cross_low_rank=4)
    assert isinstance(low.cross, LowRankCrossNet)
    batch = _batch(examples_dir, 8)
    assert low(batch.sparse, batch.dense).logits.shape == (8,)


def test_match_features_are_appended_and_required(examples_dir: Path) -> None:
    ranker = _ranker(examples_dir, num_match=3)
    batch = _batch(examples_dir, 16)
    assert ranker(batch.sparse, batch.dense, torch.rand(16, 3)).logits.shape == (16,)
    with pytest.raises(ValueError, match=r"match must be \(B, 3\)"):
        ranker(batch.sparse, batch.dense)


def test_a_few_optimizer_steps_reduce_the_ranker_loss_on_a_fixed_batch(examples_dir: Path) -> None:
    ranker = _ranker(examples_dir)
    batch = _batch(examples_dir, 128)
    opt = torch.optim.Adam(ranker.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.binary_cross_entropy_with_logits(
            ranker(batch.sparse, batch.dense).logits, batch.labels
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
