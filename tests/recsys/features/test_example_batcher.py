import logging
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.features.batcher import BatcherError, ExampleBatcher, read_split, table_to_batch
from recsys.features.hashing import hash_values, to_int64
from recsys.features.sparse_rule import example_column
from recsys.features.spec import FeatureSpec
from recsys.features.vocabulary import build_vocabulary


@pytest.fixture(scope="module")
def spec(examples_dir):
    import json

    return FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))


def _user_ts(batches):
    return [u for b in batches for u in b.user_ids]


def _keys(batch):
    # (user, item, history) identifies a row of the fixture well enough to compare orders.
    kjt = batch.sparse.to_dict()
    return [
        tuple(x)
        for x in zip(
            batch.user_ids,
            batch.item_ids,
            kjt["s_history"].lengths().tolist(),
            batch.dense[:, 1].tolist(),
            strict=True,
        )
    ]


def test_batches_hold_the_raw_lists_hashed_with_salt_zero(examples_dir, spec):
    table = read_split(examples_dir, "train")
    batches = list(ExampleBatcher(examples_dir, "train", spec, 100, prefetch=0))
    assert sum(len(b) for b in batches) == table.num_rows == 1600
    start = 0
    for b in batches:
        rows = table.slice(start, len(b))
        kjt = b.sparse.to_dict()
        for col in spec.sparse:
            lists = rows.column(example_column(col)).to_pylist()
            assert kjt[col].lengths().tolist() == [len(x) for x in lists]
            flat = [v for x in lists for v in x]
            expected = to_int64(hash_values(flat, 0)) if flat else np.zeros(0, np.int64)
            np.testing.assert_array_equal(kjt[col].values().numpy(), expected)
        np.testing.assert_array_equal(b.labels.numpy(), rows.column("label").to_numpy())
        np.testing.assert_allclose(
            b.dense[:, 0].numpy(), rows.column("d_item_popularity").to_numpy()
        )
        assert b.lt7 is not None and b.sparse.keys() == list(spec.sparse)
        start += len(b)


def test_table_to_batch_featurises_like_the_batcher(examples_dir, spec):
    first = next(iter(ExampleBatcher(examples_dir, "valid", spec, 50, prefetch=0)))
    again = table_to_batch(read_split(examples_dir, "valid").slice(0, 50), spec)
    assert first.sparse.values().equal(again.sparse.values())
    assert first.sparse.lengths().equal(again.sparse.lengths())


def test_shuffle_is_a_function_of_seed_and_epoch(examples_dir, spec):
    def order(seed, epoch):
        b = ExampleBatcher(
            examples_dir, "train", spec, 64, shuffle=True, seed=seed, shuffle_row_groups=3
        )
        b.set_epoch(epoch)
        return [k for batch in b for k in _keys(batch)]

    plain = [k for batch in ExampleBatcher(examples_dir, "train", spec, 64) for k in _keys(batch)]
    a = order(0, 1)
    assert a == order(0, 1)
    assert a != order(0, 2) and a != order(1, 1) and a != plain
    assert sorted(a) == sorted(plain)


