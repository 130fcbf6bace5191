"""Delimited text files read row by row: one bad row is quarantined, never the whole file.

``read_rows`` turns a file into string columns plus the 1-based line number of every row.
Per-row decoding: a file that is valid UTF-8 is read as is; otherwise only the bytes that are
not UTF-8 are decoded as Latin-1 (valid UTF-8 elsewhere, even on the same line, stays exact)
and the lines holding them are recorded as repaired (``decoded_latin1``). Rows with the wrong
number of fields are rejected (``wrong_field_count``); blank lines are skipped. ``Rows`` then
parses typed columns (``integers``, ``floats``, ``epoch_seconds``), marking each row that does
not parse with a reason (the first failing check wins), and ``finish`` moves the marked rows
into the file's ``FileQuality`` with their line and text.

The fast path is Arrow's CSV parser (single-threaded, so that it numbers rows; about 0.1 s per
million rows); files with ``::`` separators and free-text fields (ml-1m ``movies.dat``,
``tags.dat``) are split in Python (they hold at most ~100k lines).
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsys.sources.quarantine import FileQuality

# A plausible epoch-seconds window: 1970-01-01T00:00Z (inclusive) .. 2100-01-01T00:00Z
# (exclusive). Anything outside (negative, year 5138, 1e16 s that would overflow int64 in ms)
# is rejected as ``ts_out_of_window``.
TS_WINDOW_S = (0, 4_102_444_800)

WRONG_FIELD_COUNT = "wrong_field_count"
TS_OUT_OF_WINDOW = "ts_out_of_window"
DECODED_LATIN1 = "decoded_latin1"

_INTEGER = r"^\s*-?\d{1,18}\s*$"  # at most 18 digits: always fits int64
_FLOAT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?\s*$"
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # surrogateescape's stand-in for a raw byte
_UNIT_SEPARATOR = "\x1f"


@dataclass
class Rows:
    """The rows of one file that have the expected fields: string columns, their line numbers,
    and the reason each row is rejected (``None`` = still good)."""

    quality: FileQuality
    separator: str
    columns: dict[str, pa.Array]  # name -> (R,) strings, or numbers when parsed while read
    line: np.ndarray  # (R,) int64, 1-based line number in the file
    reason: np.ndarray  # (R,) object: None or the first failing check's reason

    def __len__(self) -> int:
        return len(self.line)

    def reject(self, bad: np.ndarray, reason: str) -> None:
        """Mark rows ``bad`` (bool (R,)) with ``reason`` unless an earlier check marked them."""
        self.reason[bad & (self.reason == None)] = reason  # noqa: E711 (elementwise)

    def strings(self, name: str) -> np.ndarray:
        """Column ``name`` as an object array of ``str`` (R,)."""
        return self.columns[name].to_numpy(zero_copy_only=False)

    def integers(self, name: str, reason: str) -> np.ndarray:
        """Column ``name`` as int64 (R,); rows that are not an integer get ``reason`` (value 0)."""
        values, ok = _parse(self.columns[name], pa.int64(), _INTEGER)
        self.reject(~ok, reason)
        return values

    def floats(self, name: str, reason: str) -> np.ndarray:
        """Column ``name`` as float64 (R,); rows that are not a finite number get ``reason``."""
        values, ok = _parse(self.columns[name], pa.float64(), _FLOAT)
        ok &= np.isfinite(values)
        self.reject(~ok, reason)
        return np.where(ok, values, 0.0)

    def epoch_seconds(
        self, name: str, reason: str, window_s: tuple[int, int] = TS_WINDOW_S
    ) -> np.ndarray:
        """Column ``name`` as int64 epoch seconds (R,): not an integer -> ``reason``; outside
        ``[window_s[0], window_s[1])`` -> ``ts_out_of_window``."""
        seconds = self.integers(name, reason)
        self.reject((seconds < window_s[0]) | (seconds >= window_s[1]), TS_OUT_OF_WINDOW)
        return seconds

    def finish(self) -> np.ndarray:
        """Move the rejected rows into ``quality``; returns the good rows' mask (R,) bool."""
        bad = self.reason != None  # noqa: E711 (elementwise)
        index = np.flatnonzero(bad)
        if len(index):
            taken = pa.array(index)
            fields = [
                column.take(taken).to_numpy(zero_copy_only=False)
                for column in self.columns.values()
            ]
            texts = [self.separator.join(map(str, parts)) for parts in zip(*fields, strict=True)]
            self.quality.reject(self.line[index].tolist(), self.reason[index].tolist(), texts)
        return ~bad


