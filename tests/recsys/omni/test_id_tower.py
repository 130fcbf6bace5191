from __future__ import annotations

import numpy as np

from recsys.omni.id_tower import id_item_vectors, id_user_queries, train_id_tower
from recsys.omni.next_item import NextItemCases, recall_at_k, target_ranks


def test_id_tower_learns_which_item_follows_which() -> None:
    # 40 users each consume item k then item k+20 (k = user % 20)
    users = np.array([f"u{i}" for i in range(40)] * 3, dtype=object)
    first = np.arange(120) % 20
    cases = NextItemCases(users, np.stack([first, -np.ones(120, int)], 1), first + 20)
    item_ids = np.array([f"i{i}" for i in range(40)], dtype=object)
    model = train_id_tower(cases, item_ids, epochs=60, batch_size=40)
    vectors = id_item_vectors(model, item_ids)
    assert vectors.shape == (40, 32)
    ranks = target_ranks(id_user_queries(model, cases, item_ids), vectors, cases.target)
    assert recall_at_k(ranks, np.zeros(120, bool), ks=(3,))["warm"]["recall@3"] > 0.8
