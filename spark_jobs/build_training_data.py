"""Raw logs (events, items, users) -> training examples + ``manifest.json``, with Spark.

Run::

    spark-submit spark_jobs/build_training_data.py --config configs/movielens.yaml \\
        --raw runs/movielens/raw --out runs/movielens

Input: a directory holding ``events``, ``items`` and (optionally) ``users``, each as Parquet
(``events.parquet`` file or directory, or ``events/`` of ``*.parquet``) or JSON lines
(``events.jsonl`` / ``events.json`` / ``events/`` of ``*.json[l]``; events in JSON are read
with a fixed schema, ``EVENTS_JSON_SCHEMA``). Timestamps may be timestamps, ISO strings, epoch
numbers or numeric strings (seconds, or milliseconds from 1e11), mixed row by row; ids may be
numbers (read as strings).

Output under ``--out`` (published only when the whole run succeeded, as one release behind an
atomically switched pointer, ``spark_jobs.publication``; a failed or killed run leaves the
previous output untouched; a re-run replaces it with identical content):

- ``examples/split=train|valid|test/part-*.parquet`` and ``examples/manifest.json``;
- ``quarantine/<table>/``: rejected rows with their original columns and a ``reason``:
  ``malformed_json`` (the line, in ``_corrupt_record``), ``missing_id``, ``bad_ts`` (null or
  unparseable), ``ts_out_of_window`` (outside ``[prepare.min_ts, prepare.max_ts)``, default
  1970-01-01..2100-01-01: negative, far-future or int64-overflowing times), ``unknown_event``,
  ``bad_value`` (not a number), ``out_of_range`` (``value`` outside
  ``prepare.min_value..max_value``, or NaN), ``unknown_item_id`` (not in items),
  ``duplicate_id`` (items/users). Every reason is counted in ``manifest.counts.quarantined``.

Steps, all as Spark plans (nothing but small aggregates reaches the driver):

1. validate and quarantine; fail if a table's bad fraction > ``prepare.max_bad_fraction``;
2. drop exact duplicate events (same user, item, ts, event);
3. label (``prepare.label``): ``click`` - an impression is positive when a click with the same
   user, item and ts exists; ``dwell`` - ... and that click's (or ``dwell`` event's) value >=
   threshold; ``rating`` - a rating is positive when >= threshold, ratings in
   ``[drop_between, threshold)`` are dropped, the rest are negatives;
4. ``lt7``/``lt14``: the user's distinct active days (any event kind) in the 7/14 days starting
   the event's UTC day;
5. ``history``: the user's last ``history_length`` positive items with ts strictly before the
   event's ts (oldest first); positives at the same ts are never visible;
6. dense features from strictly earlier events only: ``d_user_prior_events``,
   ``d_user_prior_positives``, ``d_item_prior_events``, ``d_item_prior_positives`` (log1p of
   counts), ``d_item_age_days`` (when items have ``created_ts``; >= 0);
7. sparse features (``list<string>``, raw values) per the naming rule in docs/data-contract.md plus
   context ``s_hour`` (``"0"``..``"23"``) and ``s_weekday`` (``"Mon"``..``"Sun"``);
8. split, never random (``prepare.split.by``): ``time`` - ``ts < valid_from`` train,
   ``< test_from`` valid, else test; cut-offs from ``prepare.split`` (ISO dates, UTC when no
   offset) or ``approxQuantile`` of example ts; ``user_time`` - per user, examples ordered by
   (ts, item_id): the last ``floor(n * test_fraction)`` test, the ``floor(n * valid_fraction)``
   before them valid, the rest train (window functions; rows without a user_id fall back to
   the global time cut-offs). Features are as-of each event either way;
9. feature statistics (``spark_jobs.stats``) of the TRAIN split only into the manifest: they
   size embedding tables and standardise dense inputs, so valid/test must not leak into them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from recsys.config import PipelineConfig, PrepareConfig, load_config  # noqa: E402
from recsys.contract import EVENT_KINDS  # noqa: E402
from recsys.features.sparse_rule import (  # noqa: E402
    CONCEPT_SEPARATOR,
    ColumnKind,
    Derivation,
    SparseFeature,
    context_features,
    entity_features,
)
from spark_jobs.job_run import JobRun  # noqa: E402
from spark_jobs.quality import REASON, DataQualityError, first_reason  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.stats import arrow_schema  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

__all__ = [
    "DataQualityError",
    "build_examples",
    "label_examples",
    "main",
    "read_raw_table",
    "run",
    "split_column",
]

DAY_MS = 86_400_000
# Tolerance for floor(n * fraction): 30 * 0.1 must be 3 even when the product rounds below it.
_FLOOR_EPS = 1e-9


def _empty() -> F.Column:
    """An empty ``array<string>`` literal (built lazily: columns need an active session)."""
    return F.array().cast("array<string>")


CONTRACT_COLUMNS = ["label", "split", "user_id", "item_id", "ts", "lt7", "lt14", "history"]


# ----------------------------------------------------------------------------- reading


def _data_format(storage: Storage, path: str) -> str:
    lower = path.lower()
    for ext, fmt in ((".parquet", "parquet"), (".jsonl", "json"), (".ndjson", "json")):
        if lower.endswith(ext) or lower.endswith(ext + ".gz"):
            return fmt
    if lower.endswith((".json", ".json.gz")):
        return "json"
    if storage.is_dir(path):
        files = storage.list(path)
        if not files:
            raise FileNotFoundError(f"{path}: empty directory")
        return _data_format(storage, files[0]) if not storage.is_dir(files[0]) else "parquet"
    raise ValueError(f"{path}: cannot tell the format (expected .parquet or .json/.jsonl)")


# Events in JSON lines are read with this schema, never an inferred one: one row's string ``ts``
# among numbers must not turn the whole column into strings (or the reverse), and a value that
# does not parse must be seen (and counted) rather than read as null. Every field is read as
# its text and parsed per row; a line that is not JSON keeps its text in ``_corrupt_record``.
# Other (context) fields of JSON events are not read.
CORRUPT_RECORD = "_corrupt_record"
EVENTS_JSON_SCHEMA = (
    "user_id string, item_id string, ts string, event string, value string, "
    f"{CORRUPT_RECORD} string"
)
# Event times outside [prepare.min_ts, prepare.max_ts) are quarantined as ``ts_out_of_window``:
# negative times, far-future years and numbers that would overflow int64 milliseconds are bad
# data, not events.
# Epoch numbers below this magnitude are seconds, at or above it milliseconds (1e11 s is 5138 AD).
_SECONDS_BELOW = 1e11
# Columns the tagging adds; quarantined rows keep only the input's own columns (+ reason).
_INTERNAL_COLUMNS = ("_uid", "_iid", "_ts_ms", "_ts", "_event", "_value", "_id")


def read_raw_table(
    spark: SparkSession,
    raw_dir: str | Path,
    name: str,
    required: bool = True,
    schema: str | None = None,
) -> DataFrame | None:
    """Read raw table ``name`` from ``raw_dir`` (Parquet or JSON lines, file or directory).

    ``schema`` (a DDL string) applies to JSON input only: Parquet carries its own types.
    """
    storage = Storage(spark)
    base = str(raw_dir).rstrip("/")
    for cand in (
        f"{base}/{name}.parquet",
        f"{base}/{name}",
        f"{base}/{name}.jsonl",
        f"{base}/{name}.json",
        f"{base}/{name}.ndjson",
    ):
        if storage.exists(cand):
            fmt = _data_format(storage, cand)
            reader = spark.read.format(fmt)
            if fmt == "json":
                reader = reader.option("mode", "PERMISSIVE")
                if schema is not None:
                    reader = reader.schema(schema)
                    if CORRUPT_RECORD in schema:
                        reader = reader.option("columnNameOfCorruptRecord", CORRUPT_RECORD)
            return reader.load(cand)
    if required:
        raise FileNotFoundError(
            f"{base}: no {name} table ({name}.parquet, {name}/, {name}.jsonl or {name}.json)"
        )
    return None


def _epoch_ms(number: F.Column) -> F.Column:
    """Epoch seconds (magnitude below 1e11) or milliseconds -> milliseconds as a double (no
    integer cast, so nothing can wrap); NaN -> null."""
    return F.when(F.isnan(number), None).otherwise(
        F.when(F.abs(number) < _SECONDS_BELOW, number * 1000.0).otherwise(number)
    )


def _ts_ms_column(df: DataFrame, name: str) -> F.Column:
    """Column ``name`` as UTC epoch milliseconds (double), whatever form each row has:
    timestamp, date, epoch number, numeric string or ISO string. Null when it does not parse;
    not bounded (see ``_ts_column``)."""
    if name not in df.columns:
        return F.lit(None).cast("double")
    dtype = df.schema[name].dataType
    c = F.col(name)
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType):
        return F.unix_millis(c.cast("timestamp")).cast("double")
    if isinstance(dtype, T.NumericType):
        return _epoch_ms(c.cast("double"))
    if isinstance(dtype, T.StringType):
        text = F.trim(c)
        number = text.try_cast("double")
        iso = F.unix_millis(F.try_to_timestamp(text)).cast("double")
        return F.when(number.isNotNull(), _epoch_ms(number)).otherwise(iso)
    return F.lit(None).cast("double")


def ts_window_ms(prepare: PrepareConfig) -> tuple[int, int]:
    """``[prepare.min_ts, prepare.max_ts)``: plausible event times in epoch ms."""
    low, high = prepare.ts_window_s()
    return low * 1000, high * 1000


def _in_window(ms: F.Column, window_ms: tuple[int, int]) -> F.Column:
    return (ms >= float(window_ms[0])) & (ms < float(window_ms[1]))


def _ts_column(df: DataFrame, name: str, window_ms: tuple[int, int] | None = None) -> F.Column:
    """Parse column ``name`` to a UTC timestamp; unparseable values and times outside
    ``window_ms`` (default: the default ``prepare.min_ts``..``max_ts``) become null."""
    window_ms = window_ms or ts_window_ms(PrepareConfig())
    ms = _ts_ms_column(df, name)
    return F.when(_in_window(ms, window_ms), F.timestamp_millis(ms.cast("long")))


def _id_column(df: DataFrame, name: str) -> F.Column:
    if name not in df.columns:
        return F.lit(None).cast("string")
    return F.trim(F.col(name).cast("string"))


def _missing(c: F.Column) -> F.Column:
    return c.isNull() | (c == "")


def _column_kinds(df: DataFrame) -> dict[str, ColumnKind]:
    """The feature rule's view of a Spark schema: string, list or other, per column."""
    kinds = {}
    for f in df.schema.fields:
        if isinstance(f.dataType, T.StringType):
            kinds[f.name] = ColumnKind.STRING
        elif isinstance(f.dataType, T.ArrayType):
            kinds[f.name] = ColumnKind.LIST
        else:
            kinds[f.name] = ColumnKind.OTHER
    return kinds


