"""TwoTierIndex: tier-1 shortlist, exact re-score, exclusions, k and N per query, edge sizes."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval.compact import TierOneConfig, resolve_shape
from recsys.retrieval.two_tier import TwoTierIndex
from tests.recsys.retrieval.conftest import FAST, brute_force_top, clustered


@pytest.fixture(scope="module")
def index(catalogue) -> TwoTierIndex:
    vectors, ids, _ = catalogue
    return TwoTierIndex.build(vectors, ids, FAST)


def _rows(hits_ids: np.ndarray) -> list[int]:
    return [int(i[1:]) for i in hits_ids]


def test_recall_at_10_against_brute_force_is_high_with_a_tenth_of_the_catalogue(index, catalogue):
    vectors, _, queries = catalogue
    exact = brute_force_top(queries, vectors, 10)
    hits = index.search(queries, k=10, shortlist=60)
    recall = np.mean(
        [len(set(_rows(h.ids)) & set(e)) / 10 for h, e in zip(hits, exact, strict=True)]
    )
    assert recall >= 0.95
    # the shortlist matters: a shortlist of exactly k (codes alone decide) recalls less
    coarse = index.search(queries, k=10, shortlist=10)
    coarse_recall = np.mean(
        [len(set(_rows(h.ids)) & set(e)) / 10 for h, e in zip(coarse, exact, strict=True)]
    )
    assert coarse_recall < recall


def test_a_shortlist_covering_the_catalogue_gives_exactly_the_brute_force_top_k(index, catalogue):
    vectors, _, queries = catalogue
    exact = brute_force_top(queries, vectors, 15)
    for hits, want, q in zip(
        index.search(queries, k=15, shortlist=600), exact, queries, strict=True
    ):
        assert _rows(hits.ids) == want.tolist()
        np.testing.assert_allclose(hits.scores, vectors[want] @ q, rtol=1e-5)


def test_hits_are_ordered_by_exact_inner_product(index, catalogue):
    vectors, _, queries = catalogue
    for hits, q in zip(index.search(queries, k=30, shortlist=80), queries, strict=True):
        exact = vectors[_rows(hits.ids)] @ q
        np.testing.assert_allclose(hits.scores, exact, rtol=1e-5)
        assert np.all(np.diff(hits.scores) <= 0)


def test_excluded_items_are_never_returned(index, catalogue):
    vectors, ids, queries = catalogue
    rng = np.random.default_rng(3)
    best = brute_force_top(queries, vectors, 25)
    exclude = [set(ids[b]) | set(rng.choice(ids, 40, replace=False)) for b in best]
    hits = index.search(queries, k=20, shortlist=50, exclude=exclude)
    for h, ex in zip(hits, exclude, strict=True):
        assert len(h.ids) == 20
        assert not set(h.ids) & ex


def test_excluding_every_item_returns_nothing(index, catalogue):
    _, ids, queries = catalogue
    hits = index.search(queries[:2], k=5, exclude=[ids.tolist(), ids[:10].tolist()])
    assert len(hits[0].ids) == 0 and len(hits[1].ids) == 5


def test_k_larger_than_the_catalogue_returns_each_item_not_excluded_once(index, catalogue):
    _, ids, queries = catalogue
    (hits,) = index.search(queries[:1], k=10_000, shortlist=50, exclude=[ids[:7]])
    assert len(hits.ids) == 593 and len(set(hits.ids)) == 593
    assert not set(hits.ids) & set(ids[:7])


def test_k_and_shortlist_can_differ_per_query(index, catalogue):
    vectors, _, queries = catalogue
    hits = index.search(queries[:3], k=[1, 5, 12], shortlist=[600, 30, 600])
    assert [len(h.ids) for h in hits] == [1, 5, 12]
    exact = brute_force_top(queries[:3], vectors, 12)
    assert _rows(hits[0].ids) == exact[0, :1].tolist()
    assert _rows(hits[2].ids) == exact[2].tolist()


def test_a_single_query_vector_is_a_batch_of_one(index, catalogue):
    _, _, queries = catalogue
    (one,) = index.search(queries[5], k=4)
    np.testing.assert_array_equal(one.ids, index.search(queries[5:6], k=4)[0].ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": np.zeros((2, 15), np.float32), "k": 3}, r"queries: shape \(2, 15\)"),
        ({"queries": np.full((2, 16), np.nan, np.float32), "k": 3}, r"queries\[0\]: not finite"),
        ({"queries": np.zeros((2, 16), np.float32), "k": [3]}, r"k: 1 values for 2 queries"),
        ({"queries": np.zeros((2, 16), np.float32), "k": -1}, r"k\[0\]: -1 < 0"),
        ({"queries": np.zeros((2, 16), np.float32), "k": 3, "exclude": [[]]}, r"exclude: 1"),
    ],
)
def test_bad_requests_are_refused_saying_what_is_wrong(index, kwargs, message):
    with pytest.raises(ValueError, match=message):
        index.search(**kwargs)


def test_an_empty_catalogue_returns_empty_hits():
    empty = TwoTierIndex.build(np.zeros((0, 16), np.float32), [])
    hits = empty.search(np.ones((3, 16), np.float32), k=5, exclude=[["x"], [], []])
    assert [len(h.ids) for h in hits] == [0, 0, 0]


def test_a_catalogue_of_one_item_returns_it():
    one = TwoTierIndex.build(np.ones((1, 16), np.float32), ["only"], FAST)
    (hits,) = one.search(np.ones(16, np.float32), k=3)
    assert hits.ids.tolist() == ["only"] and hits.scores.tolist() == [16.0]


def test_the_same_seed_gives_the_same_codes_and_another_seed_other_codes(catalogue):
    vectors, ids, queries = catalogue
    a = TwoTierIndex.build(vectors, ids, FAST)
    b = TwoTierIndex.build(vectors, ids, FAST)
    c = TwoTierIndex.build(vectors, ids, TierOneConfig(nbits=6, opq_iterations=4, seed=1))
    assert a.codes.to_bytes() == b.codes.to_bytes()
    assert a.codes.to_bytes() != c.codes.to_bytes()
    for x, y in zip(a.search(queries, 10, 40), b.search(queries, 10, 40), strict=True):
        np.testing.assert_array_equal(x.ids, y.ids)


def test_an_inverted_file_scanning_every_list_equals_brute_force(catalogue):
    vectors, ids, queries = catalogue
    # 16 dims leave no room for the 8-byte ids of IVF at 16x: this test is about the search
    layout = TierOneConfig(nbits=6, ivf_lists=8, nprobe=8, min_compression=4)
    ivf = TwoTierIndex.build(vectors, ids, layout)
    assert ivf.codes.shape.ivf_lists == 8
    exact = brute_force_top(queries, vectors, 10)
    for hits, want in zip(ivf.search(queries, k=10, shortlist=600), exact, strict=True):
        assert _rows(hits.ids) == want.tolist()


@pytest.mark.parametrize(("count", "dim"), [(600, 16), (5_000, 32), (1_000_000, 128)])
def test_tier_one_holds_at_most_a_sixteenth_of_the_float32_bytes_per_item(count, dim):
    shape = resolve_shape(TierOneConfig(), count, dim)
    assert shape.item_bytes() * 16 <= dim * 4
    assert shape.code_bytes >= dim // 16  # and still at least one code byte per 16 dims


def test_tier_one_memory_of_a_built_index_is_a_sixteenth_of_the_vectors_plus_codebooks():
    vectors = clustered(4000, 32, seed=4)
    built = TwoTierIndex.build(vectors, np.arange(4000), TierOneConfig(opq_iterations=2))
    codebooks = 256 * 32 * 4 + 32 * 32 * 4  # PQ centroids + OPQ rotation
    assert built.tier_one_bytes() <= built.dense_bytes() / 16 + codebooks + 1024
