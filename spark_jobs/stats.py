"""Feature statistics of an examples table, computed with Spark aggregations.

Per sparse (``list<string>``) column: ``distinct`` values, ``top`` values with counts,
``histogram`` of value frequencies in log2 buckets (``"1"``, ``"2-3"``, ``"4-7"``, ... -> how
many distinct values occur that many times), ``values`` (total occurrences) and ``empty_rows``.
Per dense column: ``mean``, ``std``, ``min``, ``max``, ``nulls``. Only these small aggregates
reach the driver.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema


def _bucket_name(b: int) -> str:
    lo, hi = 1 << b, (1 << (b + 1)) - 1
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _tag(name: str):  # noqa: ANN202 - a one-argument lambda for F.transform
    return lambda v: F.struct(F.lit(name).alias("f"), v.alias("v"))


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
        w = Window.partitionBy("f").orderBy(F.desc("count"), F.asc_nulls_last("v"))
        tops: dict[str, list[list[Any]]] = {}
        for r in (
            freq.withColumn("rn", F.row_number().over(w))
            .filter(F.col("rn") <= top)
            .orderBy("f", "rn")
            .collect()
        ):
            tops.setdefault(r["f"], []).append([r["v"], int(r["count"])])
        hists: dict[str, dict[str, int]] = {}
        for r in (
            freq.groupBy("f", F.floor(F.log2(F.col("count"))).cast("int").alias("b"))
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

    def num(v: object) -> float | None:
        # Rounded: float sums depend on partition order; the manifest must be reproducible.
        return None if v is None else float(f"{float(v):.6g}")

    return {
        c: {
            "mean": num(row[f"{c}__mean"]),
            "std": num(row[f"{c}__std"]),
            "min": num(row[f"{c}__min"]),
            "max": num(row[f"{c}__max"]),
            "nulls": int(row[f"{c}__nulls"] or 0),
        }
        for c in columns
    }


def arrow_schema(df: DataFrame) -> dict[str, str]:
    """Column name -> Arrow type string, as readers of the Parquet output will see it."""
    schema = to_arrow_schema(df.schema, timezone="UTC")
    out = {}
    for f in schema:
        t = str(f.type)
        # Spark's in-memory timestamps are microseconds; the jobs write TIMESTAMP_MILLIS.
        out[f.name] = t.replace("timestamp[us, tz=UTC]", "timestamp[ms, tz=UTC]")
    return out
