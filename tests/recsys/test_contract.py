"""validate_table: every violation of a table, with counts and first rows, in one report."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.contract import (
    EVENTS,
    EXAMPLES,
    ITEMS,
    STR_LIST,
    TS_TYPE,
    USERS,
    ContractError,
    Violation,
    validate_table,
)


def _events(**replace: pa.Array) -> pa.Table:
    cols = {
        "user_id": pa.array(["u1", "u2", "u3", "u4"]),
        "item_id": pa.array(["i1", "i2", "i3", "i4"]),
        "ts": pa.array([0, 1_000, 2_000, 3_000], TS_TYPE),
        "event": pa.array(["impression", "click", "rating", "tag"]),
        "value": pa.array([None, 12.5, 4.0, None], pa.float64()),
        "device": pa.array(["ios", "web", "web", "ios"]),  # extra context column
    }
    cols.update(replace)
    return pa.table(cols)


def _examples(**replace: pa.Array) -> pa.Table:
    cols = {
        "label": pa.array([1, 0, 1], pa.int8()),
        "split": pa.array(["train", "valid", "test"]),
        "user_id": pa.array(["u1", None, "u3"]),
        "item_id": pa.array(["i1", "i2", "i3"]),
        "ts": pa.array([0, 1, 2], TS_TYPE),
        "lt7": pa.array([1, 7, 3], pa.int8()),
        "lt14": pa.array([1, 14, 9], pa.int8()),
        "history": pa.array([[], ["i1"], ["i1", "i2"]], STR_LIST),
        "s_item": pa.array([["i1"], ["i2"], ["i3"]], STR_LIST),
        "d_hour": pa.array([0.1, 0.2, 0.3], pa.float32()),
    }
    cols.update(replace)
    return pa.table(cols)


def _by_column(report) -> dict[str, list[Violation]]:  # noqa: ANN001
    out: dict[str, list[Violation]] = {}
    for v in report.violations:
        out.setdefault(v.column, []).append(v)
    return out


def test_good_tables_pass():
    assert validate_table(_events(), EVENTS).ok
    assert validate_table(_examples(), EXAMPLES, sparse=["s_item", "history"]).ok
    items = pa.table(
        {
            "item_id": ["1"],
            "title": ["Toy Story (1995)"],
            "text": pa.array([None], pa.string()),
            "concepts": pa.array([["genre:Comedy"]], STR_LIST),
            "created_ts": pa.array([0], TS_TYPE),
            "year": ["1995"],
        }
    )
    assert validate_table(items, ITEMS).ok
    users = pa.table({"user_id": ["1"], "concepts": pa.array([[]], STR_LIST), "age": ["18-24"]})
    assert validate_table(users, "users").ok
    validate_table(users, USERS).raise_if_invalid()  # does not raise


def test_an_empty_table_with_the_right_schema_passes():
    assert validate_table(_events().slice(0, 0), EVENTS).ok


def test_a_missing_required_column_is_reported_but_optional_columns_may_be_absent():
    report = validate_table(_events().drop_columns(["event"]), EVENTS)
    (v,) = report.violations
    assert (v.column, v.count) == ("event", 0)
    assert "missing column" in v.problem and "string" in v.problem


def test_a_wrong_type_is_reported_not_coerced():
    table = _events(user_id=pa.array([1, 2, 3, 4], pa.int64()))
    (v,) = validate_table(table, EVENTS).violations
    assert v.column == "user_id"
    assert v.problem == "type is int64, expected string"
    assert table.schema.field("user_id").type == pa.int64()  # the input is left alone


@pytest.mark.parametrize(
    "ts",
    [
        pa.array([0, 1, 2, 3], pa.timestamp("ms")),  # no time zone
        pa.array([0, 1, 2, 3], pa.timestamp("us", tz="UTC")),  # wrong unit
        pa.array([0, 1, 2, 3], pa.int64()),  # epoch numbers
    ],
)
def test_timestamps_must_be_utc_milliseconds(ts: pa.Array):
    (v,) = validate_table(_events(ts=ts), EVENTS).violations
    assert v.column == "ts" and "expected timestamp[ms, tz=UTC]" in v.problem


def test_nulls_in_a_non_nullable_column_give_count_and_first_rows():
    table = _events(item_id=pa.array(["i1", None, "i3", None]))
    (v,) = validate_table(table, EVENTS).violations
    assert (v.column, v.problem, v.count, v.rows) == (
        "item_id",
        "null in a non-nullable column",
        2,
        [1, 3],
    )
    assert str(v) == "events.item_id: 2 rows: null in a non-nullable column (rows 1, 3)"


def test_nulls_in_a_nullable_column_are_fine():
    assert validate_table(_examples(user_id=pa.array([None, None, None], pa.string())), EXAMPLES).ok


def test_empty_ids_are_reported():
    (v,) = validate_table(_events(user_id=pa.array(["u1", "", "u3", ""])), EVENTS).violations
    assert (v.column, v.problem, v.count, v.rows) == ("user_id", "empty id", 2, [1, 3])


def test_unknown_event_kinds_are_reported_and_a_null_kind_only_once():
    table = _events(event=pa.array(["view", "click", None, "purchase"]))
    found = _by_column(validate_table(table, EVENTS))["event"]
    assert sorted((v.problem.split(" ")[0], v.count, tuple(v.rows)) for v in found) == [
        ("event", 2, (0, 3)),
        ("null", 1, (2,)),
    ]


def test_labels_outside_zero_one_are_reported():
    table = _examples(label=pa.array([1, 2, -1], pa.int8()))
    (v,) = validate_table(table, EXAMPLES).violations
    assert (v.column, v.count, v.rows) == ("label", 2, [1, 2])
    assert "{0, 1}" in v.problem


@pytest.mark.parametrize(
    ("name", "bad", "rows"), [("lt7", [0, 8, 7], [0, 1]), ("lt14", [15, 1, 0], [0, 2])]
)
def test_lifetime_counts_outside_their_range_are_reported(
    name: str, bad: list[int], rows: list[int]
):
    (v,) = validate_table(_examples(**{name: pa.array(bad, pa.int8())}), EXAMPLES).violations
    assert (v.column, v.count, v.rows) == (name, 2, rows)
    assert v.problem == f"outside 1..{name[2:]}"


def test_first_rows_are_capped_and_the_message_says_there_are_more():
    n = 12
    table = _events(
        user_id=pa.array(["u"] * n),
        item_id=pa.array([""] * n),
        ts=pa.array(range(n), TS_TYPE),
        event=pa.array(["click"] * n),
        value=pa.array([1.0] * n),
        device=pa.array(["ios"] * n),
    )
    (v,) = validate_table(table, EVENTS).violations
    assert (v.count, v.rows) == (12, [0, 1, 2, 3, 4])
    assert str(v).endswith("(rows 0, 1, 2, 3, 4, ...)")


def test_rows_are_counted_across_chunks():
    good = _events()
    bad = _events(item_id=pa.array(["i1", "", "i3", "i4"]))
    table = pa.concat_tables([good, bad])
    assert table["item_id"].num_chunks == 2
    (v,) = validate_table(table, EVENTS).violations
    assert v.rows == [5]


def test_every_violating_column_is_in_one_report():
    table = pa.table(
        {
            "label": pa.array([1, 3, None], pa.int8()),
            "split": pa.array(["train", "later", "test"]),
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "item_id": pa.array(["i1", "", "i3"]),
            "lt7": pa.array([9, 1, 1], pa.int8()),
            "lt14": pa.array([1, 1, 1], pa.int16()),
            "history": pa.array([[], [], []], STR_LIST),
            "s_user": pa.array(["u1", "u2", "u3"]),
        }
    )
    report = validate_table(table, EXAMPLES, sparse=["s_user", "s_missing"])
    got = {(v.column, v.problem.split(" ")[0]) for v in report.violations}
    assert got == {
        ("label", "null"),
        ("label", "label"),
        ("split", "split"),
        ("user_id", "type"),
        ("item_id", "empty"),
        ("ts", "missing"),
        ("lt7", "outside"),
        ("lt14", "type"),
        ("s_user", "sparse"),
        ("s_missing", "missing"),
    }
    label_range = next(v for v in report.violations if v.problem.startswith("label"))
    assert (label_range.count, label_range.rows) == (1, [1])  # the null row is not counted twice
    with pytest.raises(ContractError) as e:
        report.raise_if_invalid()
    text = str(e.value)
    assert text.startswith("examples: 10 violations in 3 rows")
    assert "examples.user_id: type is int64, expected string" in text
    assert e.value.report is report


def test_list_columns_read_back_from_parquet_still_match(tmp_path):  # noqa: ANN001
    path = tmp_path / "examples.parquet"
    pq.write_table(_examples(), path)
    back = pq.read_table(path)
    assert validate_table(back, EXAMPLES, sparse=["s_item"]).ok


def test_a_contract_can_be_named_by_string_and_unknown_names_fail():
    assert validate_table(_events(), "events").ok
    with pytest.raises(KeyError):
        validate_table(_events(), "clicks")
