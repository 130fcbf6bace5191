"""ShardedIndex: shards with shared quantizers search exactly like one index."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval.sharded import ShardedIndex, build_shards
from recsys.retrieval.two_tier import TwoTierIndex
from tests.recsys.retrieval.conftest import FAST


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_give_the_same_hits_as_one_index_over_the_same_items(catalogue, num_shards):
    vectors, ids, queries = catalogue
    (single,) = build_shards(vectors, ids, 1, FAST)
    sharded = ShardedIndex(build_shards(vectors, ids, num_shards, FAST))
    assert sharded.count == 600 and len(sharded.shards) == num_shards
    exclude = [ids[i : i + 30 : 3].tolist() for i in range(len(queries))]
    ks = [1 + i % 17 for i in range(len(queries))]
    for a, b in zip(
        single.search(queries, ks, shortlist=40, exclude=exclude),
        sharded.search(queries, ks, shortlist=40, exclude=exclude),
        strict=True,
    ):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_a_sharded_index_with_an_empty_shard_searches_the_others(catalogue):
    vectors, ids, queries = catalogue
    empty = TwoTierIndex.build(np.zeros((0, 16), np.float32), [])
    (single,) = build_shards(vectors, ids, 1, FAST)
    sharded = ShardedIndex([empty, single, empty])
    for a, b in zip(single.search(queries, 8), sharded.search(queries, 8), strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)


def test_shards_of_different_dimensions_are_refused(catalogue):
    vectors, ids, _ = catalogue
    with pytest.raises(ValueError, match=r"different dimensions \[8, 16\]"):
        ShardedIndex(
            [
                TwoTierIndex.build(vectors, ids, FAST),
                TwoTierIndex.build(vectors[:, :8], ids, FAST),
            ]
        )