def test_skip_batches_resumes_exactly_where_an_interrupted_epoch_stopped(examples_dir, spec):
    b = ExampleBatcher(examples_dir, "train", spec, 96, shuffle=True, seed=3, prefetch=2)
    b.set_epoch(4)
    full = [_keys(x) for x in b]
    b.set_epoch(4)
    b.skip_batches(7)
    resumed = [_keys(x) for x in b]
    assert resumed == full[7:]
    assert [_keys(x) for x in b] == full  # the skip applied to one iteration only


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_together_serve_every_row_once(examples_dir, spec, drop_last):
    def shard(rank, world_size):
        b = ExampleBatcher(
            examples_dir,
            "train",
            spec,
            70,
            shuffle=True,
            seed=5,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        batches = [_keys(x) for x in b]
        assert len(batches) == b.num_batches()
        return batches

    single = shard(0, 1)
    shards = [shard(r, 3) for r in range(3)]
    # Global batch g is rank g % 3's batch g // 3: interleaving the shards gives the epoch back.
    interleaved = [shards[g % 3][g // 3] for g in range(sum(len(s) for s in shards))]
    if drop_last:
        assert len({len(s) for s in shards}) == 1
        assert all(len(x) == 70 for s in shards for x in s)
        assert interleaved == single[: len(interleaved)]
        assert len(interleaved) == (1600 // 70) // 3 * 3
    else:
        assert interleaved == single
        assert sum(len(x) for x in interleaved) == 1600


def test_breaking_out_early_stops_the_prefetch_thread(examples_dir, spec):
    before = threading.active_count()
    it = iter(ExampleBatcher(examples_dir, "train", spec, 10, prefetch=2))
    next(it)
    it.close()
    assert threading.active_count() == before


def test_a_missing_split_names_the_directory(examples_dir, spec):
    with pytest.raises(BatcherError, match="split=nope"):
        ExampleBatcher(examples_dir, "nope", spec, 10)


def test_null_lists_and_null_values_become_short_bags():
    spec = FeatureSpec(sparse=("s_x",))
    t = pa.table(
        {
            "s_x": pa.array([["a", None, "b"], None, []], pa.list_(pa.string())),
            "label": pa.array([1, 0, 1], pa.int8()),
        }
    )
    b = table_to_batch(t, spec)
    assert b.sparse.lengths().tolist() == [2, 0, 0]
    np.testing.assert_array_equal(b.sparse.values().numpy(), to_int64(hash_values(["a", "b"])))


def test_vocabulary_holds_every_train_value_once(examples_dir, spec):
    vocab = build_vocabulary(examples_dir, ["s_user", "s_history"])
    table = read_split(examples_dir, "train", ["s_user", "history"])
    for col, stored in (("s_user", "s_user"), ("s_history", "history")):
        values = {v for x in table.column(stored).to_pylist() for v in x}
        expected = np.sort(to_int64(hash_values(sorted(values))))
        np.testing.assert_array_equal(vocab[col], expected)
        assert len(vocab[col]) == spec.cardinality[col]


def test_dense_columns_with_stats_are_standardised_and_nulls_land_on_the_mean():
    spec = FeatureSpec(
        sparse=("s_x",), dense=("d_age", "d_raw"), dense_scale={"d_age": (100.0, 50.0)}
    )
    t = pa.table(
        {
            "s_x": pa.array([["a"], ["b"], ["c"]], pa.list_(pa.string())),
            "d_age": pa.array([0.0, 350.0, None], pa.float32()),
            "d_raw": pa.array([1.5, None, 2.0], pa.float32()),
            "label": pa.array([1, 0, 1], pa.int8()),
        }
    )
    dense = table_to_batch(t, spec).dense.numpy()
    np.testing.assert_allclose(dense[:, 0], [-2.0, 5.0, 0.0])
    np.testing.assert_allclose(dense[:, 1], [1.5, 0.0, 2.0])


class HistoryLength:
    """A tiny match feature: the length of the row's history."""

    name = "history_length"

    def score(self, user_ids, histories, item_ids):  # noqa: ANN001, ANN201
        assert len(user_ids) == len(histories) == len(item_ids)
        return torch.tensor([float(len(h)) for h in histories])


def test_match_features_score_each_row_from_its_history_into_batch_match(examples_dir, spec):
    table = read_split(examples_dir, "train")
    batcher = ExampleBatcher(
        examples_dir, "train", spec, 100, prefetch=2, match_features=[HistoryLength()]
    )
    start = 0
    for b in batcher:
        rows = table.slice(start, len(b))
        lengths = [float(len(h)) for h in rows.column("history").to_pylist()]
        assert b.match is not None and b.match.dtype == torch.float32
        assert b.match.shape == (len(b), 1) and b.match[:, 0].tolist() == lengths
        assert b.histories == rows.column("history").to_pylist()
        start += len(b)
    assert start == 1600 and max(lengths) > 0


def test_without_match_features_batches_carry_neither_scores_nor_histories(examples_dir, spec):
    b = next(iter(ExampleBatcher(examples_dir, "train", spec, 10, prefetch=0)))
    assert b.match is None and b.histories is None


def test_s_history_is_read_from_history_when_examples_do_not_store_it(examples_dir, spec):
    table = read_split(examples_dir, "valid")
    assert "s_history" not in table.column_names
    batch = table_to_batch(table, spec)
    lists = table.column("history").to_pylist()
    assert batch.sparse["s_history"].lengths().tolist() == [len(x) for x in lists]
    flat = [v for x in lists for v in x]
    np.testing.assert_array_equal(
        batch.sparse["s_history"].values().numpy(), to_int64(hash_values(flat, 0))
    )


def _all_batches(batcher):  # noqa: ANN001, ANN202
    out = []
    for b in batcher:
        kjt = b.sparse.to_dict()
        out.append(
            (
                [(k, v.values().tolist(), v.lengths().tolist()) for k, v in kjt.items()],
                b.dense.tolist(),
                b.labels.tolist(),
                list(b.user_ids),
                None if b.match is None else b.match.tolist(),
            )
        )
    return out


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2)])
def test_a_split_kept_in_memory_gives_every_epoch_exactly_the_streamed_batches(
    examples_dir, spec, rank, world_size
):
    def batcher():  # noqa: ANN202
        return ExampleBatcher(
            examples_dir, "train", spec, 96, shuffle=True, seed=3, prefetch=2,
            shuffle_row_groups=3, rank=rank, world_size=world_size,
            match_features=[HistoryLength()],
        )  # fmt: skip

    streamed, kept = batcher(), batcher()
    assert kept.keep_in_memory(64) and kept.in_memory and not streamed.in_memory
    for epoch in (0, 1, 2):
        streamed.set_epoch(epoch)
        kept.set_epoch(epoch)
        assert _all_batches(kept) == _all_batches(streamed)
        if epoch == 0:  # the first epoch filled the memory with every row group
            assert kept.memory_bytes > 0 and len(kept._memory) == len(kept._row_groups)
    # resuming mid-epoch from memory starts at the same row as streaming does
    streamed.set_epoch(5)
    kept.set_epoch(5)
    streamed.skip_examples(250)
    kept.skip_examples(250)
    assert _all_batches(kept) == _all_batches(streamed)


def test_a_split_over_the_memory_budget_streams(examples_dir, spec, caplog):
    caplog.set_level(logging.INFO, logger="recsys.features.batcher")
    b = ExampleBatcher(examples_dir, "train", spec, 100, prefetch=0)
    assert b.estimated_bytes == 0 and not b.keep_in_memory(0.01)
    assert b.estimated_bytes > 0.01 * 2**20 and not b.in_memory
    assert "streaming every epoch" in caplog.text
    # within the estimate's budget but over it in fact: dropped while filling, then streaming
    fits = ExampleBatcher(examples_dir, "train", spec, 100, prefetch=0)
    assert fits.keep_in_memory(fits._estimate_bytes() / 2**20 * 1.01)
    fits._budget = 1  # the real arrays are larger than one byte
    first = _all_batches(fits)
    assert not fits.in_memory and fits.memory_bytes == 0
    assert _all_batches(fits) == first == _all_batches(b)


def test_concept_ids_follow_item_count_then_name_and_display_the_commonest_spelling():
    from recsys.features.vocabulary import concept_vocabulary

    vocab = concept_vocabulary(
        {"jazz": 3, "blues": 3, "rock": 5, "solo": 1},
        {"jazz": {"Jazz": 2, "jazz": 1}, "blues": {"Blues": 1, "blues": 1}},
        min_count=2,
    )
    assert vocab == {
        "min_count": 2,
        "items": [
            {"id": 0, "name": "rock", "display": "rock", "count": 5},
            {"id": 1, "name": "blues", "display": "Blues", "count": 3},
            {"id": 2, "name": "jazz", "display": "Jazz", "count": 3},
        ],
    }
