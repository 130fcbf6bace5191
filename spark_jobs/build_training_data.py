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
- ``quarantine/<table>/`` (only for tables that rejected rows; readers take a missing one as
  empty: ``spark_jobs.quality.read_quarantine``): rejected rows with their original columns and
  a ``reason``:
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
   event's ts (oldest first); positives at the same ts are never visible. It is also the
   sparse feature ``s_history``, which examples do not store a second time;
6. dense features from strictly earlier events only: ``d_user_prior_events``,
   ``d_user_prior_positives``, ``d_item_prior_events``, ``d_item_prior_positives`` (log1p of
   counts), ``d_item_age_days`` (when items have ``created_ts``; >= 0);
7. sparse features (``list<string>``, raw values) per the naming rule in docs/data-contract.md plus
   context ``s_hour`` (``"0"``..``"23"``) and ``s_weekday`` (``"Mon"``..``"Sun"``);
8. split, never random (``prepare.split.by``): ``time`` - ``ts < valid_from`` train,
   ``< test_from`` valid, else test; cut-offs from ``prepare.split`` (ISO dates, UTC when no
   offset) or ``approxQuantile`` of example ts; ``user_time`` - per user, examples ordered by
   (ts, item_id): the last ``floor(n * test_fraction)`` test, the ``floor(n * valid_fraction)``
   before them valid, the rest train (a running count in the user's window; no quantile).
   Features are as-of each event either way;
9. feature statistics (``spark_jobs.stats``) of the TRAIN split only into the manifest: they
   size embedding tables and standardise dense inputs, so valid/test must not leak into them;
10. the item concept vocabulary (``manifest.concepts``, docs/data-contract.md).

How the steps run as few Spark passes as possible is described above ``event_keys`` and in
docs/spark.md ("How it runs").
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import DataFrame, Row, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from recsys.config import LabelRule, PipelineConfig, PrepareConfig, load_config  # noqa: E402
from recsys.contract import EVENT_KINDS  # noqa: E402
from recsys.features.sparse_rule import (  # noqa: E402
    CONCEPT_SEPARATOR,
    CONCEPTS,
    ColumnKind,
    Derivation,
    SparseFeature,
    context_features,
    entity_features,
    example_column,
)
from recsys.features.vocabulary import concept_vocabulary  # noqa: E402
from spark_jobs.job_run import JobRun  # noqa: E402
from spark_jobs.quality import REASON, DataQualityError, count_rows, first_reason  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.stats import arrow_schema, example_statistics, summary_row  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

__all__ = [
    "DataQualityError",
    "build_examples",
    "concept_counts",
    "event_keys",
    "label_examples",
    "main",
    "read_raw_table",
    "run",
    "split_cutoffs",
    "user_rows",
]

DAY_MS = 86_400_000
SPLITS = ("train", "valid", "test")
HISTORY_COLUMN = "history"
# The plan is partitioned by hand (two shuffles of narrow rows, broadcast joins of the entity
# tables, one sort per user): adaptive execution would only cut each action into one Spark job
# per query stage (37 instead of 10 on MovieLens), each with its own scheduling cost.
RUN_SETTINGS = {"spark.sql.adaptive.enabled": "false"}
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


def split_cutoffs(examples: DataFrame | None, prepare: PrepareConfig) -> tuple[int, int] | None:
    """``(valid_from_ms, test_from_ms)`` of ``split.by="time"``: the explicit ISO cut-offs, or
    ``approxQuantile`` of the examples' ``ts_ms`` (relative error ``prepare.quantile_error``);
    None for ``user_time``, whose split needs no global cut-off (every example has a user)."""
    s = prepare.split
    if (s.valid_from is None) != (s.test_from is None):
        raise ValueError("prepare.split: set both valid_from and test_from, or neither")
    if s.by == "user_time":
        return None
    if s.valid_from is not None and s.test_from is not None:
        v, t = _parse_cutoff(s.valid_from, "valid_from"), _parse_cutoff(s.test_from, "test_from")
    else:
        if examples is None:
            raise ValueError("prepare.split: fractions need the examples to derive cut-offs from")
        qs = [1.0 - s.valid_fraction - s.test_fraction, 1.0 - s.test_fraction]
        got = examples.approxQuantile("ts_ms", qs, prepare.quantile_error)
        if len(got) != 2:
            raise ValueError("prepare.split: no examples to derive time cut-offs from")
        v, t = int(got[0]), int(got[1])
    if v > t:
        raise ValueError(f"prepare.split: valid_from {_iso(v)} is after test_from {_iso(t)}")
    return v, t


# ----------------------------------------------------------------------------- the pipeline
#
# Two shuffles of narrow rows carry the job. The valid events are partitioned by item: one
# aggregation per (item, user, ts) de-duplicates them and applies the label rule, and one window
# counts the item's earlier events and positives (``event_keys``). Those key rows are then
# partitioned by user, and ONE sort of each user's timeline (events, history snapshots and
# active days, unioned) gives the history, the user's prior counts, lt7/lt14 and the per-user
# split (``user_rows``). Entity features join the user-partitioned rows last (broadcast when
# the entity tables are small), and the examples are written without sorting them by split.

KEY = ("item_id", "user_id", "ts_ms")


def _label_columns(rule: LabelRule) -> tuple[F.Column, F.Column]:
    """``(is_example, label)`` of an event key from its ``_has_<kind>`` flags and values."""
    if rule.kind == "rating":
        stars = F.col("_rating")
        example = stars.isNotNull()
        if rule.drop_between is not None:
            example = example & ~((stars >= rule.drop_between) & (stars < rule.threshold))
        return example, stars >= rule.threshold
    example = F.col("_has_impression") == 1
    if rule.kind == "click":
        return example, F.col("_has_click") == 1
    return example, F.coalesce(F.col("_signal") >= rule.threshold, F.lit(False))


def event_keys(good: DataFrame, prepare: PrepareConfig, partitions: int) -> DataFrame:
    """One row per valid ``(item_id, user_id, ts_ms)``, partitioned by item.

    Events sharing user, item, ts and kind count once (the de-duplication). Columns: the key,
    ``day``, ``_n`` (de-duplicated events at the key), ``_has_<kind>`` (0/1 per event kind),
    ``_example`` (the label rule makes an example of the key: a ``rating`` with a value outside
    ``drop_between``, or an ``impression``), ``label`` (byte), ``_pos`` (0/1: a positive
    example) and the item's events and positives strictly before ts (``_item_prior_events``,
    ``_item_prior_pos``).

    ``good``: valid events ``user_id, item_id, ts_ms, event, value``.
    """
    flags = [F.max((F.col("event") == k).cast("int")).alias(f"_has_{k}") for k in EVENT_KINDS]
    keys = (
        good.repartition(partitions, "item_id")
        .groupBy(*KEY)
        .agg(
            *flags,
            F.max(F.when(F.col("event") == "rating", F.col("value"))).alias("_rating"),
            F.max(F.when(F.col("event").isin("click", "dwell"), F.col("value"))).alias("_signal"),
        )
    )
    example, label = _label_columns(prepare.label)
    keys = keys.select(
        *KEY,
        F.floor(F.col("ts_ms") / DAY_MS).cast("int").alias("day"),
        reduce(operator.add, [F.col(f"_has_{k}") for k in EVENT_KINDS]).alias("_n"),
        *[f"_has_{k}" for k in EVENT_KINDS],
        example.alias("_example"),
        label.cast("byte").alias("label"),
    ).withColumn("_pos", (F.col("_example") & (F.col("label") == 1)).cast("int"))
    before = (
        Window.partitionBy("item_id").orderBy("ts_ms").rangeBetween(Window.unboundedPreceding, -1)
    )
    return keys.select(
        "*",
        F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_item_prior_events"),
        F.coalesce(F.sum("_pos").over(before), F.lit(0)).alias("_item_prior_pos"),
    )


def _history_snapshots(positives: DataFrame, history_length: int) -> DataFrame:
    """Per (user, ts) with positives: ``_hist``, the user's last ``history_length`` positive
    items up to and including ts in (ts, item_id) order, and ``_npos``, the positives so far."""
    w = Window.partitionBy("user_id").orderBy("ts_ms", "item_id")
    if history_length > 0:
        hist = F.collect_list("item_id").over(w.rowsBetween(-(history_length - 1), 0))
    else:
        hist = _empty()
    return positives.select(
        "user_id",
        "ts_ms",
        "day",
        hist.alias("_hist"),
        F.count("*").over(w.rowsBetween(Window.unboundedPreceding, 0)).alias("_npos"),
        F.lead("ts_ms").over(w).alias("_next_ts"),
    ).filter(F.col("_next_ts").isNull() | (F.col("_next_ts") != F.col("ts_ms")))


# Kinds of rows on a user's timeline, in their order at equal ts: the active-day row (at the
# day's first millisecond) before any event of that day, snapshots after the events of their ts.
_DAY, _EVENT, _SNAPSHOT = 0, 1, 2


def user_rows(
    keys: DataFrame, prepare: PrepareConfig, cutoffs: tuple[int, int] | None, partitions: int
) -> DataFrame:
    """The examples among ``keys`` (``event_keys``) with what the user's timeline gives them,
    partitioned by user: ``history`` (last ``history_length`` positives strictly before ts,
    oldest first), ``_user_prior_events`` / ``_user_prior_pos`` (strictly before ts),
    ``lt7`` / ``lt14`` (active days in the 7 / 14 days starting the event's UTC day) and
    ``split``.

    The user's active days (each with its lt7/lt14, counted by a small window over the days
    alone), rows and history snapshots (one per ts with positives, sorted after that ts's
    events, so an event never sees positives of its own ts) are unioned and sorted once by
    (ts, kind, item, label). Two window operators read that one order: a range of ts (the
    events strictly before), then running rows (the last snapshot, the day row's lt7/lt14, the
    example's rank). Spark copies every row it buffers once per window operator, so there are
    no more than two.
    """
    by_user = keys.repartition(partitions, "user_id")
    null_list = F.lit(None).cast("array<string>")

    def row(
        src: DataFrame, kind: int, *, hist: F.Column = null_list, npos: F.Column | None = None
    ) -> DataFrame:
        cols = {c: F.col(c) if c in src.columns else F.lit(None) for c in ("item_id", "label")}
        zero = F.lit(0)
        event = kind == _EVENT
        return src.select(
            "user_id",
            cols["item_id"].cast("string").alias("item_id"),
            (F.col("ts_ms") if "ts_ms" in src.columns else F.col("day").cast("long") * DAY_MS)
            .cast("long")
            .alias("ts_ms"),
            cols["label"].cast("byte").alias("label"),
            (F.col("_example").cast("int") if event else zero).alias("_example"),
            (F.col("_n") if event else zero).cast("long").alias("_n"),
            *[
                (F.col(c) if event else zero).cast("long").alias(c)
                for c in ("_item_prior_events", "_item_prior_pos")
            ],
            F.lit(kind).alias("_k"),
            hist.alias("_hist"),
            (npos if npos is not None else F.lit(None)).cast("long").alias("_npos"),
            *[
                (F.col(c) if kind == _DAY else F.lit(None)).cast("byte").alias(c)
                for c in ("lt7", "lt14")
            ],
        )

    snaps = _history_snapshots(by_user.filter(F.col("_pos") == 1), prepare.history_length)
    order = ("ts_ms", "_k", "item_id", "label")
    by_day = Window.partitionBy("user_id").orderBy("day")
    days = by_user.select("user_id", "day").distinct()
    days = days.select(
        "user_id",
        "day",
        F.count("*").over(by_day.rangeBetween(0, 6)).alias("lt7"),
        F.count("*").over(by_day.rangeBetween(0, 13)).alias("lt14"),
    )
    timeline = (
        row(days, _DAY)
        .unionByName(row(by_user, _EVENT))
        .unionByName(row(snaps, _SNAPSHOT, hist=F.col("_hist"), npos=F.col("_npos")))
        .sortWithinPartitions("user_id", *order)
    )
    before = (
        Window.partitionBy("user_id").orderBy("ts_ms").rangeBetween(Window.unboundedPreceding, -1)
    )
    ranged = timeline.select(
        "*", F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_user_prior_events")
    )
    w = Window.partitionBy("user_id").orderBy(*order)
    upto = w.rowsBetween(Window.unboundedPreceding, 0)

    def from_day_row(c: str) -> F.Column:
        return F.last(F.when(F.col("_k") == _DAY, F.col(c)), ignorenulls=True).over(upto)

    return (
        ranged.select(
            "user_id",
            "item_id",
            "ts_ms",
            "label",
            "_example",
            "_k",
            "_item_prior_events",
            "_item_prior_pos",
            "_user_prior_events",
            from_day_row("lt7").alias("lt7"),
            from_day_row("lt14").alias("lt14"),
            F.sum("_example")
            .over(w.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing))
            .alias("_user_examples"),
            F.coalesce(F.last("_hist", ignorenulls=True).over(upto), _empty()).alias("history"),
            F.last(F.when(F.col("_k") == _SNAPSHOT, F.col("ts_ms")), ignorenulls=True)
            .over(upto)
            .alias("_snapshot_ts"),
            F.coalesce(F.last("_npos", ignorenulls=True).over(upto), F.lit(0)).alias(
                "_user_prior_pos"
            ),
            F.sum("_example").over(upto).alias("_example_rank"),
        )  # fmt: skip
        .filter((F.col("_k") == _EVENT) & (F.col("_example") == 1))
        .withColumn("split", _split(prepare, cutoffs))
        .drop("_k", "_example", "_user_examples", "_example_rank")
    )


