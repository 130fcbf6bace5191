import json
import logging

import pytest

from recsys.config import EmbeddingConfig, ModelConfig
from recsys.features.batcher import ExampleBatcher
from recsys.features.spec import FeatureSpec, SpecError
from recsys.features.vocabulary import build_vocabulary
from recsys.models.ranker import Ranker
from recsys.models.two_tower import TwoTower


def test_spec_reads_columns_and_cardinalities_from_the_manifest(examples_writer, tmp_path):
    manifest = examples_writer(tmp_path, n_rows=300, seed=1)
    spec = FeatureSpec.from_manifest(manifest)
    assert spec.sparse == tuple(manifest["features"]["sparse"])
    assert spec.dense == ("d_item_popularity", "d_hour", "d_user_activity")
    assert (
        spec.cardinality["s_user_country"]
        == manifest["features"]["stats"]["s_user_country"]["distinct"]
    )
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_a_manifest_without_sparse_features_is_rejected_by_name():
    with pytest.raises(SpecError, match="features.sparse"):
        FeatureSpec.from_manifest({"features": {}})


def test_user_side_columns_must_be_sparse_features():
    with pytest.raises(SpecError, match="FeatureSpec.user"):
        FeatureSpec(sparse=("s_item",), user=("s_user",))


def test_missing_cardinality_names_the_feature():
    with pytest.raises(SpecError, match="s_item"):
        FeatureSpec(sparse=("s_item",)).cardinality_of("s_item")


def test_dense_scale_comes_from_manifest_dense_stats_and_survives_to_dict():
    manifest = {
        "features": {
            "sparse": ["s_item"],
            "dense": ["d_age", "d_flat", "d_nostats"],
            "dense_stats": {
                "d_age": {"mean": 160.0, "std": 120.0},
                "d_flat": {"mean": 3.0, "std": 0.0},
            },
        }
    }
    spec = FeatureSpec.from_manifest(manifest)
    assert spec.dense_scale == {"d_age": (160.0, 120.0)}  # std 0 / no stats: unscaled
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_dense_scale_for_an_unknown_column_is_rejected_by_name():
    with pytest.raises(SpecError, match="d_age"):
        FeatureSpec(sparse=("s_item",), dense=("d_x",), dense_scale={"d_age": (0.0, 1.0)})


# ---------------------------------------------------------------------------------------------
# manifest statistics: empty vocabularies are dropped, impossible ones are refused


def _manifest(**stats: dict) -> dict:
    sparse = ["s_user", "s_user_concepts", "s_item"]
    default = {c: {"distinct": 10, "values": 100} for c in sparse}
    return {
        "features": {
            "sparse": sparse,
            "user": ["s_user", "s_user_concepts"],
            "item": ["s_item"],
            "stats": {**default, **stats},
            "stats_split": "train",
        }
    }


def test_a_feature_with_an_empty_vocabulary_is_dropped_with_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="recsys")
    empty = {"distinct": 0, "values": 0, "empty_rows": 100}
    spec = FeatureSpec.from_manifest(_manifest(s_user_concepts=empty), origin="m.json")
    assert spec.sparse == ("s_user", "s_item") and spec.user == ("s_user",)
    assert "s_user_concepts" not in spec.cardinality
    (record,) = [r for r in caplog.records if "s_user_concepts" in r.getMessage()]
    assert record.name.startswith("recsys") and "empty vocabulary" in record.getMessage()
    assert "m.json" in record.getMessage()


def test_a_manifest_where_every_feature_is_empty_is_refused():
    empty = {"distinct": 0}
    with pytest.raises(SpecError, match="m.json: every sparse feature has an empty vocabulary"):
        FeatureSpec.from_manifest(
            _manifest(s_user=empty, s_user_concepts=empty, s_item=empty), origin="m.json"
        )


