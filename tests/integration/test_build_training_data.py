"""spark_jobs/build_training_data.py on small hand-built raw logs, with real Spark (local[2]).

Two worlds: MovieLens-style ratings (events as JSON lines with ISO timestamps, some broken
rows) and simulator-style impressions + clicks (Parquet). Expected values are computed by
brute force in pandas from the same input and compared row by row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recsys.concepts.vocabulary import ConceptVocabulary, normalise_concept
from recsys.config import parse_config
from recsys.contract import EXAMPLES, validate_table
from spark_jobs import build_training_data as job
from spark_jobs.quality import read_quarantine

pytestmark = [pytest.mark.spark, pytest.mark.slow]

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _ts(day: float, hour: float = 0.0) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=day, hours=hour)


def _iso(t: pd.Timestamp) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_examples(out: Path) -> pd.DataFrame:
    table = ds.dataset(
        out / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    df = table.to_pandas()
    df["split"] = df["split"].astype(str)
    return df.sort_values(["user_id", "ts", "item_id"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- ratings world

GOOD_RATINGS = [
    # user, item, day, hour, stars
    ("u1", "i1", 0, 10, 5.0),
    ("u1", "i2", 0, 10, 4.0),  # same ts as i1: neither may see the other
    ("u1", "i3", 2, 9, 2.0),
    ("u1", "i4", 3, 9, 3.0),  # dropped by drop_between=3
    ("u1", "i5", 9, 12, 4.5),
    ("u1", "i6", 21, 8, 5.0),
    ("u1", "i3", 26, 8, 4.0),
    ("u2", "i1", 1, 0, 1.0),
    ("u2", "i2", 4, 0, 5.0),
    ("u2", "i3", 5, 0, 4.0),
    ("u2", "i4", 6, 0, 4.0),
    ("u2", "i5", 22, 0, 2.5),
    ("u3", "i6", 13, 0, 4.0),
    ("u3", "i1", 27, 0, 5.0),
]
TAGS = [("u2", "i6", 2, 0), ("u3", "i2", 19, 0)]  # activity without a label
BROKEN = [
    {"user_id": None, "item_id": "i1", "ts": _iso(_ts(3)), "event": "rating", "value": 4.0},
    {"user_id": "u1", "item_id": "zz", "ts": _iso(_ts(3)), "event": "rating", "value": 4.0},
    {"user_id": "u2", "item_id": "i2", "ts": "2024-13-45 99:00", "event": "rating", "value": 4.0},
    {"user_id": "u3", "item_id": "i3", "ts": _iso(_ts(4)), "event": "rating", "value": 7.0},
]
EXPECTED_QUARANTINE = {"missing_id": 1, "unknown_item_id": 1, "bad_ts": 1, "out_of_range": 1}


def write_ratings_world(raw: Path) -> None:
    raw.mkdir(parents=True)
    rows = [
        {"user_id": u, "item_id": i, "ts": _iso(_ts(d, h)), "event": "rating", "value": v}
        for u, i, d, h, v in GOOD_RATINGS
    ]
    rows += [
        {"user_id": u, "item_id": i, "ts": _iso(_ts(d, h)), "event": "tag", "value": None}
        for u, i, d, h in TAGS
    ]
    rows.append(dict(rows[0]))  # an exact duplicate
    rows += BROKEN
    with open(raw / "events.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    items = pa.table(
        {
            "item_id": [f"i{k}" for k in range(1, 7)],
            "title": [f"Movie {k}" for k in range(1, 7)],
            "text": ["..."] * 6,
            "concepts": [["drama"], ["comedy", "drama"], [], ["sci-fi"], None, ["drama"]],
            "creator": ["c1", "c2", None, "c1", "c3", "c2"],
            "created_ts": pa.array(
                [_ts(-10), _ts(-3), _ts(0), _ts(2), _ts(5), _ts(30)], pa.timestamp("ms", "UTC")
            ),
        }
    )
    pq.write_table(items, raw / "items.parquet")
    users = pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "concepts": [["drama"], [], None],
            "age": ["18-24", None, "35-44"],
        }
    )
    pq.write_table(users, raw / "users.parquet")


def ratings_config(**prepare: object):  # noqa: ANN201
    base = {
        "label": {"kind": "rating", "threshold": 4.0, "drop_between": 3.0},
        "split": {"valid_from": "2024-01-20", "test_from": "2024-01-25"},
        "history_length": 2,
        "max_bad_fraction": 0.5,
        "min_value": 0.5,
        "max_value": 5.0,
    }
    base.update(prepare)
    return parse_config(
        {"name": "ratings", "source": {"kind": "movielens", "path": "x"}, "prepare": base}
    )


# Examples and manifests the job wrote for the three worlds of this file before it was rebuilt
# around two shuffles (tests/integration/data/prepare_reference, written by the earlier code):
# the current job must write the same rows, less the duplicate ``s_history`` column.
REFERENCE = Path(__file__).parent / "data" / "prepare_reference"
MAX_SPARK_JOBS = 20


def _run_counting_jobs(spark, cfg, raw: Path, out: Path) -> tuple[dict, int]:  # noqa: ANN001
    """``job.run`` and the number of Spark jobs it launched (its own job group)."""
    sc = spark.sparkContext
    group = f"prepare-{out.parent.name}"
    sc.setJobGroup(group, group)
    try:
        manifest = job.run(cfg, raw, out, spark)
    finally:
        sc.setJobGroup("tests", "tests")
    return manifest, len(sc.statusTracker().getJobIdsForGroup(group))


@pytest.fixture(scope="module")
def ratings(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("ratings")
    write_ratings_world(root / "raw")
    manifest, jobs = _run_counting_jobs(spark, ratings_config(), root / "raw", root / "out")
    assert jobs <= MAX_SPARK_JOBS, jobs
    return root, manifest, read_examples(root / "out")


def _positives() -> pd.DataFrame:
    df = pd.DataFrame(GOOD_RATINGS, columns=["user_id", "item_id", "day", "hour", "value"])
    df["ts"] = [_ts(d, h) for d, h in zip(df.day, df.hour, strict=True)]
    return df[df.value >= 4.0]


def _all_events() -> pd.DataFrame:
    rows = [(u, i, _ts(d, h)) for u, i, d, h, _ in GOOD_RATINGS]
    rows += [(u, i, _ts(d, h)) for u, i, d, h in TAGS]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def test_ratings_are_labelled_by_threshold_and_middle_ratings_are_dropped(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    got = {(r.user_id, r.item_id, r.ts): int(r.label) for r in ex.itertuples()}
    want = {
        (u, i, _ts(d, h)): int(v >= 4.0) for u, i, d, h, v in GOOD_RATINGS if not 3.0 <= v < 4.0
    }
    assert got == want
    assert manifest["counts"]["dropped_by_label_rule"] == 1


def test_broken_rows_are_quarantined_with_a_reason_each(ratings) -> None:  # noqa: ANN001
    root, manifest, _ = ratings
    assert manifest["counts"]["quarantined"] == EXPECTED_QUARANTINE
    assert manifest["counts"]["duplicates"] == 1
    q = pd.read_parquet(root / "out" / "quarantine" / "events")
    assert sorted(q["reason"]) == sorted(EXPECTED_QUARANTINE)
    assert q.loc[q.reason == "bad_ts", "ts"].item() == "2024-13-45 99:00"


def test_lt_counts_active_days_in_the_window_starting_that_day(ratings) -> None:  # noqa: ANN001
    _, _, ex = ratings
    days = _all_events().assign(day=lambda d: d.ts.dt.floor("D"))
    active = days.groupby("user_id")["day"].apply(lambda s: sorted(set(s)))
    for r in ex.itertuples():
        d0 = r.ts.floor("D")
        mine = active[r.user_id]
        assert r.lt7 == sum(d0 <= d < d0 + pd.Timedelta(days=7) for d in mine)
        assert r.lt14 == sum(d0 <= d < d0 + pd.Timedelta(days=14) for d in mine)
    # Hand-checked: u1 on day 0 is active on days 0, 2, 3 (7-day window) and also 9 (14-day).
    first = ex[(ex.user_id == "u1") & (ex.item_id == "i1")].iloc[0]
    assert (first.lt7, first.lt14) == (3, 4)
    # u2 on day 1: days 1, 2 (tag), 4, 5, 6 within 7 days.
    u2 = ex[(ex.user_id == "u2") & (ex.item_id == "i1")].iloc[0]
    assert (u2.lt7, u2.lt14) == (5, 5)


def test_history_holds_the_last_positives_strictly_before_the_event(ratings) -> None:  # noqa: ANN001
    _, _, ex = ratings
    pos = _positives()
    for r in ex.itertuples():
        before = pos[(pos.user_id == r.user_id) & (pos.ts < r.ts)].sort_values(["ts", "item_id"])
        assert list(r.history) == list(before.item_id)[-2:], (r.user_id, r.item_id, r.ts)


def test_history_is_stored_once_and_s_history_is_read_from_it(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    assert "history" in ex.columns and "s_history" not in ex.columns
    assert "s_history" not in manifest["schema"]
    features = manifest["features"]
    assert "s_history" in features["sparse"] and "s_history" in features["user"]
    # its statistics are those of the history lists of the training rows
    train = ex[ex.split == "train"]
    values = [v for h in train.history for v in h]
    stats = features["stats"]["s_history"]
    assert stats["values"] == len(values) and stats["distinct"] == len(set(values))
    assert stats["empty_rows"] == int((train.history.map(len) == 0).sum())


def test_history_never_contains_the_event_itself_or_ties_in_time(ratings) -> None:  # noqa: ANN001
    _, _, ex = ratings
    same_ts = ex[(ex.user_id == "u1") & (ex.ts == _ts(0, 10))]
    assert len(same_ts) == 2
    assert all(len(h) == 0 for h in same_ts.history)
    pos = _positives()
    for r in ex.itertuples():
        later = set(pos[(pos.user_id == r.user_id) & (pos.ts >= r.ts)].item_id)
        earlier = set(pos[(pos.user_id == r.user_id) & (pos.ts < r.ts)].item_id)
        assert not (set(r.history) & (later - earlier))


def test_dense_features_count_only_strictly_earlier_events(ratings) -> None:  # noqa: ANN001
    _, _, ex = ratings
    ev = _all_events()
    pos = _positives()
    for r in ex.itertuples():
        n_user = int(((ev.user_id == r.user_id) & (ev.ts < r.ts)).sum())
        n_item = int(((ev.item_id == r.item_id) & (ev.ts < r.ts)).sum())
        p_item = int(((pos.item_id == r.item_id) & (pos.ts < r.ts)).sum())
        assert r.d_user_prior_events == pytest.approx(math.log1p(n_user), rel=1e-6)
        assert r.d_item_prior_events == pytest.approx(math.log1p(n_item), rel=1e-6)
        assert r.d_item_prior_positives == pytest.approx(math.log1p(p_item), rel=1e-6)
    assert ex.d_item_age_days.min() >= 0.0
    i1_day0 = ex[(ex.user_id == "u1") & (ex.item_id == "i1")].iloc[0]
    assert i1_day0.d_item_age_days == pytest.approx(10 + 10 / 24, rel=1e-5)


def test_examples_are_split_by_the_configured_dates(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    v, t = pd.Timestamp("2024-01-20", tz="UTC"), pd.Timestamp("2024-01-25", tz="UTC")
    want = np.where(ex.ts < v, "train", np.where(ex.ts < t, "valid", "test"))
    assert list(ex.split) == list(want)
    assert manifest["split"]["valid_from"].startswith("2024-01-20T00:00:00")
    counts = manifest["counts"]
    assert (counts["train"], counts["valid"], counts["test"]) == tuple(
        int((ex.split == s).sum()) for s in ("train", "valid", "test")
    )


def test_sparse_features_follow_the_naming_rule(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    f = manifest["features"]
    assert set(f["user"]) == {"s_user", "s_history", "s_user_concepts", "s_user_age"}
    assert set(f["item"]) == {"s_item", "s_item_concepts", "s_item_creator"}
    assert {"s_hour", "s_weekday"} <= set(f["sparse"])
    row = ex[(ex.user_id == "u1") & (ex.item_id == "i3") & (ex.label == 0)].iloc[0]
    assert list(row.s_item_creator) == []  # null attribute -> empty list
    assert list(row.s_user_age) == ["18-24"]
    assert list(row.s_item_concepts) == []
    assert list(row.s_hour) == ["9"] and list(row.s_weekday) == ["Wed"]
    u3 = ex[ex.user_id == "u3"].iloc[0]
    assert list(u3.s_user_concepts) == []


def test_feature_stats_count_distinct_and_frequent_values(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    ex = ex[ex.split == "train"]  # statistics describe the training split only
    stats = manifest["features"]["stats"]
    assert stats["s_item"]["distinct"] == ex.item_id.nunique()
    top_item, top_count = stats["s_item"]["top"][0]
    assert top_count == ex.item_id.value_counts().max()
    assert ex.item_id.value_counts()[top_item] == top_count
    hist = stats["s_user"]["histogram"]
    assert sum(hist.values()) == ex.user_id.nunique()
    assert stats["s_user_concepts"]["empty_rows"] == int((ex.user_id != "u1").sum())


def test_feature_stats_leave_out_values_seen_only_after_training(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    train = ex[ex.split == "train"]
    assert manifest["features"]["stats_split"] == "train"
    # Hour 8 occurs only in valid (u1 day 21) and test (u1 day 26).
    later_hours = {h for hs in ex[ex.split != "train"].s_hour for h in hs}
    assert "8" in later_hours and "8" not in {h for hs in train.s_hour for h in hs}
    hour = manifest["features"]["stats"]["s_hour"]
    assert "8" not in {v for v, _ in hour["top"]}
    assert hour["distinct"] == len({h for hs in train.s_hour for h in hs})
    dense = manifest["features"]["dense_stats"]["d_user_prior_events"]
    assert dense["max"] == pytest.approx(float(train.d_user_prior_events.max()), rel=1e-5)
    assert dense["max"] < float(ex.d_user_prior_events.max())


def test_time_split_is_recorded_in_the_manifest(ratings) -> None:  # noqa: ANN001
    _, manifest, ex = ratings
    split = manifest["split"]
    assert split["by"] == "time"
    assert split["valid_fraction"] is None and split["test_fraction"] is None  # dates given
    assert manifest["counts"]["users"] == {
        s: ex[ex.split == s].user_id.nunique() for s in ("train", "valid", "test")
    }


def test_examples_follow_the_contract(ratings) -> None:  # noqa: ANN001
    root, manifest, _ = ratings
    table = ds.dataset(
        root / "out" / "examples",
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=True,
    ).to_table()
    table = table.set_column(
        table.schema.get_field_index("split"), "split", table["split"].cast(pa.string())
    )
    report = validate_table(table, EXAMPLES, sparse=manifest["features"]["sparse"])
    assert report.ok, str(report)
    for name in manifest["features"]["dense"]:
        assert table.schema.field(name).type == pa.float32()
    assert manifest["schema"]["ts"] == "timestamp[ms, tz=UTC]"


def test_rerun_is_idempotent(spark, ratings) -> None:  # noqa: ANN001
    root, manifest, ex = ratings
    again = job.run(ratings_config(), root / "raw", root / "out", spark)
    assert again == manifest
    pd.testing.assert_frame_equal(read_examples(root / "out"), ex)
    # Nothing of the run is left beside the release: no staging, no temporary links.
    assert sorted(p.name for p in (root / "out").iterdir()) == [
        ".lock",
        "current",
        "examples",
        "previous",
        "quarantine",
        "releases",
    ]
    assert len(list((root / "out" / "releases").iterdir())) == 2  # current + previous


def test_too_many_bad_rows_fail_and_keep_the_previous_output(spark, ratings) -> None:  # noqa: ANN001
    root, manifest, ex = ratings
    before = (root / "out" / "examples" / "manifest.json").read_text()
    with pytest.raises(job.DataQualityError) as err:
        job.run(ratings_config(max_bad_fraction=0.01), root / "raw", root / "out", spark)
    msg = str(err.value)
    assert msg.startswith("events: ") and "> limit 1.0%" in msg
    for reason in EXPECTED_QUARANTINE:
        assert f"{reason}: 1" in msg
    assert (root / "out" / "examples" / "manifest.json").read_text() == before
    pd.testing.assert_frame_equal(read_examples(root / "out"), ex)
    rejected = pd.read_parquet(root / "out" / "quarantine.rejected" / "events")
    assert len(rejected) == len(EXPECTED_QUARANTINE)


# ----------------------------------------------------------------------------- clicks world


def write_click_world(raw: Path, n_users: int = 6, n_days: int = 10) -> pd.DataFrame:
    """Every shown item an impression; a click has the same user, item and ts (simulator rule)."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(n_users):
        for d in range(n_days):
            if rng.random() < 0.3:
                continue
            ts = _ts(d, float(rng.integers(0, 24)))
            for i in rng.choice(8, size=3, replace=False):
                rows.append((f"u{u}", f"i{i}", ts, "impression", None))
                if rng.random() < 0.4:
                    rows.append((f"u{u}", f"i{i}", ts, "click", float(rng.integers(1, 60))))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "event", "value"])
    raw.mkdir(parents=True)
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("ts", pa.timestamp("ms", "UTC")),
            ("event", pa.string()),
            ("value", pa.float64()),
        ]
    )
    pq.write_table(
        pa.Table.from_pandas(events, schema=schema, preserve_index=False), raw / "events.parquet"
    )
    pq.write_table(
        pa.table(
            {"item_id": [f"i{i}" for i in range(8)], "concepts": [[f"c{i % 3}"] for i in range(8)]}
        ),
        raw / "items.parquet",
    )
    return events