def read_rows(
    path: Path,
    names: list[str],
    separator: str,
    quality: FileQuality,
    *,
    header: bool = False,
    quoted: bool = False,
    types: dict[str, pa.DataType] | None = None,
) -> Rows:
    """Split ``path`` into ``names`` columns (strings, or ``types``) with Arrow's CSV parser.

    ``separator``: one character, or ``"::"`` (fields that never contain ``:``); ``quoted``:
    fields may be in double quotes (CSV); ``header``: the first line is a header (skipped).
    ``types``: a fast path for numeric files: when every value of every row parses as these
    types, the columns come back as numbers (less memory); otherwise as strings.
    """
    data = _utf8_rows(path.read_bytes(), quality)
    if separator == "::":
        data = data.replace(b"::", _UNIT_SEPARATOR.encode())
    delimiter = _UNIT_SEPARATOR if separator == "::" else separator
    invalid: list[tuple[int, str]] = []
    table = None
    if types:
        try:
            table = _arrow_csv(data, names, delimiter, separator, header, quoted, types, invalid)
        except pa.ArrowInvalid:  # a value that does not parse: read as strings
            table = None
        if table is not None and any(column.null_count for column in table.columns):
            table = None  # a blank line or an empty value: read as strings
    if table is None:
        invalid.clear()
        table = _arrow_csv(data, names, delimiter, separator, header, quoted, {}, invalid)
    first_line = 2 if header else 1
    all_lines = np.arange(first_line, first_line + table.num_rows + len(invalid))
    line = np.setdiff1d(all_lines, [n for n, _ in invalid], assume_unique=True)
    columns = {n: table.column(n).combine_chunks() for n in names}
    rows = Rows(quality, separator, columns, line, np.full(len(line), None, dtype=object))
    _drop_blank_lines(rows, data)
    _reject_wrong_field_counts(quality, invalid)
    quality.rows += len(rows)
    return rows


def _arrow_csv(
    data: bytes,
    names: list[str],
    delimiter: str,
    separator: str,
    header: bool,
    quoted: bool,
    types: dict[str, pa.DataType],
    invalid: list[tuple[int, str]],
) -> pa.Table:
    """Arrow's CSV parser on ``data``; rows with the wrong field count go to ``invalid``."""

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        invalid.append((int(row.number), row.text.replace(delimiter, separator)))
        return "skip"

    try:
        return pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(
                use_threads=False,  # row numbers are known only to the serial reader
                column_names=names,
                skip_rows=1 if header else 0,
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                ignore_empty_lines=False,  # keeps Arrow's row number equal to the line number
                invalid_row_handler=on_invalid,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: types.get(n, pa.string()) for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        if "Empty CSV file" not in str(e):
            raise
        return pa.table({n: pa.array([], types.get(n, pa.string())) for n in names})


def read_free_text_rows(path: Path, names: list[str], quality: FileQuality) -> Rows:
    """Split ``::``-separated lines whose third field is free text that may contain ``:``.

    Three fields: ``a::b::rest``; four fields: ``a::b::text::d`` (the last ``::`` ends the text).
    """
    text = _utf8_rows(path.read_bytes(), quality).decode("utf-8")
    fields: list[list[str]] = [[] for _ in names]
    line: list[int] = []
    invalid: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):  # per line of a small file
        row = raw.rstrip("\r")
        if not row.strip():
            continue
        parts = row.split("::", 2)
        if len(parts) == 3 and len(names) == 4:
            parts = parts[:2] + parts[2].rsplit("::", 1)
        if len(parts) != len(names):
            invalid.append((number, row))
            continue
        for column, value in zip(fields, parts, strict=True):
            column.append(value)
        line.append(number)
    columns = {n: pa.array(values, pa.string()) for n, values in zip(names, fields, strict=True)}
    line_numbers = np.array(line, dtype=np.int64)
    rows = Rows(quality, "::", columns, line_numbers, np.full(len(line), None, dtype=object))
    _reject_wrong_field_counts(quality, invalid)
    quality.rows += len(rows)
    return rows


