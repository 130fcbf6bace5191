"""``RawLogs``: the three raw-log tables (events, items, users) and their Parquet layout.

On disk a raw-log directory holds ``events.parquet``, ``items.parquet`` and ``users.parquet``,
and, for sources read row by row (MovieLens), ``quarantine.parquet``: the rejected input rows
with file, line and reason (``recsys.sources.quarantine``). It is written atomically, so readers
never see a half-written set and the quarantine always belongs to the tables beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.atomic import atomic_dir
from recsys.contract import EVENTS, ITEMS, USERS, ValidationReport, validate_table
from recsys.sources.quarantine import QUARANTINE_FILE, SourceQuality

TABLES = ("events", "items", "users")


@dataclass
class RawLogs:
    """Raw logs as Arrow tables, each following its contract in ``recsys.contract``.

    ``quality``: what the source rejected or repaired per input file (``None`` for sources that
    generate rather than read rows, like the simulator).
    """

    events: pa.Table
    items: pa.Table
    users: pa.Table
    quality: SourceQuality | None = field(default=None, compare=False)

    def validate(self) -> list[ValidationReport]:
        """Validate all three tables; returns one report per table (check ``.ok``)."""
        return [
            validate_table(self.events, EVENTS),
            validate_table(self.items, ITEMS),
            validate_table(self.users, USERS),
        ]

    def write(self, directory: str | Path) -> Path:
        """Write the three tables (and the quarantine, when the source has one) as Parquet into
        ``directory``, atomically replaced."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            for name in TABLES:
                pq.write_table(getattr(self, name), tmp / f"{name}.parquet")
            if self.quality is not None:
                pq.write_table(self.quality.quarantine_table(), tmp / QUARANTINE_FILE)
        return directory

    @classmethod
    def read(cls, directory: str | Path) -> RawLogs:
        """Read a raw-log directory written by ``write`` (or by any producer of the contract)."""
        directory = Path(directory)
        missing = [n for n in TABLES if not (directory / f"{n}.parquet").exists()]
        if missing:
            raise FileNotFoundError(
                f"{directory}: missing {', '.join(m + '.parquet' for m in missing)}"
            )
        return cls(*(pq.read_table(directory / f"{n}.parquet") for n in TABLES))

    def summary(self) -> dict[str, object]:
        """Row counts and basic shape (and the source's quarantine counts), for the CLI."""
        ev = self.events
        quality = {} if self.quality is None else self.quality.summary()
        return {
            "events": ev.num_rows,
            "items": self.items.num_rows,
            "users": self.users.num_rows,
            "event_kinds": dict(
                zip(*[c.to_pylist() for c in ev["event"].value_counts().flatten()], strict=True)
            )
            if ev.num_rows
            else {},
            **quality,
        }