def _feature_column(df: DataFrame, feature: SparseFeature) -> F.Column:
    """Spark expression of ``feature`` over ``df``; the same values as the library's
    ``recsys.features.sparse_rule.derive_values`` gives row by row."""
    if feature.column not in df.columns:
        return _empty()
    c = F.col(feature.column)
    dtype = df.schema[feature.column].dataType
    how = feature.derivation
    if how is Derivation.ID:
        text = F.trim(c.cast("string"))
        return F.when(c.isNull() | (text == ""), _empty()).otherwise(F.array(text))
    if how is Derivation.VALUE:
        return F.when(c.isNull(), _empty()).otherwise(F.array(c.cast("string")))
    if how is Derivation.CONCEPTS:
        if isinstance(dtype, T.ArrayType):
            values = c.cast("array<string>")
            return F.coalesce(F.filter(values, lambda v: v.isNotNull() & (v != "")), _empty())
        if isinstance(dtype, T.StringType):
            parts = F.split(c, re.escape(CONCEPT_SEPARATOR))
            return F.coalesce(F.filter(parts, lambda v: v != ""), _empty())
        return _empty()
    if how is Derivation.LIST:
        return F.coalesce(F.filter(c.cast("array<string>"), lambda v: v.isNotNull()), _empty())
    part = F.hour(c).cast("string") if how is Derivation.HOUR else F.date_format(c, "EEE")
    return F.when(c.isNull(), _empty()).otherwise(F.array(part))