def clicks_config():  # noqa: ANN201
    return parse_config(
        {
            "name": "sim",
            "source": {"kind": "simulator"},
            "prepare": {
                "label": {"kind": "click"},
                "history_length": 3,
                "split": {"valid_fraction": 0.2, "test_fraction": 0.2},
            },
        }
    )


@pytest.fixture(scope="module")
def clicks_run(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("clicks")
    events = write_click_world(root / "raw")
    manifest, jobs = _run_counting_jobs(spark, clicks_config(), root / "raw", root / "out")
    assert jobs <= MAX_SPARK_JOBS, jobs
    return root, events, manifest, read_examples(root / "out")


@pytest.fixture(scope="module")
def clicks(clicks_run):  # noqa: ANN001, ANN201
    return clicks_run[1:]


def test_impressions_with_a_click_at_the_same_ts_are_positive(clicks) -> None:  # noqa: ANN001
    events, manifest, ex = clicks
    clicked = {(r.user_id, r.item_id, r.ts) for r in events[events.event == "click"].itertuples()}
    imps = events[events.event == "impression"]
    assert len(ex) == len(imps)
    for r in ex.itertuples():
        assert r.label == int((r.user_id, r.item_id, r.ts) in clicked)
    assert manifest["counts"]["positives"] == len(clicked)


def test_clicked_items_enter_history_only_after_their_impression_time(clicks) -> None:  # noqa: ANN001
    events, _, ex = clicks
    cl = events[events.event == "click"]
    for r in ex.itertuples():
        before = cl[(cl.user_id == r.user_id) & (cl.ts < r.ts)].sort_values(["ts", "item_id"])
        assert list(r.history) == list(before.item_id)[-3:]


def test_quantile_split_is_by_time_not_random(clicks) -> None:  # noqa: ANN001
    _, manifest, ex = clicks
    by = {s: ex[ex.split == s].ts for s in ("train", "valid", "test")}
    assert by["train"].max() < by["valid"].min() <= by["valid"].max() < by["test"].min()
    valid_from = pd.Timestamp(manifest["split"]["valid_from"])
    assert by["train"].max() < valid_from <= by["valid"].min()
    n = len(ex)
    assert 0.1 * n <= len(by["test"]) <= 0.35 * n


def test_dwell_rule_labels_clicks_by_their_seconds(spark) -> None:  # noqa: ANN001
    t = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [
        ("u", "a", t, "impression", None),
        ("u", "a", t, "click", 30.0),
        ("u", "b", t, "impression", None),
        ("u", "b", t, "click", 5.0),
        ("u", "c", t, "impression", None),
    ]
    df = spark.createDataFrame(
        pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "event", "value"])
    ).selectExpr("*", "unix_millis(ts) AS ts_ms", "0 AS day")
    cfg = ratings_config(label={"kind": "dwell", "threshold": 10.0})
    got = job.label_examples(df, cfg.prepare).toPandas()
    assert dict(zip(got.item_id, got.label, strict=True)) == {"a": 1, "b": 0, "c": 0}


