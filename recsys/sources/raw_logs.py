"""``RawLogs``: the three raw-log tables (events, items, users) and their Parquet layout.

On disk a raw-log directory holds ``events.parquet``, ``items.parquet`` and ``users.parquet``;
it is written atomically so readers never see a half-written set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.atomic import atomic_dir
from recsys.contract import EVENTS, ITEMS, USERS, ValidationReport, validate_table

TABLES = ("events", "items", "users")


@dataclass
class RawLogs:
    """Raw logs as Arrow tables, each following its contract in ``recsys.contract``."""

    events: pa.Table
    items: pa.Table
    users: pa.Table

    def validate(self) -> list[ValidationReport]:
        """Validate all three tables; returns one report per table (check ``.ok``)."""
        return [
            validate_table(self.events, EVENTS),
            validate_table(self.items, ITEMS),
            validate_table(self.users, USERS),
        ]

    def write(self, directory: str | Path) -> Path:
        """Write the three tables as Parquet into ``directory`` (atomically replaced)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            for name in TABLES:
                pq.write_table(getattr(self, name), tmp / f"{name}.parquet")
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
        """Row counts and basic shape, for the CLI and manifests."""
        ev = self.events
        return {
            "events": ev.num_rows,
            "items": self.items.num_rows,
            "users": self.users.num_rows,
            "event_kinds": dict(
                zip(*[c.to_pylist() for c in ev["event"].value_counts().flatten()], strict=True)
            )
            if ev.num_rows
            else {},
        }