# ----------------------------------------------------------------------------- validation


def _tag_events(events: DataFrame, item_ids: DataFrame, prepare: PrepareConfig) -> DataFrame:
    """Events with ``_uid, _iid, _ts_ms, _ts, _event, _value`` parsed and a ``reason``:
    ``malformed_json``, ``missing_id``, ``bad_ts`` (null or unparseable), ``ts_out_of_window``
    (outside ``ts_window_ms``: negative, far future, overflowing), ``unknown_event``,
    ``bad_value`` (a value that is not a number), ``out_of_range``, ``unknown_item_id``."""
    has_value = "value" in events.columns
    raw_value = F.col("value") if has_value else F.lit(None)
    value_text = F.trim(raw_value.cast("string"))
    ev = events.select(
        "*",
        _id_column(events, "user_id").alias("_uid"),
        _id_column(events, "item_id").alias("_iid"),
        _ts_ms_column(events, "ts").alias("_ts_ms"),
        (F.col("event").cast("string") if "event" in events.columns else F.lit(None))
        .cast("string")
        .alias("_event"),
        F.when(value_text == "", None).otherwise(raw_value.try_cast("double")).alias("_value"),
        (value_text.isNotNull() & (value_text != "")).alias("_has_value"),
    )
    window = ts_window_ms(prepare)
    ev = ev.withColumn(
        "_ts",
        F.when(
            _in_window(F.col("_ts_ms"), window), F.timestamp_millis(F.col("_ts_ms").cast("long"))
        ),
    )
    ev = ev.join(item_ids, ev["_iid"] == item_ids["_known_iid"], "left")
    v = F.col("_value")
    out_of_range = F.isnan(v)
    if prepare.min_value is not None:
        out_of_range = out_of_range | (v < prepare.min_value)
    if prepare.max_value is not None:
        out_of_range = out_of_range | (v > prepare.max_value)
    malformed = (
        F.col(CORRUPT_RECORD).isNotNull() if CORRUPT_RECORD in events.columns else F.lit(False)
    )
    reason = first_reason(
        (malformed, "malformed_json"),
        (_missing(F.col("_uid")) | _missing(F.col("_iid")), "missing_id"),
        (F.col("_ts_ms").isNull(), "bad_ts"),
        (F.col("_ts").isNull(), "ts_out_of_window"),
        (F.col("_event").isNull() | ~F.col("_event").isin(*EVENT_KINDS), "unknown_event"),
        (F.col("_has_value") & v.isNull(), "bad_value"),
        (v.isNotNull() & out_of_range, "out_of_range"),
        (F.col("_known_iid").isNull(), "unknown_item_id"),
    )
    return ev.withColumn(REASON, reason).drop("_known_iid", "_has_value")