def _split(prepare: PrepareConfig, cutoffs: tuple[int, int] | None) -> F.Column:
    """``"train"|"valid"|"test"``. ``time``: by the global cut-offs. ``user_time``: the user's
    last ``floor(n * test_fraction)`` examples in (ts, item_id) order are test, the
    ``floor(n * valid_fraction)`` before them valid, the rest train (``_user_examples`` = n,
    ``_example_rank`` = 1..n in that order)."""
    s = prepare.split
    if s.by == "time":
        assert cutoffs is not None
        valid_ms, test_ms = cutoffs
        return (
            F.when(F.col("ts_ms") < valid_ms, "train")
            .when(F.col("ts_ms") < test_ms, "valid")
            .otherwise("test")
        )
    n = F.col("_user_examples")
    from_end = n - F.col("_example_rank")
    n_test = F.floor(n * s.test_fraction + _FLOOR_EPS)
    n_valid = F.floor(n * s.valid_fraction + _FLOOR_EPS)
    return (
        F.when(from_end < n_test, "test")
        .when(from_end < n_test + n_valid, "valid")
        .otherwise("train")
    )


@dataclass
class EntityFeatures:
    """The entity side of the feature rule: per item and per user the sparse features their
    rows give (``list<string>``, derived once per entity), for joining to events."""

    item_rule: list[SparseFeature]
    user_rule: list[SparseFeature]
    items: DataFrame  # item_id, the item features from the item row, _created_ts if any
    users: DataFrame | None  # user_id, the user features from the user row

    @property
    def has_created(self) -> bool:
        return "_created_ts" in self.items.columns

    def column(self, frame: DataFrame, f: SparseFeature) -> F.Column:
        """Feature ``f`` of the rows of ``frame`` (joined to ``items``/``users``): ids and
        history from the row itself, the rest from the entity (empty when the row's entity is
        missing from its table)."""
        if f.column in FROM_EVENT:
            return _feature_column(frame, f)
        return F.coalesce(F.col(f.name), _empty()) if f.name in frame.columns else _empty()


