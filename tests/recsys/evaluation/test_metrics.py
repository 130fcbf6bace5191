"""Streaming metrics against hand-computed cases and scikit-learn as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.evaluation.metrics import BinaryMetrics, RetrievalRecall, recall_at_k


def test_auc_of_a_hand_computed_case_is_exact() -> None:
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    acc = BinaryMetrics()
    acc.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    out = acc.compute()
    assert out["valid_auc"] == 0.75 and out["valid_auc_max_error"] == 0.0
    assert out["valid_rows"] == 4.0


def test_tied_scores_count_one_half() -> None:
    acc = BinaryMetrics()
    acc.update(torch.full((6,), 0.3), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]))
    assert acc.compute()["valid_auc"] == 0.5


def test_streamed_auc_and_logloss_match_sklearn_over_all_rows() -> None:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=5000) < 0.3).astype(np.float32)
    p = 1 / (1 + np.exp(-(rng.normal(size=5000) + 1.5 * y)))
    acc = BinaryMetrics()
    for chunk in np.array_split(np.arange(5000), 7):  # batches of uneven size
        acc.update(torch.from_numpy(p[chunk]), torch.from_numpy(y[chunk]))
    out = acc.compute()
    exact = roc_auc_score(y, p)
    assert out["valid_auc_max_error"] < 1e-3
    assert abs(out["valid_auc"] - exact) <= out["valid_auc_max_error"]
    assert out["valid_logloss"] == pytest.approx(log_loss(y, p), rel=1e-9)


def test_lt7_rmse_ignores_rows_without_lt7() -> None:
    acc = BinaryMetrics()
    acc.update(
        torch.tensor([0.2, 0.7, 0.5]),
        torch.tensor([0.0, 1.0, 1.0]),
        torch.tensor([1.0, 4.0, float("nan")]),
    )
    assert acc.compute()["valid_lt7_rmse"] == pytest.approx(math.sqrt(5 / 2))


def test_one_class_gives_nan_auc() -> None:
    acc = BinaryMetrics()
    acc.update(torch.tensor([0.2, 0.7]), torch.tensor([1.0, 1.0]))
    assert math.isnan(acc.compute()["valid_auc"])


CORPUS = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], dtype=np.float32)
CORPUS_IDS = np.array([10, 20, 30])
QUERIES = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
TRUE_IDS = np.array([20, 20])  # ranks: 2 items above (10 and 30), then none above


@pytest.mark.parametrize(("k", "hits"), [(1, 1), (2, 1), (3, 2)])
@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_recall_at_k_of_a_hand_computed_case_in_any_chunking(k: int, hits: int, chunk: int) -> None:
    got = recall_at_k(QUERIES, TRUE_IDS, CORPUS, CORPUS_IDS, k, chunk_rows=chunk, chunk_items=chunk)
    assert got == hits


def test_retrieval_recall_builds_the_corpus_from_the_items_it_saw() -> None:
    acc = RetrievalRecall(k=1, dim=2)
    # batch 1 sees items 10 and 20 (20 twice); batch 2 sees 30
    acc.update(QUERIES[:1], TRUE_IDS[:1], CORPUS[[0, 1, 1]], np.array([10, 20, 20]))
    acc.update(QUERIES[1:], TRUE_IDS[1:], CORPUS[[2]], np.array([30]))
    assert acc.compute() == {"valid_recall@1": 0.5, "valid_pairs": 2.0}


def test_a_true_item_outside_the_corpus_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"\[99\]"):
        recall_at_k(QUERIES[:1], np.array([99]), CORPUS, CORPUS_IDS, 1)