def _tag_entities(df: DataFrame, id_col: str) -> DataFrame:
    """Tag rows of items/users: ``missing_id``, or ``duplicate_id`` for all but one per id."""
    key = _id_column(df, id_col)
    tagged = df.withColumn("_id", key)
    order = [F.col(c) for c in ("created_ts", "title") if c in df.columns] or [F.lit(0)]
    w = Window.partitionBy("_id").orderBy(*[o.asc_nulls_last() for o in order])
    tagged = tagged.withColumn("_rn", F.row_number().over(w))
    reason = first_reason(
        (_missing(F.col("_id")), "missing_id"),
        (F.col("_rn") > 1, "duplicate_id"),
    )
    return tagged.withColumn(REASON, reason).drop("_rn")


# ----------------------------------------------------------------------------- features


def label_examples(good: DataFrame, prepare: PrepareConfig) -> DataFrame:
    """Rows ``user_id, item_id, ts, ts_ms, day, label`` per the label rule."""
    rule = prepare.label
    base = ["user_id", "item_id", "ts", "ts_ms", "day"]
    if rule.kind == "rating":
        r = good.filter((F.col("event") == "rating") & F.col("value").isNotNull())
        if rule.drop_between is not None:
            r = r.filter(
                ~((F.col("value") >= rule.drop_between) & (F.col("value") < rule.threshold))
            )
        return r.select(*base, (F.col("value") >= rule.threshold).cast("byte").alias("label"))
    kinds = ["click"] if rule.kind == "click" else ["click", "dwell"]
    signal = (
        good.filter(F.col("event").isin(*kinds))
        .groupBy("user_id", "item_id", "ts_ms")
        .agg(F.max("value").alias("_signal"), F.count("*").alias("_n"))
    )
    imps = good.filter(F.col("event") == "impression").select(*base)
    ex = imps.join(signal, ["user_id", "item_id", "ts_ms"], "left")
    if rule.kind == "click":
        label = F.col("_n").isNotNull()
    else:
        label = F.coalesce(F.col("_signal") >= rule.threshold, F.lit(False))
    return ex.select(*base, label.cast("byte").alias("label"))