# Features the event row gives (the rest come from the entity rows).
FROM_EVENT = frozenset({"item_id", "user_id", "history"})


def entity_tables(
    items: DataFrame, users: DataFrame | None, prepare: PrepareConfig
) -> EntityFeatures:
    """``EntityFeatures`` of valid ``items``/``users`` rows (with ``_id``), by the feature rule
    (``recsys.features.sparse_rule``)."""
    item_rule = entity_features("item", _column_kinds(items), prepare.text_columns)
    user_kinds = _column_kinds(users) if users is not None else {}
    user_rule = entity_features("user", user_kinds, prepare.text_columns)
    item_cols = [
        F.col("_id").alias("item_id"),
        *[_feature_column(items, f).alias(f.name) for f in item_rule if f.column not in FROM_EVENT],
    ]
    if "created_ts" in items.columns:
        item_cols.append(_ts_column(items, "created_ts").alias("_created_ts"))
    user_table = None
    if users is not None:
        user_cols = [
            _feature_column(users, f).alias(f.name) for f in user_rule if f.column not in FROM_EVENT
        ]
        user_table = users.select(F.col("_id").alias("user_id"), *user_cols)
    return EntityFeatures(item_rule, user_rule, items.select(*item_cols), user_table)


def _with_entities(rows: DataFrame, entities: EntityFeatures, *, users: bool = True) -> DataFrame:
    out = rows.join(entities.items, "item_id", "left") if "item_id" in rows.columns else rows
    if users and entities.users is not None and "user_id" in rows.columns:
        out = out.join(entities.users, "user_id", "left")
    return out


