from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys.contract import TS_TYPE
from recsys.omni.next_item import next_item_data, recall_at_k, target_ranks


def _events(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*rows, strict=True)
    return pa.table({"user_id": list(users), "item_id": list(items),
                     "ts": pa.array(list(ts), TS_TYPE)})  # fmt: skip


def test_cases_split_by_time_and_mark_targets_without_training_positives_cold() -> None:
    items = pa.table({"item_id": ["a", "b", "c", "d"]})
    events = _events([
        ("u1", "b", 20), ("u1", "a", 10), ("u1", "c", 30), ("u1", "d", 40),
        ("u2", "a", 15), ("u2", "b", 35), ("u2", "zz", 36),
    ])  # fmt: skip
    positive = np.array([True, True, True, True, True, True, True])
    data = next_item_data(events, items, positive, split_ms=25, history_length=2)
    # train: u1 a(10) b(20), u2 a(15); histories only hold earlier items
    assert data.train.target.tolist() == [0, 1, 0]
    assert data.train.history.tolist() == [[-1, -1], [0, -1], [-1, -1]]
    # test: u1 c(30) after [a, b], d(40) after [b, c]; u2 b(35) after [a]; unknown item dropped
    assert data.test.target.tolist() == [2, 3, 1]
    assert data.test.history.tolist() == [[0, 1], [1, 2], [0, -1]]
    assert data.warm.tolist() == [True, True, False, False]
    assert data.test_cold.tolist() == [True, True, False]


def test_recall_counts_a_target_in_the_top_k_per_group() -> None:
    vectors = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.5, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32)
    ranks = target_ranks(queries, vectors, np.array([1, 3]))
    assert ranks.tolist() == [1, 0]
    out = recall_at_k(ranks, np.array([True, False]), ks=(1, 2))
    assert out["cold"]["recall@1"] == 0.0 and out["cold"]["recall@2"] == 1.0
    assert out["warm"]["recall@1"] == 1.0 and out["all"]["cases"] == 2