def _user_features(good: DataFrame, positives: DataFrame, history_length: int) -> DataFrame:
    """Per (user_id, ts_ms) of any event: prior events, prior positives and history, all
    from events with ts strictly before ts_ms (an as-of join in one window pass)."""
    per_ts = good.groupBy("user_id", "ts_ms").agg(F.count("*").alias("_n"))
    if history_length > 0:
        w_last = (
            Window.partitionBy("user_id")
            .orderBy("ts_ms", "item_id")
            .rowsBetween(-(history_length - 1), 0)
        )
        hist = F.collect_list("item_id").over(w_last)
    else:
        hist = _empty()
    w_upto = (
        Window.partitionBy("user_id").orderBy("ts_ms").rangeBetween(Window.unboundedPreceding, 0)
    )
    w_in_ts = Window.partitionBy("user_id", "ts_ms").orderBy(F.desc("item_id"))
    # One snapshot per (user, ts) holding positives up to and including ts.
    snaps = (
        positives.select(
            "user_id",
            "ts_ms",
            hist.alias("_hist"),
            F.count("*").over(w_upto).alias("_npos"),
            F.row_number().over(w_in_ts).alias("_rn"),
        )
        .filter(F.col("_rn") == 1)
        .drop("_rn")
    )
    # At equal ts, event rows (_k=0) sort before snapshots (_k=1): a snapshot is visible only
    # to strictly later events.
    rows = per_ts.select(
        "user_id",
        "ts_ms",
        "_n",
        F.lit(0).alias("_k"),
        F.lit(None).cast("array<string>").alias("_hist"),
        F.lit(None).cast("long").alias("_npos"),
    ).unionByName(
        snaps.select(
            "user_id",
            "ts_ms",
            F.lit(None).cast("long").alias("_n"),
            F.lit(1).alias("_k"),
            "_hist",
            "_npos",
        )
    )
    w = Window.partitionBy("user_id").orderBy("ts_ms", "_k")
    before = w.rowsBetween(Window.unboundedPreceding, -1)
    upto = w.rowsBetween(Window.unboundedPreceding, 0)
    return (
        rows.select(
            "user_id",
            "ts_ms",
            "_k",
            F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_user_prior_events"),
            F.coalesce(F.last("_npos", ignorenulls=True).over(upto), F.lit(0)).alias(
                "_user_prior_pos"
            ),
            F.coalesce(F.last("_hist", ignorenulls=True).over(upto), _empty()).alias("history"),
        )
        .filter(F.col("_k") == 0)
        .drop("_k")
    )


def prior_count_features() -> dict[str, F.Column]:
    """The dense prior-count features, ``log1p`` of the counts ``_user_features`` and
    ``_item_features`` compute (also read by ``spark_jobs/materialize_features.py``)."""

    def log1p(c: str) -> F.Column:
        return F.log1p(F.coalesce(F.col(c), F.lit(0)).cast("double")).cast("float")

    return {
        "d_user_prior_events": log1p("_user_prior_events"),
        "d_user_prior_positives": log1p("_user_prior_pos"),
        "d_item_prior_events": log1p("_item_prior_events"),
        "d_item_prior_positives": log1p("_item_prior_pos"),
    }


def _item_features(good: DataFrame, positives: DataFrame) -> DataFrame:
    """Per (item_id, ts_ms): events and positives on the item strictly before ts_ms."""
    counts = (
        good.select("item_id", "ts_ms", F.lit(1).alias("_n"), F.lit(0).alias("_p"))
        .unionByName(
            positives.select("item_id", "ts_ms", F.lit(0).alias("_n"), F.lit(1).alias("_p"))
        )
        .groupBy("item_id", "ts_ms")
        .agg(F.sum("_n").alias("_n"), F.sum("_p").alias("_p"))
    )
    before = (
        Window.partitionBy("item_id").orderBy("ts_ms").rowsBetween(Window.unboundedPreceding, -1)
    )
    return counts.select(
        "item_id",
        "ts_ms",
        F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_item_prior_events"),
        F.coalesce(F.sum("_p").over(before), F.lit(0)).alias("_item_prior_pos"),
    )


def _activity(good: DataFrame) -> DataFrame:
    """Per (user_id, day): ``lt7``/``lt14``, distinct active days in [day, day+7) / +14)."""
    days = good.select("user_id", "day").distinct()
    w = Window.partitionBy("user_id").orderBy("day")
    return days.select(
        "user_id",
        "day",
        F.count("*").over(w.rangeBetween(0, 6)).cast("byte").alias("lt7"),
        F.count("*").over(w.rangeBetween(0, 13)).cast("byte").alias("lt14"),
    )


