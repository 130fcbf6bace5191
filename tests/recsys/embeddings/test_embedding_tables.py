import json

import numpy as np
import pytest
import torch

from recsys.config import EmbeddingConfig
from recsys.embeddings import (
    CollisionlessEmbedding,
    EmbeddingError,
    HashedEmbedding,
    UnifiedEmbedding,
    build_embedding,
    collisionless_parameters,
    embedding_from_dict,
)
from recsys.features.batcher import ExampleBatcher
from recsys.features.hashing import hash_values, to_int64
from recsys.features.spec import FeatureSpec
from recsys.features.vocabulary import build_vocabulary


@pytest.fixture(scope="module")
def spec(examples_dir):
    return FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))


@pytest.fixture(scope="module")
def vocab(examples_dir, spec):
    return build_vocabulary(examples_dir, spec.sparse)


@pytest.fixture(scope="module")
def batch(examples_dir, spec):
    return next(iter(ExampleBatcher(examples_dir, "valid", spec, 128, prefetch=0)))


def test_collisionless_gives_every_known_value_its_own_row_and_unknowns_the_oov_row():
    known = ["a", "b", "c"]
    voc = np.sort(to_int64(hash_values(known)))
    emb = CollisionlessEmbedding({"s_x": voc}, {"s_x": 4})
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    values = to_int64(hash_values(["c", "a", "zzz", "b"]))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["s_x"], values=torch.from_numpy(values.copy()), lengths=torch.tensor([1, 1, 1, 1])
    )
    rows = emb.remap(kjt).values().tolist()
    assert sorted(rows[:2] + rows[3:]) == [0, 1, 2] and rows[2] == 3
    w = emb.ebc.embedding_bags["vocab_s_x"].weight.detach()
    torch.testing.assert_close(emb(kjt)["s_x"], w[rows])


def test_every_kind_has_the_same_output_keys_and_widths(spec, vocab, batch):
    widths = None
    for kind in ("unified", "hashing", "collisionless"):
        cfg = EmbeddingConfig(kind=kind, dim=8, probes={"s_user": 2, "s_item": 3}, num_tables=2)
        kt = build_embedding(cfg, spec, vocab=vocab)(batch.sparse)
        assert kt.keys() == list(spec.sparse)
        widths = widths or kt.length_per_key()
        assert kt.length_per_key() == widths and kt.values().shape == (128, sum(widths))


@pytest.mark.parametrize("kind", ["unified", "hashing"])
def test_budget_fraction_is_a_share_of_the_collisionless_parameter_count(spec, kind):
    cfg = EmbeddingConfig(kind=kind, dim=8, budget_fraction=0.25, probes={"s_user": 2})
    full = collisionless_parameters(cfg, spec, spec.sparse)
    assert full == sum(spec.cardinality[f] * (16 if f == "s_user" else 8) for f in spec.sparse)
    n = build_embedding(cfg, spec).num_embedding_parameters()
    assert 0.25 * full * 0.9 <= n <= 0.25 * full + 8 * len(spec.sparse)


def test_hashed_buckets_are_proportional_to_cardinality():
    emb = HashedEmbedding.from_budget(10_000, {"a": 1000, "b": 100}, {"a": 8, "b": 8})
    assert emb.buckets == {"a": 1136, "b": 113}
    assert emb.num_embedding_parameters() <= 10_000


def test_an_absolute_budget_is_split_between_towers_by_their_collisionless_share(spec):
    cfg = EmbeddingConfig(kind="unified", dim=8, param_budget=4000)
    user = build_embedding(cfg, spec, features=spec.user).num_embedding_parameters()
    item = build_embedding(cfg, spec, features=spec.item).num_embedding_parameters()
    assert 4000 - 16 <= user + item <= 4000


def test_collisionless_without_a_vocabulary_says_how_to_build_one(spec):
    with pytest.raises(EmbeddingError, match="build_vocabulary"):
        build_embedding(EmbeddingConfig(kind="collisionless"), spec)


def test_probes_for_unknown_features_are_rejected_by_name(spec):
    with pytest.raises(EmbeddingError, match="s_nope"):
        build_embedding(EmbeddingConfig(probes={"s_nope": 2}), spec)


@pytest.mark.parametrize("kind", ["unified", "hashing", "collisionless"])
def test_a_module_rebuilt_from_its_config_dict_and_state_dict_embeds_identically(
    spec, vocab, batch, kind
):
    cfg = EmbeddingConfig(kind=kind, dim=4, budget_fraction=0.5, num_tables=2)
    emb = build_embedding(cfg, spec, vocab=vocab)
    again = embedding_from_dict(json.loads(json.dumps(emb.config_dict(), sort_keys=True)))
    assert again.feature_names == emb.feature_names
    again.load_state_dict(emb.state_dict())
    assert torch.equal(again(batch.sparse).values(), emb(batch.sparse).values())


def test_unified_single_table_holds_every_probe_as_a_virtual_feature(spec):
    emb = build_embedding(EmbeddingConfig(dim=8, probes={"s_item": 2}), spec)
    assert isinstance(emb, UnifiedEmbedding)
    (table,) = emb.ebc.embedding_bag_configs()
    assert table.feature_names[:6] == [
        "s_user__p0",
        "s_user_country__p0",
        "s_user_concepts__p0",
        "s_history__p0",
        "s_item__p0",
        "s_item__p1",
    ]
