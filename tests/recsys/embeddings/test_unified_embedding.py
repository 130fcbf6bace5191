import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings import HashedEmbedding, UnifiedEmbedding, UnifiedEmbeddingConfig
from recsys.embeddings.base import EmbeddingError
from recsys.features.hashing import hash_values, mix64, name_salt, to_int64


def _kjt(columns: dict[str, list[list[str]]]) -> KeyedJaggedTensor:
    lengths, values = [], []
    for rows in columns.values():
        lengths += [len(r) for r in rows]
        flat = [v for r in rows for v in r]
        values += list(to_int64(hash_values(flat))) if flat else []
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(columns),
        values=torch.tensor(values, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.int32),
    )


def _row(value: str, feature: str, probe: int, rows: int, salt: int = 0) -> int:
    raw = hash_values([value])
    return int(mix64(raw, name_salt(f"{feature}#{probe}", salt))[0] % np.uint64(rows))


COLUMNS = {
    "s_user": [["u1"], ["u2"], ["u3"]],
    "s_item": [["i1"], ["i2"], []],
    "s_history": [["i5", "i6", "i7"], [], ["i1"]],
}


def test_each_probe_reads_the_row_its_own_salt_selects():
    cfg = UnifiedEmbeddingConfig({"s_user": 2, "s_item": 1, "s_history": 3}, 997, 4, salt=9)
    emb = UnifiedEmbedding(cfg)
    remapped = emb.remap(_kjt(COLUMNS)).to_dict()
    for f, k in cfg.features.items():
        flat = [v for r in COLUMNS[f] for v in r]
        for p in range(k):
            expected = [_row(v, f, p, 997, salt=9) for v in flat]
            assert remapped[f"{f}__p{p}"].values().tolist() == expected
            assert remapped[f"{f}__p{p}"].lengths().tolist() == [len(r) for r in COLUMNS[f]]


def test_output_concatenates_probes_in_order_with_mean_pooling():
    cfg = UnifiedEmbeddingConfig({"s_user": 2, "s_item": 1, "s_history": 3}, 997, 4)
    emb = UnifiedEmbedding(cfg)
    weight = emb.ebc.embedding_bags["unified_0"].weight.detach()
    kt = emb(_kjt(COLUMNS))
    assert kt.keys() == ["s_user", "s_item", "s_history"]
    assert kt.length_per_key() == [8, 4, 12]
    hist = kt["s_history"]
    for p in range(3):
        rows = [_row(v, "s_history", p, 997) for v in ("i5", "i6", "i7")]
        torch.testing.assert_close(hist[0, 4 * p : 4 * p + 4], weight[rows].mean(0))
    assert torch.equal(hist[1], torch.zeros(12))  # an empty bag embeds to zeros
    torch.testing.assert_close(kt["s_user"][2, 4:], weight[_row("u3", "s_user", 1, 997)])


def test_probes_of_a_feature_go_round_robin_to_different_sub_tables():
    cfg = UnifiedEmbeddingConfig({"a": 3, "b": 1, "c": 2}, 101, 4, num_tables=3)
    tables = [(f, p, t) for f, p, t, _ in cfg.probes]
    assert tables == [("a", 0, 0), ("a", 1, 1), ("a", 2, 2), ("b", 0, 0), ("c", 0, 1), ("c", 1, 2)]
    emb = UnifiedEmbedding(cfg)
    configs = emb.ebc.embedding_bag_configs()
    assert [c.feature_names for c in configs] == [
        ["a__p0", "b__p0"],
        ["a__p1", "c__p0"],
        ["a__p2", "c__p1"],
    ]
    assert all(c.pooling == PoolingType.MEAN for c in configs)
    kjt = _kjt({"a": [["x"], ["y"]], "b": [["x"], []], "c": [[], ["z", "x"]]})
    kt = emb(kjt)
    w1 = emb.ebc.embedding_bags["unified_1"].weight.detach()
    torch.testing.assert_close(kt["a"][0, 4:8], w1[_row("x", "a", 1, 101)])
    torch.testing.assert_close(
        kt["c"][1, :4], w1[[_row("z", "c", 0, 101), _row("x", "c", 0, 101)]].mean(0)
    )