def _parse_cutoff(value: str, key: str) -> int:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"prepare.split.{key}: {value!r} is not an ISO date/time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def split_cutoffs(examples: DataFrame, prepare: PrepareConfig) -> tuple[int, int]:
    """``(valid_from_ms, test_from_ms)``: explicit ISO cut-offs, or approxQuantile of ts."""
    s = prepare.split
    if (s.valid_from is None) != (s.test_from is None):
        raise ValueError("prepare.split: set both valid_from and test_from, or neither")
    if s.valid_from is not None and s.test_from is not None:
        v, t = _parse_cutoff(s.valid_from, "valid_from"), _parse_cutoff(s.test_from, "test_from")
    else:
        qs = [1.0 - s.valid_fraction - s.test_fraction, 1.0 - s.test_fraction]
        got = examples.approxQuantile("ts_ms", qs, prepare.quantile_error)
        if len(got) != 2:
            raise ValueError("prepare.split: no examples to derive time cut-offs from")
        v, t = int(got[0]), int(got[1])
    if v > t:
        raise ValueError(f"prepare.split: valid_from {_iso(v)} is after test_from {_iso(t)}")
    return v, t


def split_column(prepare: PrepareConfig, cutoffs: tuple[int, int]) -> F.Column:
    """``"train"|"valid"|"test"`` per example (needs ``user_id, item_id, ts_ms, label``).

    ``by="time"``: global cut-offs ``(valid_from_ms, test_from_ms)``. ``by="user_time"``: the
    user's last ``floor(n * test_fraction)`` examples in (ts, item_id) order are test, the
    ``floor(n * valid_fraction)`` before them valid, the rest train; null user ids use the
    global cut-offs.
    """
    valid_ms, test_ms = cutoffs
    by_time = (
        F.when(F.col("ts_ms") < valid_ms, "train")
        .when(F.col("ts_ms") < test_ms, "valid")
        .otherwise("test")
    )
    s = prepare.split
    if s.by == "time":
        return by_time
    user = Window.partitionBy("user_id")
    n = F.count(F.lit(1)).over(user)
    # (ts, item_id) is unique per user after de-duplication; label only makes ties total.
    from_end = n - F.row_number().over(user.orderBy("ts_ms", "item_id", "label"))
    n_test = F.floor(n * s.test_fraction + _FLOOR_EPS)
    n_valid = F.floor(n * s.valid_fraction + _FLOOR_EPS)
    per_user = (
        F.when(from_end < n_test, "test")
        .when(from_end < n_test + n_valid, "valid")
        .otherwise("train")
    )
    return F.when(F.col("user_id").isNull(), by_time).otherwise(per_user)


