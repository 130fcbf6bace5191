"""Progressive optimisation: the dense tier learns to rank the candidates tier 1 returns."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval.progressive import (
    ProgressiveConfig,
    progressive_optimise,
    tier_one_negatives,
)
from recsys.retrieval.two_tier import TwoTierIndex
from tests.recsys.retrieval.conftest import FAST, clustered


def _task(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, users and each user's positive row: among the user's 20 nearest items, the one
    a hidden direction scores highest (the dense vectors alone do not know it)."""
    items = clustered(500, 16, seed=seed)
    users = clustered(600, 16, seed=seed + 100, centres=12)
    hidden = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    near = np.argsort(-(users @ items.T), axis=1)[:, :20]
    positives = near[np.arange(len(users)), np.argmax(items[near] @ hidden, axis=1)]
    return items, users, positives


def _recall_at_1(index: TwoTierIndex, users: np.ndarray, positives: np.ndarray) -> float:
    hits = index.search(users, k=1, shortlist=50)
    return float(np.mean([h.ids[0] == p for h, p in zip(hits, positives, strict=True)]))


def test_negatives_come_from_the_tier_one_shortlist_and_never_the_positive():
    items, users, positives = _task(0)
    index = TwoTierIndex.build(items, np.arange(500), FAST)
    config = ProgressiveConfig(shortlist=30, negatives=8)
    negatives = tier_one_negatives(index, users[:50], positives[:50], config)
    shortlists = index.shortlist(users[:50], [31] * 50, [np.empty(0, np.int64)] * 50)
    for neg, pos, (rows, _) in zip(negatives, positives[:50], shortlists, strict=True):
        assert pos not in neg
        assert set(neg.tolist()) <= set(rows.tolist())


def test_by_default_negatives_come_from_the_shortlist_the_index_serves_with():
    items, users, positives = _task(0)
    index = TwoTierIndex.build(items, np.arange(500), FAST, default_shortlist=40)
    negatives = tier_one_negatives(
        index, users[:50], positives[:50], ProgressiveConfig(negatives=64)
    )
    served = index.shortlist(users[:50], [41] * 50, [np.empty(0, np.int64)] * 50)
    narrower = index.shortlist(users[:50], [11] * 50, [np.empty(0, np.int64)] * 50)
    drawn = set(negatives.ravel().tolist())
    assert drawn <= {r for rows, _ in served for r in rows.tolist()}
    assert drawn - {r for rows, _ in narrower for r in rows.tolist()}  # beyond the first 11


def test_fine_tuning_on_shortlist_negatives_raises_held_out_recall():
    items, users, positives = _task(1)
    index = TwoTierIndex.build(items, np.arange(500), FAST)
    train, test = slice(0, 450), slice(450, 600)
    config = ProgressiveConfig(epochs=8, shortlist=50, negatives=16, lr=0.02, batch_size=64)
    tuned = progressive_optimise(index, users[train], positives[train], config)
    assert tuned.codes is index.codes  # tier 1 is frozen
    before = _recall_at_1(index, users[test], positives[test])
    after = _recall_at_1(tuned, users[test], positives[test])
    assert after > before + 0.2  # measured: 0.007 -> 0.51 (seed 1)


def test_switched_off_returns_the_index_unchanged():
    items, users, positives = _task(2)
    index = TwoTierIndex.build(items, np.arange(500), FAST)
    off = progressive_optimise(index, users, positives, ProgressiveConfig(enabled=False))
    assert off is index


def test_positives_outside_the_catalogue_are_refused():
    items, users, _ = _task(3)
    index = TwoTierIndex.build(items, np.arange(500), FAST)
    with pytest.raises(ValueError, match=r"positives: expected 2 rows in \[0, 500\)"):
        progressive_optimise(index, users[:2], np.array([1, 500]))
