"""recsys/features/sparse_rule.py: the raw-column -> ``s_*`` feature rule, both directions.

The Spark prepare job's reading of the same rule is compared with this one on real prepare
output in tests/integration/test_batch_embed.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.features.sparse_rule import (
    Derivation,
    FeatureRuleError,
    SparseFeature,
    arrow_column_kinds,
    context_features,
    derive_values,
    entity_features,
    feature_source,
    sparse_feature_columns,
)

ITEMS = pa.table(
    {
        "item_id": [" i1", "i2", "i3"],
        "title": ["A", "B", None],
        "concepts": pa.array([["genre:Drama", None, ""], [], None], pa.list_(pa.string())),
        "creator": ["cr1", None, "cr3"],
        "year": ["1995", "2001", None],
        "created_ts": ["2020-01-01", None, None],
        "_internal": ["x", "y", "z"],
        "rank": pa.array([1, 2, 3], pa.int64()),
    }
)


def test_an_items_table_yields_id_concepts_and_one_feature_per_string_attribute() -> None:
    features = entity_features("item", arrow_column_kinds(ITEMS.schema), text_columns=["title"])
    assert [(f.name, f.column, f.derivation) for f in features] == [
        ("s_item", "item_id", Derivation.ID),
        ("s_item_concepts", "concepts", Derivation.CONCEPTS),
        ("s_item_creator", "creator", Derivation.VALUE),
        ("s_item_year", "year", Derivation.VALUE),
    ]


def test_users_always_have_history_and_concepts_even_without_a_table() -> None:
    names = [f.name for f in entity_features("user", {})]
    assert names == ["s_user", "s_history", "s_user_concepts"]


def test_reading_the_rule_backwards_finds_the_column_of_every_feature_it_makes() -> None:
    kinds = arrow_column_kinds(ITEMS.schema)
    for feature in [*entity_features("item", kinds), *entity_features("user", {"age": "string"})]:
        assert feature_source(feature.name) == feature
    for feature in context_features():
        assert feature_source(feature.name) == feature
    with pytest.raises(FeatureRuleError, match="'s_cat_1': not derivable"):
        feature_source("s_cat_1")


@pytest.mark.parametrize(
    ("derivation", "value", "want"),
    [
        (Derivation.ID, " i1 ", ["i1"]),
        (Derivation.ID, "", []),
        (Derivation.ID, 42, ["42"]),
        (Derivation.VALUE, "cr1", ["cr1"]),
        (Derivation.VALUE, None, []),
        (Derivation.VALUE, float("nan"), []),
        (Derivation.VALUE, pd.NA, []),
        (Derivation.CONCEPTS, "Comedy|Sci-Fi||", ["Comedy", "Sci-Fi"]),
        (Derivation.CONCEPTS, np.array(["a", None, "", "b"], dtype=object), ["a", "b"]),
        (Derivation.CONCEPTS, 7, []),
        (Derivation.LIST, ["i9", "i3"], ["i9", "i3"]),
        (Derivation.HOUR, pd.Timestamp("2024-01-03 09:30", tz="UTC"), ["9"]),
        (Derivation.HOUR, pd.Timestamp("2024-01-03 09:30", tz="Europe/Berlin"), ["8"]),
        (Derivation.WEEKDAY, pd.Timestamp("2024-01-03 09:30", tz="UTC"), ["Wed"]),
        (Derivation.WEEKDAY, None, []),
    ],
)
def test_each_derivation_turns_one_raw_value_into_strings(
    derivation: Derivation, value: object, want: list[str]
) -> None:
    assert derive_values(SparseFeature("s_x", "x", derivation), value) == want


def test_raw_rows_become_the_features_a_model_names_from_pandas_and_from_arrow() -> None:
    names = ["s_item", "s_item_concepts", "s_item_creator", "s_item_year"]
    want = {
        "s_item": [["i1"], ["i2"], ["i3"]],
        "s_item_concepts": [["genre:Drama"], [], []],
        "s_item_creator": [["cr1"], [], ["cr3"]],
        "s_item_year": [["1995"], ["2001"], []],
    }
    for frame in (ITEMS, ITEMS.to_pandas()):
        got = sparse_feature_columns(frame, names)
        assert {k: v.to_pylist() for k, v in got.items()} == want
        assert all(v.type == pa.list_(pa.string()) for v in got.values())


def test_a_feature_column_already_present_is_used_as_it_is() -> None:
    frame = pd.DataFrame({"item_id": ["i1", "i2"], "s_item": [["other"], None]})
    assert sparse_feature_columns(frame, ["s_item"])["s_item"].to_pylist() == [["other"], []]


def test_a_feature_whose_column_is_missing_is_an_error_naming_both() -> None:
    frame = ITEMS.drop(["creator"])
    with pytest.raises(FeatureRuleError, match="'s_item_creator' needs column 'creator'"):
        sparse_feature_columns(frame, ["s_item", "s_item_creator"])
    with pytest.raises(FeatureRuleError, match="'s_history' needs column 'history'"):
        sparse_feature_columns(pd.DataFrame({"user_id": ["u1"]}), ["s_user", "s_history"])


def test_examples_store_s_history_as_history_and_every_other_feature_as_itself() -> None:
    from recsys.features.sparse_rule import example_column

    assert example_column("s_history") == "history"
    assert [example_column(f) for f in ("s_user", "s_item_concepts", "s_hour")] == [
        "s_user",
        "s_item_concepts",
        "s_hour",
    ]
