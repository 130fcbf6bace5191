"""``QualityReport``: rows quarantined per table and reason, and the bad-fraction gate.

Jobs tag each input row with a ``reason`` (null = good). One aggregation over every input table
brings the per-reason counts to the driver (a handful of numbers, never rows: ``count_rows``
gives each table's part, in the shape ``COUNT_ROWS``, which other small summaries of the same
action share); bad rows are written with their original columns plus ``reason`` to
``quarantine/<table>/``, and a table without bad rows gets no directory (read it with
``read_quarantine``, which gives an empty table); the run fails, before any output is
published, when a table's bad fraction exceeds ``prepare.max_bad_fraction``::

    DataQualityError: events: 3.2% of rows quarantined (unknown_item_id: 310, bad_ts: 12) > limit 1.0%
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

REASON = "reason"
# The shape of the small summary rows one action collects: ``kind`` says what a row counts
# (``"quality"``: ``key`` = table, ``sub`` = reason, ``n`` = rows), ``n`` the count.
COUNT_ROWS = ("kind", "key", "sub", "n")
QUALITY = "quality"


def count_rows(kind: str, key: F.Column, sub: F.Column, n: F.Column) -> list[F.Column]:
    """The ``COUNT_ROWS`` columns of one summary row (for ``select``)."""
    return [
        F.lit(kind).alias("kind"),
        key.cast("string").alias("key"),
        sub.cast("string").alias("sub"),
        n.cast("long").alias("n"),
    ]


def reason_counts(tagged: DataFrame, table: str) -> DataFrame:
    """``COUNT_ROWS`` of ``tagged``: one row per ``reason`` (null = good) with its count."""
    return (
        tagged.groupBy(REASON)
        .count()
        .select(*count_rows(QUALITY, F.lit(table), F.col(REASON), F.col("count")))
    )


def read_quarantine(quarantine_dir: str | Path, table: str) -> pa.Table:
    """The rows ``table`` rejected, from ``<quarantine_dir>/<table>/``; an empty table (only
    a ``reason`` column) when there is no such directory: a table without bad rows has none."""
    path = Path(quarantine_dir) / table
    if not path.exists():
        return pa.table({REASON: pa.array([], pa.string())})
    return pq.read_table(path)


class DataQualityError(ValueError):
    """Too many bad rows in an input table; the message names the table, the reasons and counts."""


@dataclass
class TableQuality:
    """Row counts of one input table: all rows, and quarantined rows per reason."""

    table: str
    rows: int
    bad: dict[str, int] = field(default_factory=dict)

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.rows if self.rows else 0.0

    def describe(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.bad.items(), key=lambda kv: -kv[1]))
        return f"{self.table}: {100 * self.bad_fraction:.1f}% of rows quarantined ({reasons})"


@dataclass
class QualityReport:
    """Quality of every input table of one run."""

    tables: list[TableQuality] = field(default_factory=list)

    def add(self, tagged: DataFrame, table: str) -> TableQuality:
        """Count ``tagged`` rows per ``reason`` (one aggregation) and record them for ``table``."""
        return self.record([table], reason_counts(tagged, table).collect())[0]

    def record(self, tables: Sequence[str], rows: Iterable[Row]) -> list[TableQuality]:
        """Record ``tables`` from ``COUNT_ROWS`` (``reason_counts`` rows; rows of other kinds
        are ignored); a table without rows had no input rows."""
        counts: dict[str, dict[str | None, int]] = {t: {} for t in tables}
        for r in rows:
            if r["kind"] == QUALITY and r["key"] in counts:
                counts[r["key"]][r["sub"]] = int(r["n"])
        added = []
        for t in tables:
            by_reason = counts[t]
            bad = {str(k): n for k, n in by_reason.items() if k is not None}
            added.append(TableQuality(t, sum(by_reason.values()), bad))
        self.tables += added
        return added

    def table(self, name: str) -> TableQuality:
        """The recorded quality of table ``name`` (``KeyError`` when it was not counted)."""
        for t in self.tables:
            if t.table == name:
                return t
        raise KeyError(name)

    def by_reason(self) -> dict[str, int]:
        """Quarantined rows per reason, summed over tables."""
        out: dict[str, int] = {}
        for t in self.tables:
            for r, n in t.bad.items():
                out[r] = out.get(r, 0) + n
        return dict(sorted(out.items()))

    def by_table(self) -> dict[str, dict[str, object]]:
        return {
            t.table: {"rows": t.rows, "quarantined": dict(sorted(t.bad.items()))}
            for t in self.tables
        }

    def check(self, limit: float, where: str = "") -> None:
        """Raise ``DataQualityError`` naming every table whose bad fraction exceeds ``limit``."""
        failing = [t for t in self.tables if t.bad_fraction > limit]
        if failing:
            lines = [f"{t.describe()} > limit {100 * limit:.1f}%" for t in failing]
            suffix = f" (rejected rows kept in {where})" if where else ""
            raise DataQualityError("; ".join(lines) + suffix)


def first_reason(*rules: tuple[object, str]) -> F.Column:
    """``reason`` column: the name of the first rule whose condition holds, else null."""
    expr = None
    for cond, name in rules:
        expr = F.when(cond, F.lit(name)) if expr is None else expr.when(cond, F.lit(name))
    return expr if expr is not None else F.lit(None).cast("string")