def test_variable_widths_follow_the_probe_counts():
    emb = UnifiedEmbedding(UnifiedEmbeddingConfig({"s_user": 4, "s_item": 1}, 50, 8))
    assert emb.output_dims == {"s_user": 32, "s_item": 8}
    kt = emb(_kjt({"s_item": [["i"]] * 5, "s_user": [["u"]] * 5}))  # input key order is free
    assert kt.values().shape == (5, 40) and kt.keys() == ["s_user", "s_item"]


def test_rows_follow_the_parameter_budget():
    cfg = UnifiedEmbeddingConfig.from_budget(100_000, 16, 3, {"a": 2, "b": 1})
    assert cfg.rows_per_table == 100_000 // 48
    emb = UnifiedEmbedding(cfg)
    assert emb.num_embedding_parameters() == cfg.num_parameters() <= 100_000
    assert 100_000 - emb.num_embedding_parameters() < 48
    with pytest.raises(EmbeddingError, match="param_budget"):
        UnifiedEmbeddingConfig.from_budget(10, 16, 1, {"a": 1})


def test_weights_start_small_and_uniform():
    emb = UnifiedEmbedding(UnifiedEmbeddingConfig({"a": 1}, 5000, 16, init_scale=0.05))
    w = emb.ebc.embedding_bags["unified_0"].weight
    assert w.abs().max() <= 0.05 and w.std() > 0.025


def test_gradients_reach_only_the_rows_that_were_looked_up():
    cfg = UnifiedEmbeddingConfig({"s_user": 2, "s_item": 1, "s_history": 3}, 997, 4)
    emb = UnifiedEmbedding(cfg)
    emb(_kjt(COLUMNS)).values().pow(2).sum().backward()
    grad = emb.ebc.embedding_bags["unified_0"].weight.grad
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    expected = {
        _row(v, f, p, 997)
        for f, k in cfg.features.items()
        for p in range(k)
        for r in COLUMNS[f]
        for v in r
    }
    assert touched == expected


def test_a_missing_input_feature_is_named():
    emb = UnifiedEmbedding(UnifiedEmbeddingConfig({"s_user": 1, "s_item": 1}, 10, 4))
    with pytest.raises(EmbeddingError, match="s_item"):
        emb(_kjt({"s_user": [["u"]]}))


def test_config_round_trips_through_a_dict():
    cfg = UnifiedEmbeddingConfig({"a": 2, "b": 1}, 10, 4, num_tables=2, salt=3)
    assert UnifiedEmbeddingConfig.from_dict(cfg.to_dict()) == cfg


def test_one_sub_table_per_feature_is_per_feature_hashing_with_the_same_rows():
    # The benchmark compares unified with hashing at equal budgets; the two must differ only
    # in how rows are shared, never in salts, mixing or widths: with one sub-table per
    # feature and equal rows, unified embeds exactly like HashedEmbedding with the same weights.
    feats = list(COLUMNS)
    cfg = UnifiedEmbeddingConfig({f: 1 for f in feats}, 101, 4, num_tables=3, salt=5)
    uni = UnifiedEmbedding(cfg)
    hashed = HashedEmbedding({f: 101 for f in feats}, {f: 4 for f in feats}, salt=5)
    with torch.no_grad():
        for t, f in enumerate(feats):
            hashed.ebc.embedding_bags[f"hash_{f}"].weight.copy_(
                uni.ebc.embedding_bags[f"unified_{t}"].weight
            )
    kjt = _kjt(COLUMNS)
    u_rows, h_rows = uni.remap(kjt).to_dict(), hashed.remap(kjt).to_dict()
    for f in feats:
        assert torch.equal(u_rows[f"{f}__p0"].values(), h_rows[f].values())
    assert uni.output_dims == hashed.output_dims
    assert uni.num_embedding_parameters() == hashed.num_embedding_parameters()
    torch.testing.assert_close(uni(kjt).values(), hashed(kjt).values())
