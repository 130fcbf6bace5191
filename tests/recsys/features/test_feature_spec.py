import pytest

from recsys.features.spec import FeatureSpec, SpecError


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