# ----------------------------------------------------------------------------- per-user split

# user -> (first day, number of ratings); "e" and "f" start after "a".."d" have stopped, so a
# global time split would put all of a..d in train and all of e, f in valid/test.
USER_TIMELINES = {"a": (0, 10), "b": (2, 5), "c": (1, 4), "d": (3, 1), "e": (20, 12), "f": (15, 30)}
USER_SPLIT = {"valid_fraction": 0.25, "test_fraction": 0.1}


def write_user_time_world(raw: Path) -> pd.DataFrame:
    """One rating a day per user; user a's last two share a ts (tie broken by item_id) and
    user e's last rating is the only one of item ``late``."""
    rows = []
    for u, (start, n) in USER_TIMELINES.items():
        for k in range(n):
            day = start + k
            rows.append((u, f"i{(k * 7 + ord(u)) % 9}", _ts(day, 12), 4.0 + (k % 3) - 1))
    a_last = [r for r in rows if r[0] == "a"][-1]
    rows[rows.index(a_last)] = ("a", "x1", a_last[2], 5.0)
    rows.append(("a", "x0", a_last[2], 5.0))  # same ts as x1: 11 ratings for a
    e_last = [r for r in rows if r[0] == "e"][-1]
    rows[rows.index(e_last)] = ("e", "late", e_last[2], 5.0)
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "value"])
    events["event"] = "rating"
    raw.mkdir(parents=True)
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("ts", pa.timestamp("ms", "UTC")),
            ("value", pa.float64()),
            ("event", pa.string()),
        ]
    )
    pq.write_table(
        pa.Table.from_pandas(events, schema=schema, preserve_index=False), raw / "events.parquet"
    )
    item_ids = sorted(set(events.item_id))
    pq.write_table(pa.table({"item_id": item_ids}), raw / "items.parquet")
    return events


