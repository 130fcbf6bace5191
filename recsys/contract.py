"""The data contract: Arrow schemas for raw logs and training examples, and their validator.

Raw logs (input to Spark):

- ``events``: one row per interaction. ``user_id``, ``item_id`` (strings), ``ts`` (UTC
  timestamp), ``event`` (``impression`` / ``click`` / ``rating`` / ``dwell`` / ``tag``),
  ``value`` (rating, dwell seconds; null when meaningless). Extra columns are context.
- ``items``: ``item_id``, ``title``, ``text``, ``concepts`` (knowledge-base concepts: genres,
  tags, topics), optional ``creator``, ``created_ts``, ``image`` (PNG bytes), ``audio``
  (float32 vector); any extra string column is a categorical attribute.
- ``users``: ``user_id``, ``concepts`` (declared interests); any extra string column is a
  categorical attribute (gender, age bucket, occupation, ...).

Examples (output of Spark, input of training): one row per labelled event; see
``EXAMPLE_COLUMNS``. Sparse features are ``list<string>`` columns of raw values (hashing
happens in the model); dense features are ``float32`` columns. Which columns are which is
recorded in ``manifest.json`` (``features.sparse`` / ``features.dense``).

The validator never coerces: a column of the wrong type is reported, not cast. It reports
every violation (all bad columns, and per rule the count and first rows), not only the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features.sparse_rule import STORED_AS

TS_TYPE = pa.timestamp("ms", tz="UTC")
STR_LIST = pa.list_(pa.string())

EVENT_KINDS = ("impression", "click", "rating", "dwell", "tag")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Column:
    """One column of a contract table."""

    name: str
    type: pa.DataType
    nullable: bool = True
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class TableContract:
    """A named table: its columns and whether extra columns are allowed."""

    name: str
    columns: tuple[Column, ...]
    extra_columns: bool = True

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the required and optional columns, in contract order."""
        return pa.schema([pa.field(c.name, c.type, c.nullable) for c in self.columns])

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name}: no column {name!r} in the contract")


EVENTS = TableContract(
    "events",
    (
        Column("user_id", pa.string(), nullable=False, doc="who acted"),
        Column("item_id", pa.string(), nullable=False, doc="on what"),
        Column("ts", TS_TYPE, nullable=False, doc="when (UTC)"),
        Column("event", pa.string(), nullable=False, doc="one of EVENT_KINDS"),
        Column("value", pa.float64(), doc="rating or dwell seconds"),
    ),
)

ITEMS = TableContract(
    "items",
    (
        Column("item_id", pa.string(), nullable=False),
        Column("title", pa.string()),
        Column("text", pa.string()),
        Column("concepts", STR_LIST, doc="knowledge-base concepts"),
        Column("creator", pa.string(), required=False),
        Column("created_ts", TS_TYPE, required=False, doc="first day the item exists"),
        Column("image", pa.binary(), required=False, doc="PNG bytes"),
        Column("audio", pa.list_(pa.float32()), required=False, doc="audio-like vector"),
    ),
)

USERS = TableContract(
    "users",
    (
        Column("user_id", pa.string(), nullable=False),
        Column("concepts", STR_LIST, doc="declared interests"),
    ),
)

EXAMPLES = TableContract(
    "examples",
    (
        Column("label", pa.int8(), nullable=False, doc="1 = positive"),
        Column("split", pa.string(), nullable=False, doc="train / valid / test by time"),
        Column("user_id", pa.string(), doc="null for sources without users (Criteo)"),
        Column("item_id", pa.string()),
        Column("ts", TS_TYPE),
        Column("lt7", pa.int8(), doc="active days in [day, day+7), 1..7"),
        Column("lt14", pa.int8(), doc="active days in [day, day+14), 1..14"),
        Column("history", STR_LIST, doc="last N positive items strictly before ts"),
    ),
)

CONTRACTS = {c.name: c for c in (EVENTS, ITEMS, USERS, EXAMPLES)}


@dataclass
class Violation:
    """One broken rule: which column, what is wrong, how many rows, and the first few."""

    table: str
    column: str
    problem: str
    count: int = 0
    rows: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        more = ", ..." if self.count > len(self.rows) else ""
        label = "row" if len(self.rows) == 1 else "rows"
        where = f" ({label} {', '.join(map(str, self.rows))}{more})" if self.rows else ""
        n = f"{self.count} {'row' if self.count == 1 else 'rows'}: " if self.count else ""
        return f"{self.table}.{self.column}: {n}{self.problem}{where}"


