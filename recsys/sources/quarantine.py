"""Row-level quality of a file source: rejected rows with file, line and reason, and the gate.

A source reader (``recsys.sources.movielens``) records, per input file, how many data rows it
read, every row it rejected (``reject``) and every row it kept after a repair (``repair``,
e.g. a line that is not valid UTF-8 decoded as Latin-1). The rejected rows become the
quarantine table, written beside the raw logs as ``quarantine.parquet`` (``RawLogs.write``)::

    file: string   the input file (path as read)
    line: int64    1-based line number in that file (the header is line 1)
    reason: string why the row was rejected (``wrong_field_count``, ``bad_rating``, ...)
    text: string   the row as read (its fields joined by the file's separator)

``failures(limit)`` names every file whose rejected fraction exceeds ``limit``, the shape of
the Spark jobs' gate (``spark_jobs/quality.py``)::

    ratings.csv: 3 of 5 rows quarantined (60.0%; bad_rating: 2, wrong_field_count: 1;
    first: line 4, bad_rating, '1,2,abc,5') > limit 1.0%
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

QUARANTINE_FILE = "quarantine.parquet"
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)


@dataclass
class FileQuality:
    """Rows read from one input file, the rows rejected (with line and reason), the repairs."""

    path: str
    rows: int = 0  # data rows read (blank lines and the header excluded)
    lines: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    repaired: dict[str, list[int]] = field(default_factory=dict)  # repair -> line numbers

    def reject(self, lines: list[int], reasons: list[str], texts: list[str]) -> None:
        """Record rejected rows (aligned lists)."""
        self.lines.extend(lines)
        self.reasons.extend(reasons)
        self.texts.extend(texts)

    def repair(self, kind: str, lines: list[int]) -> None:
        """Record rows kept after the repair ``kind`` (e.g. ``decoded_latin1``)."""
        if lines:
            self.repaired.setdefault(kind, []).extend(lines)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def bad_rows(self) -> int:
        return len(self.lines)

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.rows if self.rows else 0.0

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.reasons:
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def describe(self) -> str:
        """``<path>: 3 of 5 rows quarantined (60.0%; bad_rating: 2; first: line 4, ...)``."""
        reasons = ", ".join(f"{r}: {n}" for r, n in self.by_reason().items())
        first = min(range(self.bad_rows), key=lambda i: self.lines[i])
        return (
            f"{self.path}: {self.bad_rows} of {self.rows} rows quarantined "
            f"({100 * self.bad_fraction:.1f}%; {reasons}; first: line {self.lines[first]}, "
            f"{self.reasons[first]}, {self.texts[first][:200]!r})"
        )


@dataclass
class SourceQuality:
    """Quality of every input file of one source read."""

    files: dict[str, FileQuality] = field(default_factory=dict)

    def file(self, path: str | Path) -> FileQuality:
        """The record of ``path`` (created on first use)."""
        key = str(path)
        if key not in self.files:
            self.files[key] = FileQuality(key)
        return self.files[key]

    @property
    def bad_rows(self) -> int:
        return sum(f.bad_rows for f in self.files.values())

    def quarantine_table(self) -> pa.Table:
        """Every rejected row (``QUARANTINE_SCHEMA``), ordered by file then line."""
        rows = sorted(
            (f.path, line, reason, text)
            for f in self.files.values()
            for line, reason, text in zip(f.lines, f.reasons, f.texts, strict=True)
        )
        columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
        return pa.Table.from_arrays(
            [pa.array(list(c), t.type) for c, t in zip(columns, QUARANTINE_SCHEMA, strict=True)],
            schema=QUARANTINE_SCHEMA,
        )

    def summary(self) -> dict[str, object]:
        """For the stage summary: rows read, quarantined per reason and repaired, per file."""
        return {
            "rows_read": {f.name: f.rows for f in self.files.values()},
            "quarantined": {f.name: f.by_reason() for f in self.files.values() if f.bad_rows},
            "repaired": {
                f.name: {kind: len(lines) for kind, lines in f.repaired.items()}
                for f in self.files.values()
                if f.repaired
            },
        }

    def warnings(self) -> list[str]:
        """One line per file with rejected rows."""
        return [f.describe() for f in self.files.values() if f.bad_rows]

    def failures(self, limit: float) -> list[str]:
        """One line per file whose rejected fraction exceeds ``limit`` (empty = gate passes)."""
        return [
            f"{f.describe()} > limit {100 * limit:.1f}%"
            for f in self.files.values()
            if f.bad_fraction > limit
        ]