def user_time_config():  # noqa: ANN201
    return ratings_config(
        label={"kind": "rating", "threshold": 4.0},
        split={"by": "user_time", **USER_SPLIT},
        history_length=3,
    )


@pytest.fixture(scope="module")
def user_time(spark, tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("user_time")
    events = write_user_time_world(root / "raw")
    manifest, jobs = _run_counting_jobs(spark, user_time_config(), root / "raw", root / "out")
    assert jobs <= MAX_SPARK_JOBS, jobs
    return events, manifest, read_examples(root / "out")


def test_user_time_puts_each_users_latest_examples_in_test(user_time) -> None:  # noqa: ANN001
    _, _, ex = user_time
    for u, g in ex.groupby("user_id"):
        key = list(zip(g.ts, g.item_id, strict=True))
        order = {k: i for i, k in enumerate(sorted(key))}
        rank = pd.Series([order[k] for k in key], index=g.index)
        for earlier, later in (("train", "valid"), ("valid", "test"), ("train", "test")):
            a, b = rank[g.split == earlier], rank[g.split == later]
            if len(a) and len(b):
                assert a.max() < b.min(), (u, earlier, later)
    # Tie at a's last ts: x0 sorts before x1, so x1 alone is a's test example.
    a_test = ex[(ex.user_id == "a") & (ex.split == "test")]
    assert list(a_test.item_id) == ["x1"]
    # Per user, not global: e's test example is earlier than f's last training examples.
    assert ex[(ex.user_id == "e") & (ex.split == "test")].ts.min() < (
        ex[(ex.user_id == "f") & (ex.split == "train")].ts.max()
    )


def test_user_time_takes_floor_of_the_fractions_per_user(user_time) -> None:  # noqa: ANN001
    _, manifest, ex = user_time
    got = {
        u: tuple(int((g.split == s).sum()) for s in ("train", "valid", "test"))
        for u, g in ex.groupby("user_id")
    }
    # n=11: 1 test (floor 1.1), 2 valid (floor 2.75); n=5: 0 test, 1 valid; n=4: 0, 1;
    # n=1: all train; n=12: 1, 3; n=30: 3 test (30 * 0.1), 7 valid (floor 7.5).
    assert got == {
        "a": (8, 2, 1),
        "b": (4, 1, 0),
        "c": (3, 1, 0),
        "d": (1, 0, 0),
        "e": (8, 3, 1),
        "f": (20, 7, 3),
    }
    split = manifest["split"]
    assert split["by"] == "user_time"
    assert (split["valid_fraction"], split["test_fraction"]) == (0.25, 0.1)
    for name, key in (("valid", "valid_from"), ("test", "test_from")):
        assert pd.Timestamp(split[key]) == ex[ex.split == name].ts.min()
    counts = manifest["counts"]
    assert (counts["train"], counts["valid"], counts["test"]) == (44, 14, 5)
    assert counts["users"] == {"train": 6, "valid": 5, "test": 3}


def test_user_time_history_holds_only_strictly_earlier_positives(user_time) -> None:  # noqa: ANN001
    events, _, ex = user_time
    pos = events[events.value >= 4.0]
    for r in ex.itertuples():
        mine = pos[pos.user_id == r.user_id]
        before = mine[mine.ts < r.ts].sort_values(["ts", "item_id"])
        assert list(r.history) == list(before.item_id)[-3:], (r.user_id, r.item_id, r.ts)
        only_now_or_later = set(mine[mine.ts >= r.ts].item_id) - set(before.item_id)
        assert not set(r.history) & only_now_or_later
        n_user = int(((events.user_id == r.user_id) & (events.ts < r.ts)).sum())
        assert r.d_user_prior_events == pytest.approx(math.log1p(n_user), rel=1e-6)
    # a's tied last pair (x0, x1 at one ts) never see each other, though both are positive.
    tied = ex[(ex.user_id == "a") & ex.item_id.isin(["x0", "x1"])]
    assert len(tied) == 2 and all(not {"x0", "x1"} & set(h) for h in tied.history)


def test_user_time_stats_never_see_test_only_values(user_time) -> None:  # noqa: ANN001
    _, manifest, ex = user_time
    train = ex[ex.split == "train"]
    assert ex[ex.item_id == "late"].split.tolist() == ["test"]
    item = manifest["features"]["stats"]["s_item"]
    assert item["distinct"] == train.item_id.nunique() < ex.item_id.nunique()
    assert "late" not in {v for v, _ in item["top"]}
    assert sum(c for _, c in item["top"]) <= len(train)
    assert manifest["features"]["stats"]["s_user"]["values"] == len(train)


def test_user_time_split_rejects_global_dates() -> None:
    with pytest.raises(ValueError, match="by='time' only"):
        ratings_config(split={"by": "user_time", "valid_from": "2024-01-20"})


# ----------------------------------------------------------------------------- Spark Connect

_CONNECT_RUN = """
import json, sys
from pyspark.sql import SparkSession
from recsys.config import parse_config
from spark_jobs import build_training_data as job
config, raw, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
spark = SparkSession.builder.remote("local[2]").getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect"), type(spark)
manifest = job.run(parse_config(config), raw, out, spark)
print(json.dumps(manifest["counts"]))
spark.stop()
"""


def test_the_job_runs_unchanged_under_spark_connect(tmp_path) -> None:  # noqa: ANN001
    """A Spark Connect driver has no JVM: the job must use only public APIs (no ``_jvm``)."""
    import subprocess
    import sys

    for module in ("grpc_status", "zstandard"):  # pyspark[connect]
        pytest.importorskip(module)
    write_ratings_world(tmp_path / "raw")
    config = {"name": "ratings", "source": {"kind": "movielens", "path": "x"}}
    config["prepare"] = ratings_config().prepare.model_dump(mode="json")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _CONNECT_RUN, json.dumps(config), str(tmp_path / "raw")]
        + [str(tmp_path / "out")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["quarantined"] == EXPECTED_QUARANTINE
    assert (tmp_path / "out" / "examples" / "manifest.json").exists()


# ----------------------------------------------------------------------------- same as before


@pytest.mark.parametrize("world", ["ratings", "clicks", "user_time"])
def test_examples_are_those_of_the_earlier_job_without_the_duplicate_column(world, request) -> None:  # noqa: ANN001
    *_, manifest, ex = request.getfixturevalue(world)
    before = pq.read_table(REFERENCE / f"{world}.parquet").to_pandas()
    assert "s_history" in before.columns and "s_history" not in ex.columns
    before = before.drop(columns=["s_history"])
    key = ["user_id", "ts", "item_id", "label"]
    got = ex.sort_values(key).reset_index(drop=True)
    assert list(got.columns) == list(before.columns)
    pd.testing.assert_frame_equal(got, before.sort_values(key).reset_index(drop=True))
    old = json.loads((REFERENCE / f"{world}.manifest.json").read_text())
    assert old["schema"].pop("s_history") == "list<element: string>"
    for key in ("features", "counts", "label_rule", "split", "schema", "source"):
        assert manifest[key] == old[key], key


def test_a_clean_run_writes_no_quarantine_tables_and_readers_see_them_empty(clicks_run) -> None:  # noqa: ANN001
    root, _, manifest, _ = clicks_run
    assert manifest["counts"]["quarantined"] == {}
    quarantine = root / "out" / "quarantine"
    assert quarantine.is_dir() and not list(quarantine.iterdir())  # the release has it, empty
    events = read_quarantine(quarantine, "events")
    assert events.num_rows == 0 and "reason" in events.column_names


# ----------------------------------------------------------------------------- concepts


def test_concept_vocabulary_counts_items_per_normalised_concept(spark) -> None:  # noqa: ANN001
    items = spark.createDataFrame(
        pd.DataFrame(
            {
                "_id": ["a", "b", "c", "d", "e"],
                "concepts": [
                    ["Jazz", " jazz ", "Film  Noir"],  # one item, one concept twice
                    ["JAZZ", "film noir"],
                    ["Jazz", "Rock"],
                    ["rock", "Solo"],
                    None,
                ],
            }
        )
    )
    got = job._concepts(job.concept_counts(items).collect(), min_count=2)
    assert got == {
        "min_count": 2,
        "items": [
            {"id": 0, "name": "jazz", "display": "Jazz", "count": 3},
            {"id": 1, "name": "film noir", "display": "Film  Noir", "count": 2},
            {"id": 2, "name": "rock", "display": "Rock", "count": 2},
        ],
    }
    # the library's rule (and its Python vocabulary) agree with the job's
    lists = [None if c is None else list(c) for c in items.toPandas().concepts]
    assert ConceptVocabulary.from_concept_lists(lists, min_count=2).to_dict() == got
    assert normalise_concept("  Film \t Noir ") == "film noir"
    assert job._concepts(job.concept_counts(items).collect(), min_count=1)["items"][-1] == {
        "id": 3, "name": "solo", "display": "Solo", "count": 1,
    }  # fmt: skip


def test_the_manifest_holds_the_item_concept_vocabulary(ratings) -> None:  # noqa: ANN001
    _, manifest, _ = ratings
    # items: drama on i1, i2, i6; comedy on i2; sci-fi on i4 (min_count 2 keeps drama only)
    assert manifest["concepts"] == {
        "min_count": 2,
        "items": [{"id": 0, "name": "drama", "display": "drama", "count": 3}],
    }
