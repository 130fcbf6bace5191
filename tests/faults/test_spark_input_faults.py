"""Malformed raw events through the Spark prepare job (real Spark, local): every dropped row is
quarantined under a reason and counted; timestamps never wrap or leave the plausible window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from recsys.config import parse_config
from spark_jobs import build_training_data as job

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _sec(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp())


GOOD = [  # ts in every form a JSON log may hold, mixed in one column
    {"user_id": "u1", "item_id": "i1", "ts": _sec("2024-01-01"), "value": 4},
    {"user_id": "u1", "item_id": "i2", "ts": str(_sec("2024-01-02")), "value": "4.5"},
    {"user_id": "u2", "item_id": "i1", "ts": "2024-01-03T00:00:00Z", "value": 3.0},
    {"user_id": "u2", "item_id": "i2", "ts": _sec("2024-01-04") * 1000, "value": 5},
]
BAD = [
    ({"user_id": "u3", "item_id": "i1", "ts": 1e16, "value": 4}, "ts_out_of_window"),
    (
        {"user_id": "u3", "item_id": "i2", "ts": "5138-01-01T00:00:00Z", "value": 4},
        "ts_out_of_window",
    ),
    ({"user_id": "u3", "item_id": "i1", "ts": -86400, "value": 4}, "ts_out_of_window"),
    ({"user_id": "u4", "item_id": "i1", "ts": "not a time", "value": 4}, "bad_ts"),
    ({"user_id": "u4", "item_id": "i2", "ts": _sec("2024-01-02"), "value": "abc"}, "bad_value"),
]
TRUNCATED = '{"user_id": "u5", "item_id": "i1", "ts": 17040'


def _write_world(raw: Path) -> None:
    raw.mkdir(parents=True)
    lines = [json.dumps({**r, "event": "rating"}) for r in GOOD]
    lines += [json.dumps({**r, "event": "rating"}) for r, _ in BAD]
    lines.append(TRUNCATED)
    (raw / "events.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"item_id": ["i1", "i2"], "title": ["A", "B"]}), raw / "items.parquet")


def _config():  # noqa: ANN202
    prepare = {
        "label": {"kind": "rating", "threshold": 4.0},
        "split": {"valid_from": "2024-01-03", "test_from": "2024-01-04"},
        "history_length": 1,
        "max_bad_fraction": 0.9,
    }
    return parse_config(
        {"name": "t", "source": {"kind": "movielens", "path": "x"}, "prepare": prepare}
    )


@pytest.fixture(scope="module")
def malformed(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("malformed")
    _write_world(root / "raw")
    manifest = job.run(_config(), root / "raw", root / "out", spark)
    return root / "out", manifest


def test_every_dropped_event_is_quarantined_under_its_reason_and_counted(malformed) -> None:  # noqa: ANN001
    out, manifest = malformed
    expected: dict[str, int] = {"malformed_json": 1}
    for _, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    assert manifest["counts"]["quarantined"] == dict(sorted(expected.items()))
    assert manifest["counts"]["events_in"] == len(GOOD) + len(BAD) + 1
    assert manifest["counts"]["events_valid"] == len(GOOD)
    rejected = pd.read_parquet(out / "quarantine" / "events")
    assert sorted(rejected["reason"]) == sorted([r for _, r in BAD] + ["malformed_json"])
    assert rejected.loc[rejected.reason == "malformed_json", "_corrupt_record"].item() == TRUNCATED
    assert rejected.loc[rejected.reason == "bad_value", "value"].item() == "abc"


def test_numbers_numeric_strings_and_iso_times_in_one_column_all_parse(malformed) -> None:  # noqa: ANN001
    out, _ = malformed
    examples = ds.dataset(
        out / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    )
    ex = examples.to_table().to_pandas()
    days = sorted(t.strftime("%Y-%m-%d") for t in ex["ts"])
    assert days == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert (ex["ts"] >= pd.Timestamp("1970-01-01", tz="UTC")).all()


def test_numeric_times_never_wrap_and_out_of_window_times_become_null(spark) -> None:  # noqa: ANN001
    df = spark.createDataFrame(
        [(1e16,), (1.7e9,), (-1.0,), (float("nan"),), (9.3e18,), (4102444800.0,)], "ts double"
    )
    got = [r[0] for r in df.select(F.unix_millis(job._ts_column(df, "ts"))).collect()]
    assert got[1] == 1_700_000_000_000
    assert got[0] is None and got[2] is None and got[3] is None and got[4] is None
    assert got[5] is None  # 2100-01-01: the window's end is exclusive