def _reject_wrong_field_counts(quality: FileQuality, invalid: list[tuple[int, str]]) -> None:
    rejected = [(n, text) for n, text in invalid if text.strip()]  # blank lines are not rows
    quality.rows += len(rejected)
    quality.reject(
        [n for n, _ in rejected], [WRONG_FIELD_COUNT] * len(rejected), [t for _, t in rejected]
    )


def _drop_blank_lines(rows: Rows, data: bytes) -> None:
    """Arrow reads a blank line as a row of empty fields: drop those rows (a line of bare
    separators is a row, and stays)."""
    if any(not pa.types.is_string(column.type) for column in rows.columns.values()):
        return  # parsed as numbers: no field is empty
    empty = np.ones(len(rows), bool)
    for column in rows.columns.values():
        empty &= pc.equal(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    if not empty.any():
        return
    starts = np.concatenate(
        [[0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1, [len(data) + 1]]
    )
    candidates = np.flatnonzero(empty)
    blank = np.array(
        [not data[starts[n - 1] : starts[n] - 1].strip(b"\r") for n in rows.line[candidates]]
    )
    keep = np.ones(len(rows), bool)
    keep[candidates[blank]] = False
    if keep.all():
        return
    taken = pa.array(np.flatnonzero(keep))
    rows.columns = {n: column.take(taken) for n, column in rows.columns.items()}
    rows.line = rows.line[keep]
    rows.reason = rows.reason[keep]


def _utf8_rows(data: bytes, quality: FileQuality) -> bytes:
    """``data`` as UTF-8: unchanged when it is valid UTF-8; otherwise every byte that is not
    part of a UTF-8 character is decoded as Latin-1, and its line recorded as repaired."""
    if _is_utf8(data):
        return data
    text = data.decode("utf-8", "surrogateescape")
    repaired: list[int] = []
    line, counted_to = 1, 0
    for match in _ESCAPED_BYTE.finditer(text):
        line += text.count("\n", counted_to, match.start())
        counted_to = match.start()
        if not repaired or repaired[-1] != line:
            repaired.append(line)
    quality.repair(DECODED_LATIN1, repaired)
    fixed = _ESCAPED_BYTE.sub(lambda m: chr(ord(m.group()) - 0xDC00), text)
    return fixed.encode("utf-8")


def _is_utf8(data: bytes, chunk: int = 1 << 24) -> bool:
    """Whether ``data`` is valid UTF-8, checked in chunks (no full-size copy)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(data), chunk):
            decoder.decode(data[start : start + chunk], final=start + chunk >= len(data))
    except UnicodeDecodeError:
        return False
    return True


def _parse(column: pa.Array, type_: pa.DataType, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """``column`` (strings) as ``type_`` values and an ok mask; unparseable values become 0."""
    if column.type == type_:  # parsed while read
        return column.to_numpy(zero_copy_only=False), np.ones(len(column), bool)
    try:  # fast path: every value parses
        values = pc.cast(column, type_)
        ok = np.ones(len(column), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        matches = pc.match_substring_regex(column, pattern)
        ok = matches.to_numpy(zero_copy_only=False).astype(bool)
        values = pc.cast(pc.if_else(matches, pc.utf8_trim_whitespace(column), "0"), type_)
    return values.to_numpy(zero_copy_only=False), ok
