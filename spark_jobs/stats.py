"""Feature statistics of an examples table, computed with Spark aggregations.

Per sparse (``list<string>``) column: ``distinct`` values, ``top`` values with counts,
``histogram`` of value frequencies in log2 buckets (``"1"``, ``"2-3"``, ``"4-7"``, ... -> how
many distinct values occur that many times), ``values`` (total occurrences) and ``empty_rows``.
Per dense column: ``mean``, ``std``, ``min``, ``max``, ``nulls``. Only these small aggregates
reach the driver.

``example_statistics`` computes all of them for the train split, and the row, user, positive
counts and earliest time of every split, in ONE Spark action (its aggregations are unioned into
one small result; the shuffle of the value frequencies is planned once and reused), over a
DataFrame the job already has (cached), instead of one pass per statistic over the written
output. ``sparse_stats`` and ``dense_stats`` are the same statistics one action each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, Row, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema


def _bucket_name(b: int) -> str:
    lo, hi = 1 << b, (1 << (b + 1)) - 1
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _tag(name: str):  # noqa: ANN202 - a one-argument lambda for F.transform
    return lambda v: F.struct(F.lit(name).alias("f"), v.alias("v"))


def _value_frequencies(df: DataFrame, columns: Mapping[str, str]) -> DataFrame:
    """``f, v, count``: how often each value ``v`` occurs in feature ``f``'s lists
    (``columns``: feature -> the column holding its lists)."""
    pairs = F.flatten(
        F.array(
            *[
                F.transform(F.coalesce(F.col(c), F.array().cast("array<string>")), _tag(name))
                for name, c in columns.items()
            ]
        )
    )
    return df.select(F.explode(pairs).alias("x")).select("x.f", "x.v").groupBy("f", "v").count()


def _empty_count(column: str) -> Column:
    return F.sum((F.coalesce(F.size(column), F.lit(0)) <= 0).cast("long"))


def _log2_bucket(count: Column) -> Column:
    return F.floor(F.log2(count)).cast("int")


def _top_rank() -> Window:
    return Window.partitionBy("f").orderBy(F.desc("count"), F.asc_nulls_last("v"))


def sparse_stats(df: DataFrame, columns: list[str], top: int = 10) -> dict[str, dict[str, Any]]:
    """Distinct count, top values, frequency histogram and emptiness of each sparse column."""
    if not columns:
        return {}
    pairs = F.flatten(
        F.array(
            *[
                F.transform(F.coalesce(F.col(c), F.array().cast("array<string>")), _tag(c))
                for c in columns
            ]
        )
    )
    freq = (
        df.select(F.explode(pairs).alias("x"))
        .select("x.f", "x.v")
        .groupBy("f", "v")
        .count()
        .persist()
    )
    try:
        summary = {
            r["f"]: (int(r["distinct"]), int(r["values"]))
            for r in freq.groupBy("f")
            .agg(F.count("*").alias("distinct"), F.sum("count").alias("values"))
            .collect()
        }
        tops: dict[str, list[list[Any]]] = {}
        for r in (
            freq.withColumn("rn", F.row_number().over(_top_rank()))
            .filter(F.col("rn") <= top)
            .orderBy("f", "rn")
            .collect()
        ):
            tops.setdefault(r["f"], []).append([r["v"], int(r["count"])])
        hists: dict[str, dict[str, int]] = {}
        for r in (
            freq.groupBy("f", _log2_bucket(F.col("count")).alias("b"))
            .count()
            .orderBy("f", "b")
            .collect()
        ):
            hists.setdefault(r["f"], {})[_bucket_name(int(r["b"]))] = int(r["count"])
    finally:
        freq.unpersist()
    empties = df.select(
        *[F.sum((F.coalesce(F.size(c), F.lit(0)) <= 0).cast("long")).alias(c) for c in columns]
    ).first()
    out = {}
    for c in columns:
        distinct, values = summary.get(c, (0, 0))
        out[c] = {
            "distinct": distinct,
            "values": values,
            "empty_rows": int(empties[c] or 0),
            "top": tops.get(c, []),
            "histogram": hists.get(c, {}),
        }
    return out


def dense_stats(df: DataFrame, columns: list[str]) -> dict[str, dict[str, float | int | None]]:
    """Mean, standard deviation, min, max and null count of each dense column (one pass)."""
    if not columns:
        return {}
    aggs = []
    for c in columns:
        aggs += [
            F.mean(c).alias(f"{c}__mean"),
            F.stddev_pop(c).alias(f"{c}__std"),
            F.min(c).alias(f"{c}__min"),
            F.max(c).alias(f"{c}__max"),
            F.sum(F.col(c).isNull().cast("long")).alias(f"{c}__nulls"),
        ]
    row = df.agg(*aggs).first()
    return {
        c: _dense_entry(*(row[f"{c}__{k}"] for k in ("mean", "std", "min", "max", "nulls")))
        for c in columns
    }


def _num(v: object) -> float | None:
    # Rounded: float sums depend on partition order; the manifest must be reproducible.
    return None if v is None else float(f"{float(v):.6g}")  # type: ignore[arg-type]


def _dense_entry(
    mean: object, std: object, lo: object, hi: object, nulls: object
) -> dict[str, float | int | None]:
    return {
        "mean": _num(mean),
        "std": _num(std),
        "min": _num(lo),
        "max": _num(hi),
        "nulls": int(nulls or 0),  # type: ignore[call-overload]
    }


# ------------------------------------------------------------------ one action for everything

# Rows of the one small result of ``example_statistics``: ``kind`` says what a row holds.
SUMMARY_ROW = ("kind", "f", "v", "n", "m", "a", "b", "c", "d")


def summary_row(
    kind: str,
    f: Column | None = None,
    v: Column | None = None,
    n: Column | None = None,
    m: Column | None = None,
    *doubles: Column,
) -> list[Column]:
    """The ``SUMMARY_ROW`` columns of one row (for ``select``): ``f``/``v`` strings, ``n``/``m``
    longs, up to four doubles ``a``..``d``; what they mean depends on ``kind``."""
    cols = [
        F.lit(kind).alias("kind"),
        (f if f is not None else F.lit(None)).cast("string").alias("f"),
        (v if v is not None else F.lit(None)).cast("string").alias("v"),
        (n if n is not None else F.lit(None)).cast("long").alias("n"),
        (m if m is not None else F.lit(None)).cast("long").alias("m"),
    ]
    padded = [*doubles, *[F.lit(None)] * (4 - len(doubles))]
    return cols + [x.cast("double").alias(name) for x, name in zip(padded, "abcd", strict=True)]


@dataclass
class ExampleStatistics:
    """What ``example_statistics`` found: ``features`` (manifest ``stats_split``, ``stats``,
    ``dense_stats``) and per split ``rows``, ``users`` (distinct), ``positives`` (label 1),
    ``min_ts_ms`` (earliest ts, None without ts)."""

    features: dict[str, Any]
    splits: dict[str, dict[str, int | None]]


def example_statistics(
    examples: DataFrame,
    sparse: Mapping[str, str] | list[str],
    dense: list[str],
    top: int = 10,
    also: DataFrame | None = None,
    value_counts: DataFrame | None = None,
    empty_rows: DataFrame | None = None,
) -> tuple[ExampleStatistics, list[Row]]:
    """Feature statistics of the TRAIN split (they size embedding tables and standardise dense
    inputs, so valid/test must not leak into them) and per-split counts, in one action.

    ``examples``: ``split``, ``label``, ``user_id``, ``ts`` and the feature columns;
    ``sparse``: feature -> the column holding its lists (``s_history`` -> ``history``), or
    just the names when ``value_counts`` and ``empty_rows`` are given: ``(f, v, w)`` rows whose
    weights ``w`` sum to each value's count and ``(f, n)`` rows of empty-list train rows (for a
    job that counts values on groups of rows instead of every row's lists);
    ``also``: more rows in this function's row shape (``kind`` not one of its own) to collect
    in the same action, returned as they are.
    """
    train = examples.filter(F.col("split") == "train")
    parts: list[DataFrame] = []
    if sparse:
        if value_counts is not None:
            freq = value_counts.groupBy("f", "v").agg(F.sum("w").alias("count"))
        else:
            assert isinstance(sparse, Mapping)
            freq = _value_frequencies(train, sparse)
        parts += [
            freq.groupBy("f")
            .agg(F.count("*").alias("d"), F.sum("count").alias("s"))
            .select(*summary_row("distinct", F.col("f"), None, F.col("d"), F.col("s"))),
            freq.withColumn("rn", F.row_number().over(_top_rank()))
            .filter(F.col("rn") <= top)
            .select(*summary_row("top", F.col("f"), F.col("v"), F.col("count"), F.col("rn"))),
            freq.groupBy("f", _log2_bucket(F.col("count")).alias("b"))
            .count()
            .select(*summary_row("hist", F.col("f"), None, F.col("count"), F.col("b"))),
        ]
    per_column = [
        F.struct(*summary_row("empty", F.lit(name), None, _empty_count(col)))
        for name, col in ({} if empty_rows is not None else dict(sparse)).items()  # type: ignore[arg-type]
    ] + [
        F.struct(
            *summary_row(
                "dense", F.lit(c), None, F.sum(F.col(c).isNull().cast("long")), None,
                F.mean(c), F.stddev_pop(c), F.min(c), F.max(c),
            )
        )
        for c in dense
    ]  # fmt: skip
    if per_column:
        parts.append(
            train.agg(F.array(*per_column).alias("x"))
            .select(F.explode("x").alias("x"))
            .select("x.*")
        )
    parts.append(
        examples.groupBy("split")
        .agg(
            F.count("*").alias("rows"),
            F.countDistinct("user_id").alias("users"),
            F.sum((F.col("label") == 1).cast("long")).alias("positives"),
            F.min(F.unix_millis("ts")).alias("min_ts_ms"),
        )
        .select(*summary_row("split", F.col("split"), None, F.col("rows"), F.col("users"),
                      F.col("positives"), F.col("min_ts_ms")))
    )  # fmt: skip
    if empty_rows is not None:
        parts.append(empty_rows.select(*summary_row("empty", F.col("f"), None, F.col("n"))))
    if also is not None:
        parts.append(also.select(*SUMMARY_ROW))
    collected = reduce(DataFrame.unionByName, parts).collect()
    own = {"distinct", "top", "hist", "empty", "dense", "split"}
    return _parse(collected, list(sparse), dense), [r for r in collected if r["kind"] not in own]


def _parse(rows: list[Row], sparse: list[str], dense: list[str]) -> ExampleStatistics:
    stats: dict[str, dict[str, Any]] = {
        c: {"distinct": 0, "values": 0, "empty_rows": 0, "top": [], "histogram": {}} for c in sparse
    }
    tops: dict[str, list[tuple[int, list[Any]]]] = {c: [] for c in sparse}
    hists: dict[str, list[tuple[int, int]]] = {c: [] for c in sparse}
    dense_out: dict[str, dict[str, float | int | None]] = {}
    splits: dict[str, dict[str, int | None]] = {}
    for r in rows:
        kind, f = r["kind"], r["f"]
        if kind == "distinct":
            stats[f]["distinct"], stats[f]["values"] = int(r["n"]), int(r["m"])
        elif kind == "top":
            tops[f].append((int(r["m"]), [r["v"], int(r["n"])]))
        elif kind == "hist":
            hists[f].append((int(r["m"]), int(r["n"])))
        elif kind == "empty":
            stats[f]["empty_rows"] = int(r["n"] or 0)
        elif kind == "dense":
            dense_out[f] = _dense_entry(r["a"], r["b"], r["c"], r["d"], r["n"])
        elif kind == "split":
            splits[f] = {
                "rows": int(r["n"]),
                "users": int(r["m"]),
                "positives": int(r["a"] or 0),
                "min_ts_ms": None if r["b"] is None else int(r["b"]),
            }
    for c in sparse:
        stats[c]["top"] = [entry for _, entry in sorted(tops[c], key=lambda t: t[0])]
        stats[c]["histogram"] = {_bucket_name(b): n for b, n in sorted(hists[c])}
    features = {
        "stats_split": "train",
        "stats": {
            c: {k: stats[c][k] for k in ("distinct", "values", "empty_rows", "top", "histogram")}
            for c in sparse
        },
        "dense_stats": {c: dense_out[c] for c in dense if c in dense_out}
        | {c: _dense_entry(None, None, None, None, 0) for c in dense if c not in dense_out},
    }
    return ExampleStatistics(features, splits)


def arrow_schema(df: DataFrame) -> dict[str, str]:
    """Column name -> Arrow type string, as readers of the Parquet output will see it."""
    schema = to_arrow_schema(df.schema, timezone="UTC")
    out = {}
    for f in schema:
        t = str(f.type)
        # Spark's in-memory timestamps are microseconds; the jobs write TIMESTAMP_MILLIS.
        out[f.name] = t.replace("timestamp[us, tz=UTC]", "timestamp[ms, tz=UTC]")
    return out