@dataclass
class ValidationReport:
    """Every violation found in one table."""

    table: str
    num_rows: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def raise_if_invalid(self) -> None:
        if self.violations:
            raise ContractError(self)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.table}: {self.num_rows} rows, valid"
        lines = [f"{self.table}: {len(self.violations)} violations in {self.num_rows} rows"]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


class ContractError(ValueError):
    """A table that breaks the contract; ``report`` holds every violation."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(str(report))
        self.report = report


def _first_rows(mask: pa.ChunkedArray | pa.Array, limit: int = 5) -> tuple[int, list[int]]:
    arr = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    idx = np.flatnonzero(arr)
    return int(idx.size), idx[:limit].tolist()


def validate_table(
    table: pa.Table, contract: TableContract | str, sparse: list[str] | None = None
) -> ValidationReport:
    """Check ``table`` against ``contract`` and return every violation found.

    Checks: required columns present; types exact (no coercion); non-nullable columns have no
    nulls; ids are non-empty; ``events.event`` in EVENT_KINDS; ``examples.label`` in {0, 1},
    ``examples.split`` in SPLITS, ``lt7`` in 1..7 and ``lt14`` in 1..14; for examples, each
    feature named in ``sparse`` has a ``list<string>`` column (its own, or the one examples
    store it under: ``history`` for ``s_history``).
    """
    c = CONTRACTS[contract] if isinstance(contract, str) else contract
    report = ValidationReport(c.name, table.num_rows)
    add = report.violations.append
    for col in c.columns:
        if col.name not in table.column_names:
            if col.required:
                add(Violation(c.name, col.name, f"missing column (expected {col.type})"))
            continue
        actual = table.schema.field(col.name).type
        if actual != col.type:
            add(Violation(c.name, col.name, f"type is {actual}, expected {col.type}"))
            continue
        arr = table.column(col.name)
        if not col.nullable and arr.null_count:
            n, rows = _first_rows(pc.is_null(arr))
            add(Violation(c.name, col.name, "null in a non-nullable column", n, rows))
        if col.name.endswith("_id") and pa.types.is_string(actual):
            n, rows = _first_rows(pc.fill_null(pc.equal(pc.utf8_length(arr), 0), False))
            if n:
                add(Violation(c.name, col.name, "empty id", n, rows))
    _check_values(table, c, add)
    for name in sparse or []:
        # a feature examples store under another column (s_history as history) is checked there
        column = name if name in table.column_names else STORED_AS.get(name, name)
        if column not in table.column_names:
            add(Violation(c.name, name, "missing sparse feature column"))
        elif table.schema.field(column).type != STR_LIST:
            add(
                Violation(
                    c.name,
                    column,
                    f"sparse feature type is {table.schema.field(column).type}, "
                    f"expected {STR_LIST}",
                )
            )
    return report


def _check_values(table: pa.Table, c: TableContract, add) -> None:  # noqa: ANN001
    def has(name: str, typ: pa.DataType) -> bool:
        return name in table.column_names and table.schema.field(name).type == typ

    def outside(name: str, mask: pa.ChunkedArray, problem: str) -> None:
        # Null cells are the nullability rule's business, not a bad value: mask them out.
        n, rows = _first_rows(pc.and_(pc.fill_null(mask, False), pc.is_valid(table[name])))
        if n:
            add(Violation(c.name, name, problem, n, rows))

    if c is EVENTS and has("event", pa.string()):
        ok = pc.is_in(table["event"], value_set=pa.array(EVENT_KINDS))
        outside("event", pc.invert(ok), f"event not in {EVENT_KINDS}")
    if c is EXAMPLES:
        if has("label", pa.int8()):
            outside(
                "label",
                pc.invert(pc.is_in(table["label"], pa.array([0, 1], pa.int8()))),
                "label not in {0, 1}",
            )
        if has("split", pa.string()):
            outside(
                "split",
                pc.invert(pc.is_in(table["split"], pa.array(SPLITS))),
                f"split not in {SPLITS}",
            )
        for name, hi in (("lt7", 7), ("lt14", 14)):
            if has(name, pa.int8()):
                col = table[name]
                outside(name, pc.or_(pc.less(col, 1), pc.greater(col, hi)), f"outside 1..{hi}")