def build_examples(
    rows: DataFrame, entities: EntityFeatures
) -> tuple[DataFrame, dict[str, list[str]]]:
    """Join entity features to the ``user_rows``; returns (examples, feature lists).

    The feature lists name every sparse feature, ``s_history`` included, although examples
    store its values once, as ``history`` (``recsys.features.sparse_rule.example_column``).
    """
    ex = _with_entities(rows.withColumn("ts", F.timestamp_millis("ts_ms")), entities)
    user_sparse = {f.name: entities.column(ex, f) for f in entities.user_rule}
    item_sparse = {f.name: entities.column(ex, f) for f in entities.item_rule}
    context_sparse = {f.name: _feature_column(ex, f) for f in context_features()}
    dense = prior_count_features()
    if entities.has_created:
        age = (F.col("ts_ms") - F.unix_millis("_created_ts")) / DAY_MS
        dense["d_item_age_days"] = F.greatest(F.coalesce(age, F.lit(0.0)), F.lit(0.0)).cast("float")
    sparse = {**user_sparse, **item_sparse, **context_sparse}
    stored = {name: expr for name, expr in sparse.items() if example_column(name) == name}
    out = ex.select(
        F.col("label").cast("byte").alias("label"),
        "split",
        "user_id",
        "item_id",
        "ts",
        F.col("lt7").cast("byte").alias("lt7"),
        F.col("lt14").cast("byte").alias("lt14"),
        F.coalesce("history", _empty()).alias("history"),
        *[expr.alias(name) for name, expr in stored.items()],
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


def _tag(name: str):  # noqa: ANN202 - a one-argument lambda for F.transform
    return lambda v: F.struct(F.lit(name).alias("f"), v.alias("v"))


def train_value_counts(rows: DataFrame, entities: EntityFeatures) -> tuple[DataFrame, DataFrame]:
    """How often each value of each sparse feature occurs in the TRAIN split of ``user_rows``,
    as ``(f, v, w)`` rows to sum, and ``(f, n)`` rows of train rows with an empty list.

    Rows that share what a feature depends on share its values, so each feature is counted on
    groups, never on every row's lists: item features once per item (weighted by its train
    rows), user features once per user, ``s_hour``/``s_weekday`` once per hour of time,
    ``s_history`` once per (user, history snapshot).
    """
    train = rows.filter(F.col("split") == "train")
    user_rule = [f for f in entities.user_rule if f.column != HISTORY_COLUMN]
    history = [f for f in entities.user_rule if f.column == HISTORY_COLUMN]
    groups = [
        (_with_entities(train.groupBy("item_id").count(), entities), entities.item_rule),
        (_with_entities(train.groupBy("user_id").count(), entities), user_rule),
        (
            train.groupBy(F.date_trunc("hour", F.timestamp_millis("ts_ms")).alias("ts")).count(),
            context_features(),
        ),
        (train.groupBy("user_id", "_snapshot_ts", "history").count(), history),
    ]
    values, empties = [], []
    for frame, rule in groups:
        if not rule:
            continue
        lists = {
            f.name: _feature_column(frame, f) if f.column == "ts" else entities.column(frame, f)
            for f in rule
        }
        tagged = F.flatten(
            F.array(
                *[
                    F.transform(expr, _tag(name)) for name, expr in lists.items()
                ]
            )
        )  # fmt: skip
        values.append(
            frame.select(F.explode(tagged).alias("x"), "count").select(
                "x.f", "x.v", F.col("count").alias("w")
            )
        )
        empties.append(
            frame.agg(
                F.array(
                    *[
                        F.struct(
                            F.lit(name).alias("f"),
                            F.sum(F.when(F.size(expr) <= 0, F.col("count")).otherwise(0))
                            .cast("long")
                            .alias("n"),
                        )
                        for name, expr in lists.items()
                    ]
                ).alias("x")
            ).select(F.explode("x").alias("x")).select("x.f", "x.n")
        )  # fmt: skip
    return reduce(DataFrame.unionByName, values), reduce(DataFrame.unionByName, empties)


def concept_counts(items: DataFrame) -> DataFrame:
    """``COUNT_ROWS`` of the item concept vocabulary: per normalised concept (whitespace
    collapsed and stripped, lower-cased: ``recsys.concepts.vocabulary.normalise_concept``'s
    rule, checked by tests/recsys/concepts/test_normalise_spark.py) the items carrying it (``kind="concept"``),
    and per (concept, original spelling, stripped) the items carrying that spelling
    (``kind="concept_spelling"``). ``items``: valid rows with ``_id``."""
    values = _feature_column(items, SparseFeature("s_item_concepts", CONCEPTS, Derivation.CONCEPTS))
    pairs = (
        items.select("_id", F.explode(values).alias("_raw"))
        .select(
            "_id",
            F.trim("_raw").alias("_spelling"),
            F.lower(F.trim(F.regexp_replace("_raw", r"(?U)\s+", " "))).alias("_name"),
        )
        .filter(F.col("_name") != "")
        .distinct()
    )
    by_name = (
        pairs.select("_id", "_name")
        .distinct()
        .groupBy("_name")
        .count()
        .select(*count_rows("concept", F.col("_name"), F.lit(None), F.col("count")))
    )
    by_spelling = (
        pairs.groupBy("_name", "_spelling")
        .count()
        .select(*count_rows("concept_spelling", F.col("_name"), F.col("_spelling"), F.col("count")))
    )
    return by_name.unionByName(by_spelling)


def _concepts(rows: list[Row], min_count: int) -> dict[str, object]:
    per_concept = {r["key"]: int(r["n"]) for r in rows if r["kind"] == "concept"}
    per_spelling: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["kind"] == "concept_spelling":
            per_spelling.setdefault(r["key"], {})[r["sub"]] = int(r["n"])
    return concept_vocabulary(per_concept, per_spelling, min_count)


# ----------------------------------------------------------------------------- the job


def _split_info(
    prepare: PrepareConfig, cutoffs: tuple[int, int] | None, per_split: dict[str, Any]
) -> dict[str, Any]:
    """Manifest ``split``. ``time``: the cut-offs used (fractions null when dates were given).
    ``user_time``: ``valid_from``/``test_from`` are the earliest ts in valid/test (null when
    empty), informative only: per-user splits overlap in global time."""
    s = prepare.split
    info: dict[str, Any] = {"by": s.by}
    if s.by == "time":
        assert cutoffs is not None
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


def _kind_counts(keys: DataFrame) -> DataFrame:
    """``SUMMARY_ROW`` rows (``kind="event_kind"``): de-duplicated valid events per kind."""
    sums = [F.sum(f"_has_{k}") for k in EVENT_KINDS]
    return (
        keys.agg(
            F.array(
                *[
                    F.struct(*summary_row("event_kind", F.lit(k), None, total))
                    for k, total in zip(EVENT_KINDS, sums, strict=True)
                ]
            ).alias("x")
        )
        .select(F.explode("x").alias("x"))
        .select("x.*")
    )


@dataclass
class _Tagged:
    """The raw tables read and tagged with a ``reason`` each (null = valid)."""

    events: DataFrame
    items: DataFrame
    users: DataFrame | None

    def quarantine_plan(self) -> dict[str, tuple[DataFrame, list[str]]]:
        """Per table: (tagged rows, the input's own columns to keep for rejected rows)."""

        def original(tagged: DataFrame) -> list[str]:
            return [c for c in tagged.columns if c not in _INTERNAL_COLUMNS and c != REASON]

        tables = {"items": self.items, "users": self.users, "events": self.events}
        return {name: (df, original(df)) for name, df in tables.items() if df is not None}

    def valid(self, name: str) -> DataFrame | None:
        df = {"items": self.items, "users": self.users}[name]
        return None if df is None else df.filter(F.col(REASON).isNull()).drop(REASON)


def _tag_inputs(job: JobRun, raw_dir: str | Path, prepare: PrepareConfig) -> _Tagged:
    """Read and tag the raw tables (cached: each is read and parsed once)."""
    spark = job.spark
    events = read_raw_table(spark, raw_dir, "events", schema=EVENTS_JSON_SCHEMA)
    items = read_raw_table(spark, raw_dir, "items")
    users = read_raw_table(spark, raw_dir, "users", required=False)
    assert events is not None and items is not None
    items_t = job.cache(_tag_entities(items, "item_id"))
    users_t = job.cache(_tag_entities(users, "user_id")) if users is not None else None
    known = items_t.filter(F.col(REASON).isNull()).select(F.col("_id").alias("_known_iid"))
    events_t = job.cache(_tag_events(events, known, prepare))
    return _Tagged(events_t, items_t, users_t)


def _valid_events(events_t: DataFrame) -> DataFrame:
    """Valid events, not de-duplicated: ``user_id, item_id, ts_ms, event, value``."""
    return events_t.filter(F.col(REASON).isNull()).select(
        F.col("_uid").alias("user_id"),
        F.col("_iid").alias("item_id"),
        F.unix_millis("_ts").alias("ts_ms"),
        F.col("_event").alias("event"),
        F.col("_value").alias("value"),
    )


def run(
    cfg: PipelineConfig,
    raw_dir: str | Path,
    out_dir: str | Path,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Build ``<out_dir>/examples`` (+ manifest) and ``<out_dir>/quarantine``; return the manifest.

    Raises ``DataQualityError`` (nothing published) when a table's bad fraction exceeds
    ``cfg.prepare.max_bad_fraction``. Spark actions: one aggregation for every quality count
    and the concept vocabulary, the time cut-offs (``split.by: time`` with fractions only), the
    write of the examples, and one aggregation for every statistic and count of the manifest.
    """
    spark = spark or build_session(cfg.spark)
    prepare = cfg.prepare
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions", "8") or 8)
    with JobRun(spark, out_dir, settings=RUN_SETTINGS) as job:
        tagged = _tag_inputs(job, raw_dir, prepare)
        items, users = tagged.valid("items"), tagged.valid("users")
        assert items is not None
        concept_rows = job.quarantine_tables(tagged.quarantine_plan(), concept_counts(items))
        job.check_quality(prepare.max_bad_fraction)

        keys = job.cache(event_keys(_valid_events(tagged.events), prepare, partitions))
        needs_quantiles = prepare.split.by == "time" and prepare.split.valid_from is None
        cutoffs = split_cutoffs(
            keys.filter(F.col("_example")).select("ts_ms") if needs_quantiles else None, prepare
        )
        rows = job.cache(user_rows(keys, prepare, cutoffs, partitions))
        entities = entity_tables(items, users, prepare)
        examples, features = build_examples(rows, entities)
        job.write_examples(examples)
        value_counts, empty_rows = train_value_counts(rows, entities)
        stats, kind_rows = example_statistics(
            examples,
            features["sparse"],
            features["dense"],
            prepare.top_values,
            also=_kind_counts(keys),
            value_counts=value_counts,
            empty_rows=empty_rows,
        )
        job.uncache_all()
        features |= stats.features
        by_kind = {r["f"]: int(r["n"]) for r in kind_rows if r["n"]}
        per_split = stats.splits
        ev_quality = job.quality.table("events")
        n_good = sum(by_kind.values())
        n_examples = sum(r["rows"] or 0 for r in per_split.values())
        label_events = by_kind.get("rating" if prepare.label.kind == "rating" else "impression", 0)
        columns = [c for c in examples.columns if c != "split"]
        manifest: dict[str, Any] = {
            "source": cfg.source.kind,
            "features": features,
            "counts": {
                **{s: per_split[s]["rows"] if s in per_split else 0 for s in SPLITS},
                "users": {s: per_split[s]["users"] if s in per_split else 0 for s in SPLITS},
                "examples": n_examples,
                "positives": sum(r["positives"] or 0 for r in per_split.values()),
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
            "concepts": _concepts(concept_rows, prepare.concept_min_count),
            "params": {
                "prepare": prepare.model_dump(mode="json"),
                "raw_dir": str(raw_dir),
                "history_order": "oldest first, strictly before ts",
                "ts_window": [_iso(ms) for ms in ts_window_ms(prepare)],
            },
            "schema": arrow_schema(examples.select(*columns, "split")),
        }
        job.publish(manifest)
        return manifest


def _validated_inputs(
    job: JobRun, raw_dir: str | Path, prepare: PrepareConfig
) -> tuple[DataFrame, DataFrame, DataFrame | None, dict[str, int]]:
    """Read, tag and quarantine the raw tables, apply the bad-fraction gate; return the good
    ``(events, items, users)`` (events de-duplicated with ``ts``, ``ts_ms`` and ``day``,
    cached) and the good events per kind (for jobs that need the valid events themselves,
    such as ``spark_jobs/materialize_features.py``)."""
    tagged = _tag_inputs(job, raw_dir, prepare)
    job.quarantine_tables(tagged.quarantine_plan())
    job.check_quality(prepare.max_bad_fraction)
    good = job.cache(
        tagged.events.filter(F.col(REASON).isNull())
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
    tagged.events.unpersist()  # ``good`` is materialised: only it stays in memory
    items = tagged.valid("items")
    assert items is not None
    return good, items, tagged.valid("users"), by_kind


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
