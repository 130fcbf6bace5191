"""``QualityReport``: rows quarantined per table and reason, and the bad-fraction gate.

Jobs tag each input row with a ``reason`` (null = good). One aggregation per table brings the
per-reason counts to the driver (a handful of numbers, never rows); bad rows are written with
their original columns plus ``reason`` to ``quarantine/<table>/``; the run fails, before any
output is published, when a table's bad fraction exceeds ``prepare.max_bad_fraction``::

    DataQualityError: events: 3.2% of rows quarantined (unknown_item_id: 310, bad_ts: 12) > limit 1.0%
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

REASON = "reason"


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
        rows = tagged.groupBy(REASON).count().collect()
        total = sum(int(r["count"]) for r in rows)
        bad = {str(r[REASON]): int(r["count"]) for r in rows if r[REASON] is not None}
        q = TableQuality(table, total, bad)
        self.tables.append(q)
        return q

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