@pytest.mark.parametrize(
    ("distinct", "reason"),
    [
        (-5, "expected a whole number >= 0"),
        (2.5, "expected a whole number >= 0"),
        ("many", "expected a whole number >= 0"),
        (True, "expected a whole number >= 0"),
        (float("nan"), "expected a whole number >= 0"),
        (1e12, "above the limit"),
        (2**31 + 1, "above the limit"),
        (101, "more than its 100 values"),
    ],
)
def test_an_impossible_distinct_count_is_refused_naming_manifest_and_feature(distinct, reason):
    with pytest.raises(SpecError) as e:
        FeatureSpec.from_manifest(
            _manifest(s_item={"distinct": distinct, "values": 100}), origin="ex/manifest.json"
        )
    assert str(e.value).startswith("ex/manifest.json: features.stats.s_item.distinct is ")
    assert reason in str(e.value)


def test_the_cardinality_limit_can_be_lowered():
    manifest = _manifest(s_item={"distinct": 50, "values": 100})
    assert FeatureSpec.from_manifest(manifest).cardinality["s_item"] == 50
    with pytest.raises(SpecError, match="s_item.distinct is 50, above the limit of 40"):
        FeatureSpec.from_manifest(manifest, max_cardinality=40)


def test_a_negative_value_count_is_refused():
    with pytest.raises(SpecError, match="s_item.values is -1"):
        FeatureSpec.from_manifest(_manifest(s_item={"distinct": 3, "values": -1}))


@pytest.mark.parametrize("stats", [{"mean": float("nan"), "std": 1.0}, {"mean": 0, "std": -2}])
def test_non_finite_or_negative_dense_stats_are_refused(stats):
    manifest = {
        "features": {"sparse": ["s_item"], "dense": ["d_age"], "dense_stats": {"d_age": stats}}
    }
    with pytest.raises(SpecError, match="m.json: features.dense_stats.d_age"):
        FeatureSpec.from_manifest(manifest, origin="m.json")


def test_a_negative_cardinality_is_refused_by_the_constructor():
    with pytest.raises(SpecError, match="FeatureSpec.cardinality"):
        FeatureSpec(sparse=("s_item",), cardinality={"s_item": -1})


def test_from_manifest_file_names_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_manifest(s_user={"distinct": -5})))
    with pytest.raises(SpecError, match=rf"^{path}: features.stats.s_user.distinct is -5"):
        FeatureSpec.from_manifest_file(path)
    path.write_text("{")
    with pytest.raises(SpecError, match=rf"^{path}: not valid JSON"):
        FeatureSpec.from_manifest_file(path)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        FeatureSpec.from_manifest_file(tmp_path / "nope.json")


@pytest.fixture(scope="module")
def examples_without_user_concepts(tmp_path_factory, examples_writer):
    """A small examples directory whose manifest says ``s_user_concepts`` has no values."""
    d = tmp_path_factory.mktemp("no_user_concepts")
    manifest = examples_writer(d, n_rows=400, seed=2)
    manifest["features"]["stats"]["s_user_concepts"] = {"distinct": 0, "values": 0}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_models_build_and_run_without_the_dropped_feature(examples_without_user_concepts):
    d = examples_without_user_concepts
    spec = FeatureSpec.from_manifest_file(d / "manifest.json")
    assert "s_user_concepts" not in spec.sparse and "s_user_concepts" not in spec.user
    batch = next(iter(ExampleBatcher(d, "train", spec, 32, prefetch=0)))
    assert batch.sparse.keys() == list(spec.sparse)
    vocab = build_vocabulary(d, list(spec.sparse))
    collisionless = EmbeddingConfig(kind="collisionless", dim=4)  # sized by cardinality
    ranker = Ranker.from_config(ModelConfig(mlp=[8], cross_layers=1), collisionless, spec, vocab)
    assert ranker(batch.sparse, batch.dense).logits.shape == (32,)
    tower = TwoTower.from_config(
        ModelConfig(kind="two_tower", mlp=[8], tower_dim=4), EmbeddingConfig(dim=4), spec
    )
    assert tower(batch.sparse).user.shape == (32, 4)