def build_examples(
    good: DataFrame,
    items: DataFrame,
    users: DataFrame | None,
    prepare: PrepareConfig,
    labelled: DataFrame,
    cutoffs: tuple[int, int],
) -> tuple[DataFrame, dict[str, list[str]]]:
    """Join labels, LT, history, dense and sparse features; returns (examples, feature lists).

    ``good``: valid, de-duplicated events (``user_id, item_id, ts, ts_ms, day, event, value``);
    ``items``/``users``: valid entity rows; ``labelled``: output of the label rule.
    """
    positives = labelled.filter(F.col("label") == 1).select("user_id", "item_id", "ts_ms")
    ex = (
        labelled.join(
            _user_features(good, positives, prepare.history_length), ["user_id", "ts_ms"], "left"
        )
        .join(_activity(good), ["user_id", "day"], "left")
        .join(_item_features(good, positives), ["item_id", "ts_ms"], "left")
    )
    # The feature rule (recsys.features.sparse_rule): ids and history from the event row,
    # concepts and categorical attributes from the entity row, context from the event ts.
    item_rule = entity_features("item", _column_kinds(items), prepare.text_columns)
    user_kinds = _column_kinds(users) if users is not None else {}
    user_rule = entity_features("user", user_kinds, prepare.text_columns)
    from_event = {"item_id", "user_id", "history"}
    item_cols = [
        F.col("_id").alias("item_id"),
        *[_feature_column(items, f).alias(f.name) for f in item_rule if f.column not in from_event],
    ]
    has_created = "created_ts" in items.columns
    if has_created:
        item_cols.append(_ts_column(items, "created_ts").alias("_created_ts"))
    ex = ex.join(items.select(*item_cols), "item_id", "left")
    if users is not None:
        user_cols = [
            _feature_column(users, f).alias(f.name) for f in user_rule if f.column not in from_event
        ]
        ex = ex.join(users.select(F.col("_id").alias("user_id"), *user_cols), "user_id", "left")

    def rule_column(f: SparseFeature) -> F.Column:
        if f.column in from_event:
            return _feature_column(ex, f)
        # entity rows missing from their table (left join) get empty lists
        return F.coalesce(F.col(f.name), _empty()) if f.name in ex.columns else _empty()

    split = split_column(prepare, cutoffs)
    user_sparse = {f.name: rule_column(f) for f in user_rule}
    item_sparse = {f.name: rule_column(f) for f in item_rule}
    context_sparse = {f.name: _feature_column(ex, f) for f in context_features()}

    dense = prior_count_features()
    if has_created:
        age = (F.col("ts_ms") - F.unix_millis("_created_ts")) / DAY_MS
        dense["d_item_age_days"] = F.greatest(F.coalesce(age, F.lit(0.0)), F.lit(0.0)).cast("float")
    sparse = {**user_sparse, **item_sparse, **context_sparse}
    out = ex.select(
        F.col("label").cast("byte").alias("label"),
        split.alias("split"),
        "user_id",
        "item_id",
        "ts",
        F.col("lt7").cast("byte").alias("lt7"),
        F.col("lt14").cast("byte").alias("lt14"),
        F.coalesce("history", _empty()).alias("history"),
        *[expr.alias(name) for name, expr in sparse.items()],
        *[expr.alias(name) for name, expr in dense.items()],
    )
    features = {
        "sparse": list(sparse),
        "dense": list(dense),
        "user": list(user_sparse),
        "item": list(item_sparse),
        "context": list(context_sparse),
    }
    return out, features


# ----------------------------------------------------------------------------- the job


def _split_info(
    prepare: PrepareConfig, cutoffs: tuple[int, int], per_split: dict[str, Any]
) -> dict[str, Any]:
    """Manifest ``split``. ``time``: the cut-offs used (fractions null when dates were given).
    ``user_time``: ``valid_from``/``test_from`` are the earliest ts in valid/test (null when
    empty), informative only: per-user splits overlap in global time."""
    s = prepare.split
    info: dict[str, Any] = {"by": s.by}
    if s.by == "time":
        explicit = s.valid_from is not None
        info |= {
            "valid_from": _iso(cutoffs[0]),
            "test_from": _iso(cutoffs[1]),
            "valid_fraction": None if explicit else s.valid_fraction,
            "test_fraction": None if explicit else s.test_fraction,
        }
    else:

        def earliest(name: str) -> str | None:
            r = per_split.get(name)
            return None if r is None or r["min_ts_ms"] is None else _iso(int(r["min_ts_ms"]))

        info |= {
            "valid_from": earliest("valid"),
            "test_from": earliest("test"),
            "valid_fraction": s.valid_fraction,
            "test_fraction": s.test_fraction,
            "order": ["ts", "item_id"],
        }
    return info


