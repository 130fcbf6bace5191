from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.omni.config import OmniConfig
from recsys.omni.fusion import OmniModalEncoder
from recsys.omni.item_media import OmniInputs, item_inputs
from recsys.omni.training import next_item_pairs, train_stage1, train_stage2


def _cross_modal_top1(model: OmniModalEncoder, inputs: OmniInputs, a: str, b: str) -> float:
    """Share of items whose ``a``-only embedding is nearest to their own ``b``-only one."""
    with torch.no_grad():
        tokens = model.tokens(inputs)
        present = model.present(inputs)
        cols = model.modalities
        only = lambda m: present & (torch.arange(len(cols)) == cols.index(m))  # noqa: E731
        va = torch.nn.functional.normalize(model.fuse(tokens, only(a)), dim=-1)
        vb = torch.nn.functional.normalize(model.fuse(tokens, only(b)), dim=-1)
    return float(((va @ vb.T).argmax(1) == torch.arange(len(inputs))).float().mean())


def test_stage1_aligns_the_modalities_of_each_item(items: pa.Table, small_cfg: OmniConfig) -> None:
    cfg = small_cfg.model_copy(update={"stage1_epochs": 15})
    inputs = item_inputs(items, cfg)
    model, losses = train_stage1(cfg, inputs)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    untrained, _ = train_stage1(cfg.model_copy(update={"lr": 1e-9, "stage1_epochs": 1}), inputs)
    for a, b in (("image", "audio"), ("text", "categorical")):
        trained_top1 = _cross_modal_top1(model, inputs, a, b)
        assert trained_top1 > _cross_modal_top1(untrained, inputs, a, b) + 0.1, (a, b)
    assert not model.training


def _partner_is_nearest(vectors: np.ndarray) -> float:
    """Share of items 2k whose nearest other item is 2k+1."""
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    return float((sim[0::2].argmax(1) == np.arange(1, len(vectors), 2)).mean())


def test_next_item_pairs_hold_only_earlier_items_as_history() -> None:
    pairs = next_item_pairs([np.array([5, 6, 7]), np.array([9])], history_length=2)
    assert pairs.target.tolist() == [6, 7]
    assert pairs.history.tolist() == [[5, -1], [5, 6]]


def test_stage2_pulls_co_consumed_items_together(items: pa.Table, small_cfg: OmniConfig) -> None:
    cfg = small_cfg.model_copy(
        update={"stage1_epochs": 2, "stage2_epochs": 40, "lr": 5e-3, "modality_dropout": 0.0,
                "id2item": False, "item2item": False}
    )  # fmt: skip
    inputs = item_inputs(items, cfg)
    stage1, _ = train_stage1(cfg, inputs)
    # users always consume item 2k+1 right after item 2k
    sequences = [np.array([2 * k, 2 * k + 1]) for k in range(20)] * 4
    stage2, losses = train_stage2(stage1, cfg, inputs, next_item_pairs(sequences, 4))
    before, after = stage1.encode(inputs), stage2.encode(inputs)
    assert _partner_is_nearest(after) > _partner_is_nearest(before) + 0.5
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # stage 2 trains a copy: the stage-1 model is unchanged
    np.testing.assert_array_equal(stage1.encode(inputs), before)


def test_stage2_aligns_with_id_vectors_when_id2item_is_on(
    items: pa.Table, small_cfg: OmniConfig
) -> None:
    cfg = small_cfg.model_copy(
        update={"stage1_epochs": 1, "stage2_epochs": 8, "seq2item": False, "item2item": False}
    )
    inputs = item_inputs(items, cfg)
    stage1, _ = train_stage1(cfg, inputs)
    rng = np.random.default_rng(0)
    id_vectors = rng.normal(size=(40, 8)).astype(np.float32)
    has_id = np.ones(40, dtype=bool)
    pairs = next_item_pairs([rng.permutation(40) for _ in range(8)], 4)
    _, losses = train_stage2(stage1, cfg, inputs, pairs, id_vectors, has_id)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_id2item_without_id_vectors_is_refused(items: pa.Table, small_cfg: OmniConfig) -> None:
    inputs = item_inputs(items, small_cfg)
    stage1, _ = train_stage1(small_cfg.model_copy(update={"stage1_epochs": 1}), inputs)
    with pytest.raises(ValueError, match="id2item is on but no id_vectors"):
        train_stage2(stage1, small_cfg, inputs, next_item_pairs([np.arange(5)], 2))
