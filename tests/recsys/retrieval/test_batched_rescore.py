"""Batched search (tier-2 rows gathered per chunk of queries, one product per row count,
padded sorts for shortlist and top k) returns bit for bit what searching each query on its
own, step by step, returns."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval import two_tier
from recsys.retrieval.sharded import ShardedIndex, build_shards
from recsys.retrieval.two_tier import Hits, TwoTierIndex, load_index, write_index
from tests.recsys.retrieval.conftest import FAST, clustered

DIM = 16


def reference_search(
    index: TwoTierIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    ks: list[int],
    sizes: list[int],
    excluded_rows: list[np.ndarray],
) -> list[Hits]:
    """One query at a time, from the definition: tier-1 rows without the excluded ones, first
    ``N`` by approximate score (ties: lower row), exact ``vectors[rows] @ q'``, top ``k``."""
    sizes = [max(n, k) for n, k in zip(sizes, ks, strict=True)]
    fetch = min(max(n + e.size for n, e in zip(sizes, excluded_rows, strict=True)), index.count)
    mapped = queries @ index.query_map if index.query_map is not None else queries
    out = []
    for i, q in enumerate(queries):
        rows, approx = index.codes.shortlist(q[None, :], fetch)
        rows, approx = rows[0], approx[0]
        keep = (rows >= 0) & ~np.isin(rows, excluded_rows[i])
        rows, approx = rows[keep], approx[keep]
        rows = rows[np.lexsort((rows, -approx))[: sizes[i]]]
        exact = np.ascontiguousarray(vectors[rows]) @ mapped[i]
        best = np.lexsort((rows, -exact))[: ks[i]]
        out.append(Hits(index.item_ids[rows[best]], exact[best]))
    return out


def _assert_identical(got: list[Hits], want: list[Hits]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.ids.tolist() == w.ids.tolist(), f"query {i}: ids differ"
        assert g.scores.dtype == np.float32
        # bit for bit, not approximately: the batched product must round like the single one
        assert g.scores.view(np.int32).tolist() == w.scores.view(np.int32).tolist(), i


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    rng = np.random.default_rng(7)
    vectors = clustered(700, DIM, seed=3)
    ids = np.array([f"item{r}" for r in range(700)])
    queries = rng.standard_normal((57, DIM)).astype(np.float32)
    ks = rng.integers(0, 90, size=57).tolist()
    ks[:3] = [0, 700, 1]  # nothing, more than the catalogue, one
    sizes = rng.integers(1, 160, size=57).tolist()
    excluded_rows = [np.sort(rng.choice(700, rng.integers(0, 40), replace=False)) for _ in ks]
    excluded_rows[1] = np.arange(650)  # leaves 50 items for a k of 700
    built = TwoTierIndex.build(vectors, ids, FAST)
    loaded = load_index(write_index(built, tmp_path_factory.mktemp("idx") / "index"))
    return {
        "vectors": vectors,
        "queries": queries,
        "ks": ks,
        "sizes": sizes,
        "excluded_rows": excluded_rows,
        "exclude": [ids[e].tolist() for e in excluded_rows],
        "built": built,
        "loaded": loaded,
    }


def _search(index, w: dict) -> list[Hits]:
    return index.search(w["queries"], k=w["ks"], shortlist=w["sizes"], exclude=w["exclude"])


def _reference(index: TwoTierIndex, w: dict) -> list[Hits]:
    args = (w["queries"], w["ks"], w["sizes"], w["excluded_rows"])
    return reference_search(index, w["vectors"], *args)


@pytest.mark.parametrize("which", ["built", "loaded"])
@pytest.mark.parametrize("chunk_bytes", [1, 3 * 100 * DIM * 4, two_tier.RESCORE_CHUNK_BYTES])
def test_batched_search_equals_the_per_query_reference_bit_for_bit(
    world, which, chunk_bytes, monkeypatch
):
    monkeypatch.setattr(two_tier, "RESCORE_CHUNK_BYTES", chunk_bytes)  # 1: a query per chunk
    if chunk_bytes == 1:
        monkeypatch.setattr(two_tier, "TOP_K_ENTRIES", 1)  # and one query per top-k sort
    index = world[which]
    got = _search(index, world)
    _assert_identical(got, _reference(index, world))
    assert len(got[1].ids) == 50 and len(got[0].ids) == 0  # every item left; none asked for


def test_batched_search_with_a_query_map_equals_the_reference(world):
    built: TwoTierIndex = world["built"]
    rng = np.random.default_rng(1)
    query_map = (np.eye(DIM) + 0.3 * rng.standard_normal((DIM, DIM))).astype(np.float32)
    mapped = TwoTierIndex(built.codes, built.dense, built.item_ids, query_map=query_map)
    _assert_identical(_search(mapped, world), _reference(mapped, world))


def test_a_query_answers_the_same_alone_and_in_a_batch(world):
    index = world["loaded"]
    batch = _search(index, world)
    for i in (2, 10, 33):
        (alone,) = index.search(
            world["queries"][i],
            k=world["ks"][i],
            shortlist=world["sizes"][i],
            exclude=[world["exclude"][i]],
        )
        _assert_identical([alone], [batch[i]])


def test_shards_re_score_through_the_batched_path(world, monkeypatch):
    calls = []
    original = TwoTierIndex._rescore_chunk

    def counting(self, *args):
        calls.append(args[2])
        return original(self, *args)

    monkeypatch.setattr(TwoTierIndex, "_rescore_chunk", counting)
    shards = build_shards(world["vectors"], world["built"].item_ids, 3, FAST)
    hits = _search(ShardedIndex(shards), world)
    assert len(calls) == 3  # one chunk per shard for all 57 queries, not one read per query
    assert all(len(c) == 57 for c in calls)
    exact = world["vectors"] @ world["queries"].T
    for i, h in enumerate(hits):
        rows = [int(x[4:]) for x in h.ids]
        assert not set(rows) & set(world["excluded_rows"][i].tolist())
        np.testing.assert_allclose(h.scores, exact[rows, i], rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(h.scores) <= 0)


def test_query_chunks_keep_each_chunk_within_the_budget():
    lengths = [10, 0, 30, 25, 5, 40, 1]
    chunks = two_tier.query_chunks(lengths, 4, budget=40 * 4 * 4)
    assert [list(c) for c in chunks] == [[0, 1, 2], [3, 4], [5], [6]]
    assert two_tier.query_chunks([100], 4, budget=1) == [range(0, 1)]  # one query always fits
    assert two_tier.query_chunks([], 4, budget=10) == []


@pytest.mark.parametrize("row_base", [0, 1 << 40])  # past 2**32 rows: the two-key sort
def test_padded_sort_orders_like_lexsort_with_ties_signed_zeros_and_nan(row_base):
    rng = np.random.default_rng(5)
    scores = rng.choice(np.float32([-np.inf, -1.5, -0.0, 0.0, 2.0, 3.25, np.nan]), (9, 30))
    rows = row_base + np.stack([rng.permutation(1000)[:30] for _ in range(9)])
    valid = np.arange(30) < rng.integers(0, 31, size=9)[:, None]
    order, kept = two_tier.sort_padded(rows, scores, valid)
    for i in range(9):
        r, s = rows[i][valid[i]], scores[i][valid[i]]
        want = np.flatnonzero(valid[i])[np.lexsort((r, -s))]
        assert order[i, : kept[i]].tolist() == want.tolist(), i