def run(
    cfg: PipelineConfig,
    raw_dir: str | Path,
    out_dir: str | Path,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Build ``<out_dir>/examples`` (+ manifest) and ``<out_dir>/quarantine``; return the manifest.

    Raises ``DataQualityError`` (nothing published) when a table's bad fraction exceeds
    ``cfg.prepare.max_bad_fraction``.
    """
    spark = spark or build_session(cfg.spark)
    prepare = cfg.prepare
    with JobRun(spark, out_dir) as job:
        good, good_items, good_users, by_kind = _validated_inputs(job, raw_dir, prepare)
        ev_quality = next(t for t in job.quality.tables if t.table == "events")
        n_good = sum(by_kind.values())

        labelled = job.cache(label_examples(good, prepare))
        cutoffs = split_cutoffs(labelled, prepare)
        examples, features = build_examples(
            good, good_items, good_users, prepare, labelled, cutoffs
        )
        written = job.write_examples(examples)
        job.uncache_all()

        per_split = {
            r["split"]: r
            for r in written.groupBy("split")
            .agg(
                F.count("*").alias("rows"),
                F.countDistinct("user_id").alias("users"),
                F.min(F.unix_millis("ts")).alias("min_ts_ms"),
            )
            .collect()
        }
        split_counts = {s: int(r["rows"]) for s, r in per_split.items()}
        positives = written.filter(F.col("label") == 1).count()
        n_examples = sum(split_counts.values())
        features |= job.train_stats(
            written, features["sparse"], features["dense"], prepare.top_values
        )
        label_events = (
            by_kind.get("rating", 0)
            if prepare.label.kind == "rating"
            else by_kind.get("impression", 0)
        )
        manifest: dict[str, Any] = {
            "source": cfg.source.kind,
            "features": features,
            "counts": {
                **{s: split_counts.get(s, 0) for s in ("train", "valid", "test")},
                "users": {
                    s: int(per_split[s]["users"]) if s in per_split else 0
                    for s in ("train", "valid", "test")
                },
                "examples": n_examples,
                "positives": positives,
                "quarantined": job.quality.by_reason(),
                "tables": job.quality.by_table(),
                "events_in": ev_quality.rows,
                "events_valid": n_good,
                "duplicates": ev_quality.rows - ev_quality.bad_rows - n_good,
                "events_by_kind": dict(sorted(by_kind.items())),
                "dropped_by_label_rule": label_events - n_examples,
            },
            "label_rule": prepare.label.model_dump(mode="json"),
            "split": _split_info(prepare, cutoffs, per_split),
            "params": {
                "prepare": prepare.model_dump(mode="json"),
                "raw_dir": str(raw_dir),
                "history_order": "oldest first, strictly before ts",
                "ts_window": [_iso(ms) for ms in ts_window_ms(prepare)],
            },
            "schema": arrow_schema(written),
        }
        job.publish(manifest)
        return manifest


def _validated_inputs(
    job: JobRun, raw_dir: str | Path, prepare: PrepareConfig
) -> tuple[DataFrame, DataFrame, DataFrame | None, dict[str, int]]:
    """Read, tag and quarantine the raw tables, apply the bad-fraction gate; return the good
    ``(events, items, users)`` (events de-duplicated with ``ts_ms`` and ``day``, cached) and
    the good events per kind."""
    spark = job.spark
    events = read_raw_table(spark, raw_dir, "events", schema=EVENTS_JSON_SCHEMA)
    items = read_raw_table(spark, raw_dir, "items")
    users = read_raw_table(spark, raw_dir, "users", required=False)
    assert events is not None and items is not None

    def original(tagged: DataFrame) -> list[str]:
        return [c for c in tagged.columns if c not in _INTERNAL_COLUMNS and c != REASON]

    items_t = job.cache(_tag_entities(items, "item_id"))
    job.quarantine("items", items_t, *original(items_t))
    good_items = items_t.filter(F.col(REASON).isNull()).drop(REASON)
    good_users = None
    if users is not None:
        users_t = job.cache(_tag_entities(users, "user_id"))
        job.quarantine("users", users_t, *original(users_t))
        good_users = users_t.filter(F.col(REASON).isNull()).drop(REASON)

    known = good_items.select(F.col("_id").alias("_known_iid"))
    events_t = job.cache(_tag_events(events, known, prepare))
    job.quarantine("events", events_t, *original(events_t))
    job.check_quality(prepare.max_bad_fraction)

    good = job.cache(
        events_t.filter(F.col(REASON).isNull())
        .select(
            F.col("_uid").alias("user_id"),
            F.col("_iid").alias("item_id"),
            F.col("_ts").alias("ts"),
            F.col("_event").alias("event"),
            F.col("_value").alias("value"),
        )
        .dropDuplicates(["user_id", "item_id", "ts", "event"])
        .withColumn("ts_ms", F.unix_millis("ts"))
        .withColumn("day", F.floor(F.col("ts_ms") / DAY_MS).cast("int"))
    )
    by_kind = {r["event"]: int(r["count"]) for r in good.groupBy("event").count().collect()}
    events_t.unpersist()  # ``good`` is materialised: only it stays in memory
    return good, good_items, good_users, by_kind


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--config X.yaml --raw DIR --out DIR``; prints the counts as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="pipeline YAML (prepare + spark sections)")
    p.add_argument("--raw", help="raw-log directory (default: <output_dir>/raw)")
    p.add_argument("--out", help="output directory (default: the config's output_dir)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    raw = args.raw or str(cfg.out / "raw")
    out = args.out or str(cfg.out)
    try:
        manifest = run(cfg, raw, out)
    except (DataQualityError, FileNotFoundError, ValueError) as e:
        print(f"build_training_data: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["counts"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
