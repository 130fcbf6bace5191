"""Bad MovieLens input: malformed rows, non-UTF-8 bytes, impossible timestamps.

One bad row is quarantined with its file, line and reason, and counted; the rest of the file is
read exactly as without it. A file with more bad rows than ``max_bad_fraction`` fails the read,
naming the file, the reasons and the first bad line. The last tests run the real
``recsys source`` command in a subprocess on a copy of the bundled data.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.sources.movielens import MovieLensError, read_movielens
from recsys.sources.quarantine import QUARANTINE_FILE, QUARANTINE_SCHEMA

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "ml-latest-small"
GOOD_ROWS = 1000
HEADER = "userId,movieId,rating,timestamp\n"

# (row as written, reason it is quarantined)
BAD_RATING_ROWS = [
    ("5,11,4.0", "wrong_field_count"),  # 3 fields
    ("5,11,4.0,964982703,7", "wrong_field_count"),  # 5 fields
    ("5,11,abc,964982703", "bad_rating"),
    (",11,4.0,964982703", "bad_user_id"),  # empty user id
    ("5,x11,4.0,964982703", "bad_movie_id"),
    ("5,11,nan,964982703", "bad_rating"),
    ("5,11,4.0,soon", "bad_ts"),
    ("5,11,4.0,10000000000000000", "ts_out_of_window"),  # 1e16 s: wraps int64 as ms
    ("5,11,4.0,-86400", "ts_out_of_window"),  # before 1970
    ("5,11,4.0,99999999999", "ts_out_of_window"),  # year 5138
]


def _good_rating(i: int) -> str:
    return f"{1 + i % 7},{11 + i % 3},{0.5 + (i % 10) / 2},{964982703 + i}"


def _ml_latest(root: Path, ratings: list[str], movies: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(HEADER + "".join(r + "\n" for r in ratings))
    (root / "movies.csv").write_bytes(
        (movies or "movieId,title,genres\n11,Heat (1995),Action\n12,Up (2009),Animation\n").encode()
    )
    return root


def _ratings_with_bad_rows() -> tuple[list[str], dict[int, tuple[str, str]]]:
    """GOOD_ROWS good rows with the bad ones spread through; {line: (text, reason)}."""
    rows = [_good_rating(i) for i in range(GOOD_ROWS)]
    expected = {}
    for k, (text, _) in enumerate(BAD_RATING_ROWS):
        rows.insert(50 + 90 * k, text)
    for index, text in enumerate(rows):
        for bad_text, reason in BAD_RATING_ROWS:
            if text == bad_text:
                expected[index + 2] = (text, reason)  # line 1 is the header
    return rows, expected


def _quarantine(logs_dir: Path) -> list[dict]:
    table = pq.read_table(logs_dir / QUARANTINE_FILE)
    assert table.schema.equals(QUARANTINE_SCHEMA)
    return table.to_pylist()


def test_each_malformed_rating_row_is_quarantined_with_its_line_and_reason(tmp_path: Path):
    rows, expected = _ratings_with_bad_rows()
    logs = read_movielens(_ml_latest(tmp_path / "ml", rows))
    raw = logs.write(tmp_path / "raw")
    quarantined = _quarantine(raw)
    ratings_file = str(tmp_path / "ml" / "ratings.csv")
    assert [(q["file"], q["line"], q["reason"]) for q in quarantined] == [
        (ratings_file, line, reason) for line, (_, reason) in sorted(expected.items())
    ]
    assert [q["text"] for q in quarantined] == [t for _, (t, _) in sorted(expected.items())]
    assert logs.events.num_rows == GOOD_ROWS  # every good row kept, no bad row entered
    counts = logs.summary()["quarantined"]["ratings.csv"]
    assert counts == {
        "ts_out_of_window": 3,
        "bad_rating": 2,
        "wrong_field_count": 2,
        "bad_movie_id": 1,
        "bad_ts": 1,
        "bad_user_id": 1,
    }
    assert logs.summary()["rows_read"]["ratings.csv"] == GOOD_ROWS + len(BAD_RATING_ROWS)


def test_the_kept_rows_equal_a_read_of_the_file_without_the_bad_rows(tmp_path: Path):
    rows, _ = _ratings_with_bad_rows()
    dirty = read_movielens(_ml_latest(tmp_path / "dirty", rows))
    clean = read_movielens(_ml_latest(tmp_path / "clean", [_good_rating(i) for i in range(1000)]))
    assert dirty.events.equals(clean.events)
    assert dirty.items.equals(clean.items) and dirty.users.equals(clean.users)
    assert clean.quality.bad_rows == 0


def test_no_quarantined_time_enters_the_events_and_none_wraps_around(tmp_path: Path):
    rows, _ = _ratings_with_bad_rows()
    events = read_movielens(_ml_latest(tmp_path / "ml", rows)).events
    ms = events.column("ts").cast(pa.int64())
    assert pc.min(ms).as_py() == 964982703 * 1000
    assert pc.max(ms).as_py() == (964982703 + GOOD_ROWS - 1) * 1000


def test_a_narrower_time_window_quarantines_times_outside_it(tmp_path: Path):
    rows = [_good_rating(i) for i in range(GOOD_ROWS)] + ["5,11,4.0,1700000000"]
    logs = read_movielens(
        _ml_latest(tmp_path / "ml", rows), ts_window_s=(0, 1_600_000_000), max_bad_fraction=0.01
    )
    assert logs.summary()["quarantined"] == {"ratings.csv": {"ts_out_of_window": 1}}


def test_too_many_bad_rows_fail_the_read_naming_file_reasons_fraction_and_first_line(
    tmp_path: Path,
):
    rows = [_good_rating(i) for i in range(20)]
    rows[3] = "5,11,abc,964982703"
    rows[7] = "5,11"
    root = _ml_latest(tmp_path / "ml", rows)
    with pytest.raises(MovieLensError) as e:
        read_movielens(root)
    message = str(e.value)
    assert str(root / "ratings.csv") in message
    assert "2 of 20 rows quarantined (10.0%" in message
    assert "bad_rating: 1" in message and "wrong_field_count: 1" in message
    assert "first: line 5, bad_rating, '5,11,abc,964982703'" in message
    assert "> limit 1.0%" in message
    # the same file passes under a looser limit
    assert read_movielens(root, max_bad_fraction=0.2).events.num_rows == 18


def test_blank_lines_are_skipped_and_not_counted_as_bad(tmp_path: Path):
    root = _ml_latest(tmp_path / "ml", ["1,11,4.0,964982703", "", "2,12,3.0,964982704", ""])
    logs = read_movielens(root)
    assert logs.events.num_rows == 2
    assert logs.quality.bad_rows == 0 and logs.summary()["rows_read"]["ratings.csv"] == 2


def test_a_row_of_bare_separators_is_quarantined_not_skipped(tmp_path: Path):
    rows = [_good_rating(i) for i in range(GOOD_ROWS)] + [",,,"]
    logs = read_movielens(_ml_latest(tmp_path / "ml", rows))
    table = logs.quality.quarantine_table().to_pylist()
    assert [(q["line"], q["reason"], q["text"]) for q in table] == [
        (GOOD_ROWS + 2, "bad_user_id", ",,,")
    ]


@pytest.mark.skipif(not BUNDLED.is_dir(), reason="bundled data/ml-latest-small is absent")
def test_one_latin1_byte_in_movies_csv_repairs_only_its_row(tmp_path: Path, caplog):
    root = tmp_path / "ml"
    shutil.copytree(BUNDLED, root)
    clean_titles = _titles(read_movielens(BUNDLED).items)
    lines = (root / "movies.csv").read_bytes().split(b"\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(b"1,"))
    assert lines[at].startswith(b"1,Toy Story (1995),")
    # "Tóy Story" in Latin-1, and a valid UTF-8 "ü" on the same line
    lines[at] = lines[at].replace(b"Toy Story", "T\u00f3y Story \u00fc".encode("utf-8"))
    lines[at] = lines[at].replace("\u00f3".encode("utf-8"), "\u00f3".encode("latin-1"))
    (root / "movies.csv").write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.INFO, logger="recsys.sources.movielens"):
        logs = read_movielens(root)
    titles = _titles(logs.items)
    non_ascii = {k: t for k, t in clean_titles.items() if not t.isascii()}
    assert len(non_ascii) == 293  # every other non-ASCII title is exact, none is mojibake
    assert {k: titles[k] for k in non_ascii} == non_ascii
    assert titles["1"] == "T\u00f3y Story \u00fc (1995)"
    assert {k: t for k, t in titles.items() if k != "1"} == {
        k: t for k, t in clean_titles.items() if k != "1"
    }
    assert logs.summary()["repaired"] == {"movies.csv": {"decoded_latin1": 1}}
    assert logs.quality.files[str(root / "movies.csv")].repaired["decoded_latin1"] == [at + 1]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "movies.csv" in r.getMessage() and f"line {at + 1}" in r.getMessage() for r in warned
    )


def _titles(items: pa.Table) -> dict[str, str]:
    return {
        i: t
        for i, t in zip(
            items.column("item_id").to_pylist(), items.column("title").to_pylist(), strict=True
        )
        if t is not None
    }


def test_a_latin1_ml100k_item_file_is_decoded_and_logged_at_info_only(tmp_path: Path, caplog):
    root = tmp_path / "ml-100k"
    root.mkdir()
    (root / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t891717742\n")
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    (root / "u.item").write_bytes(
        f"10|Caf\u00e9 Society (1995)|01-Jan-1995||http://x|{flags}\n"
        f"20|Heat (1995)|01-Jan-1995||http://y|{flags}\n".encode("latin-1")
    )
    with caplog.at_level(logging.INFO, logger="recsys.sources.movielens"):
        logs = read_movielens(root)
    assert _titles(logs.items) == {"10": "Caf\u00e9 Society (1995)", "20": "Heat (1995)"}
    assert logs.summary()["repaired"] == {"u.item": {"decoded_latin1": 1}}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_dat_rows_with_the_wrong_fields_are_quarantined_with_their_text(tmp_path: Path):
    root = tmp_path / "ml-1m"
    root.mkdir()
    good = [f"{1 + i % 5}::1196::{1 + i % 5}::{978300760 + i}" for i in range(200)]
    (root / "ratings.dat").write_text("\n".join([*good[:100], "7::1196::5", *good[100:]]) + "\n")
    movies = [f"{1000 + i}::Movie {i}: The Sequel ({1990 + i % 20})::Drama" for i in range(150)]
    movies.insert(10, "1196 Star Wars (1977) Action")
    (root / "movies.dat").write_text("\n".join(movies) + "\n")
    logs = read_movielens(root)
    rows = logs.quality.quarantine_table().to_pylist()
    assert [(Path(q["file"]).name, q["line"], q["reason"], q["text"]) for q in rows] == [
        ("movies.dat", 11, "wrong_field_count", "1196 Star Wars (1977) Action"),
        ("ratings.dat", 101, "wrong_field_count", "7::1196::5"),
    ]
    assert logs.events.num_rows == 200
    assert _titles(logs.items)["1000"] == "Movie 0: The Sequel (1990)"


def test_the_detected_layout_is_logged(tmp_path: Path, caplog):
    root = _ml_latest(tmp_path / "ml", [_good_rating(0)])
    with caplog.at_level(logging.INFO, logger="recsys.sources.movielens"):
        read_movielens(root)
    [record] = [r for r in caplog.records if "layout" in r.getMessage()]
    assert record.name == "recsys.sources.movielens" and record.levelno == logging.INFO
    assert record.getMessage() == f"{root}: MovieLens layout ml-latest (ratings.csv, movies.csv)"


# --- the real command ----------------------------------------------------------------------


def _recsys_source(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "source",
            "--config",
            str(REPO / "configs" / "movielens.yaml"),
            "--set",
            f"source.path={source}",
            "--set",
            f"output_dir={out}",
        ],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not BUNDLED.is_dir(), reason="bundled data/ml-latest-small is absent")
def test_recsys_source_quarantines_a_bad_row_beside_the_raw_logs(tmp_path: Path):
    source = tmp_path / "ml"
    shutil.copytree(BUNDLED, source)
    lines = (source / "ratings.csv").read_text().split("\n")
    lines.insert(500, "1,abc,4.0,964982703")  # becomes line 501
    (source / "ratings.csv").write_text("\n".join(lines))
    run = _recsys_source(source, tmp_path / "out")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["quarantined"] == {"ratings.csv": {"bad_movie_id": 1}}
    assert summary["event_kinds"] == {"rating": 100836, "tag": 3683}
    assert _quarantine(tmp_path / "out" / "raw") == [
        {
            "file": str(source / "ratings.csv"),
            "line": 501,
            "reason": "bad_movie_id",
            "text": "1,abc,4.0,964982703",
        }
    ]
    assert "MovieLens layout ml-latest" in run.stderr


def test_recsys_source_fails_on_too_many_bad_rows_and_publishes_nothing(tmp_path: Path):
    source = _ml_latest(tmp_path / "ml", ["1,11,4.0,964982703", "1,12,abc,964982704"])
    run = _recsys_source(source, tmp_path / "out")
    assert run.returncode == 2
    assert f"{source / 'ratings.csv'}: 1 of 2 rows quarantined" in run.stderr
    assert "first: line 3, bad_rating" in run.stderr
    assert not (tmp_path / "out" / "raw").exists()
