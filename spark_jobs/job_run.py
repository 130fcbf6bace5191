"""``JobRun``: the skeleton every examples-producing Spark job shares.

One run of a job into an output directory: runtime settings of the session, a staging release,
the quarantine of rejected rows, the bad-fraction gate, the examples written, train-split
feature statistics, and the publish that makes it all visible at once::

    with JobRun(spark, out_dir) as run:
        run.quarantine_tables({"items": (tagged_items, ()), "events": (tagged_events, ())})
        run.check_quality(prepare.max_bad_fraction)      # DataQualityError: nothing published
        run.write_examples(examples)
        manifest = {..., "counts": {"quarantined": run.quality.by_reason(), ...}}
        run.publish(manifest)

Every table's reasons are counted in one aggregation (one Spark action for all of them), and
only tables that rejected rows get a ``quarantine/<table>/`` directory: writing an empty table
costs a Spark job and a file per task for nothing.

A failed gate moves the run's quarantine to ``<out>/quarantine.rejected`` (the previous
release stays current); a successful publish removes it. Any exception leaves the current
release as it was; the staging directory is deleted on the way out (and swept by the next run
when the process was killed). See ``spark_jobs.publication`` for the layout and guarantees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from spark_jobs.publication import Publication
from spark_jobs.quality import QUALITY, REASON, QualityReport, TableQuality, reason_counts
from spark_jobs.session import apply_runtime_settings
from spark_jobs.stats import dense_stats, sparse_stats
from spark_jobs.storage import Storage

REJECTED = "quarantine.rejected"
# Output files open at once per write task: a write partitioned by ``split`` (3 values) then
# needs no sort of its rows by the partition column (a sort of wide rows spills to disk).
CONCURRENT_WRITERS = "spark.sql.maxConcurrentOutputFileWriters"


class JobRun:
    """One run of a Spark job writing ``<out>/examples`` and ``<out>/quarantine``."""

    def __init__(
        self,
        spark: SparkSession,
        out_dir: str | Path,
        stable: tuple[str, ...] = ("examples", "quarantine"),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``stable``: what each release holds, reachable as ``<out>/<name>`` (see
        ``Publication``); the online-feature job publishes ``features`` instead of examples.
        ``settings``: runtime SQL settings for the run only (restored when it ends)."""
        apply_runtime_settings(spark)
        self._settings = dict(settings or {})
        self._previous: dict[str, str | None] = {}
        self.spark = spark
        self.storage = Storage(spark)
        self.out = str(out_dir).rstrip("/")
        self.publication = Publication(self.storage, self.out, stable=stable)
        self.quality = QualityReport()
        self.staging = ""
        self._cached: list[DataFrame] = []

    def __enter__(self) -> JobRun:
        for key, value in self._settings.items():
            self._previous[key] = self.spark.conf.get(key, None)
            self.spark.conf.set(key, value)
        self.publication.open()
        try:
            self.staging = self.publication.stage()
        except BaseException:
            self.publication.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.uncache_all()
            if self.staging and self.storage.exists(self.staging):
                self.storage.delete(self.staging)
        finally:
            self.publication.close()
            for key, value in self._previous.items():
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)

    # ----------------------------------------------------------------- caching

    def cache(self, df: DataFrame) -> DataFrame:
        """``df.persist()``, unpersisted when the run ends (or by ``uncache_all``)."""
        df = df.persist()
        self._cached.append(df)
        return df

    def uncache_all(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()

    # ----------------------------------------------------------------- quarantine

    @property
    def quarantine_dir(self) -> str:
        return f"{self.staging}/quarantine"

    def quarantine(self, table: str, tagged: DataFrame, *columns: str | F.Column) -> TableQuality:
        """``quarantine_tables`` of one table; returns its quality."""
        self.quarantine_tables({table: (tagged, columns)})
        return self.quality.table(table)

    def quarantine_tables(
        self,
        tagged: Mapping[str, tuple[DataFrame, Sequence[str | F.Column]]],
        also: DataFrame | None = None,
    ) -> list[Row]:
        """Count every table's rows per ``reason`` into ``self.quality`` in ONE aggregation,
        then write each table's rejected rows (its ``columns`` + ``reason``, default: every
        column) to ``quarantine/<table>``, only for tables that rejected some.

        ``also``: more ``spark_jobs.quality.COUNT_ROWS`` to collect in the same action (small
        summaries of the same inputs); its rows are returned.
        """
        parts = [reason_counts(df, name) for name, (df, _) in tagged.items()]
        rows = reduce(DataFrame.unionByName, [*parts, *([also] if also is not None else [])])
        collected = rows.collect()
        self.quality.record(list(tagged), collected)
        for name, (df, columns) in tagged.items():
            if not self.quality.table(name).bad_rows:
                continue
            bad = df.filter(F.col(REASON).isNotNull())
            if columns:
                bad = bad.select(*columns, REASON)
            bad.write.mode("overwrite").parquet(f"{self.quarantine_dir}/{name}")
        return [r for r in collected if r["kind"] != QUALITY]

    def check_quality(self, limit: float) -> None:
        """Raise ``DataQualityError`` when a table's bad fraction exceeds ``limit``; the
        rejected rows are then kept in ``<out>/quarantine.rejected`` and nothing is published."""
        rejected = f"{self.out}/{REJECTED}"
        failing = [t for t in self.quality.tables if t.bad_fraction > limit]
        if failing:
            self.storage.replace_dir(self.quarantine_dir, rejected)
        self.quality.check(limit, where=rejected)

    # ----------------------------------------------------------------- examples

    def write_examples(self, examples: DataFrame) -> DataFrame:
        """Write ``examples`` partitioned by ``split`` into the release; return them read
        back (lazily: nothing is read unless the caller uses it)."""
        path = f"{self.staging}/examples"
        previous = self.spark.conf.get(CONCURRENT_WRITERS, None)
        self.spark.conf.set(CONCURRENT_WRITERS, "3")
        try:
            examples.write.mode("overwrite").partitionBy("split").parquet(path)
        finally:
            if previous is None:
                self.spark.conf.unset(CONCURRENT_WRITERS)
            else:
                self.spark.conf.set(CONCURRENT_WRITERS, previous)
        return self.spark.read.parquet(path)

    @staticmethod
    def train_stats(
        written: DataFrame, sparse: list[str], dense: list[str], top_values: int
    ) -> dict[str, Any]:
        """Feature statistics of the TRAIN split only: they size embedding tables and
        standardise dense inputs, so valid/test values must not leak into them."""
        train = written.filter(F.col("split") == "train")
        return {
            "stats_split": "train",
            "stats": sparse_stats(train, sparse, top_values),
            "dense_stats": dense_stats(train, dense),
        }

    # ----------------------------------------------------------------- publish

    def publish(self, manifest: dict[str, Any]) -> str:
        """Write the manifest last into the release and make the release current."""
        self.storage.mkdirs(self.quarantine_dir)  # a release always has its quarantine
        self.storage.write_json(f"{self.staging}/examples/manifest.json", manifest)
        release = self.publication.publish(self.staging)
        self.staging = ""
        self.storage.delete(f"{self.out}/{REJECTED}")
        return release
