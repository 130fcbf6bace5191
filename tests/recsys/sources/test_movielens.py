"""read_movielens: every official layout becomes contract-valid raw logs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.contract import EVENTS, ITEMS, STR_LIST, TS_TYPE, USERS, validate_table
from recsys.sources.movielens import MovieLensError, detect_layout, read_movielens
from recsys.sources.raw_logs import RawLogs

BUNDLED = Path(__file__).resolve().parents[3] / "data" / "ml-latest-small"

GENRES_100K = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
    "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\n"
    "Romance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"
)


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_bytes(text.encode(encoding))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    _write(d / "u.data", "1\t10\t5\t881250949\n2\t10\t3\t891717742\n3\t20\t1\t878887116\n")
    _write(
        d / "u.item",
        f"10|Café Society (1995)|01-Jan-1995||http://us.imdb.com/x|{_flags(5, 8)}\n"
        f"20|unknown|||http://us.imdb.com/y|{_flags(0)}\n",
        encoding="latin-1",
    )
    _write(d / "u.genre", GENRES_100K, encoding="latin-1")
    _write(d / "u.user", "1|24|M|technician|85711\n2|17|F|student|T8H1N\n")
    return d


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    d.mkdir()
    _write(d / "ratings.dat", "1::1196::5::978300760\n2::3000::2::978302109\n")
    _write(
        d / "movies.dat",
        "1196::Star Wars: Episode V - The Empire Strikes Back (1980)::Action|Adventure|Sci-Fi\n"
        "3000::Princess Mononoke, The (Mononoke Hime) (1997)::Animation|Children's\n"
        "3001::Déjà Vu (1997)::Drama\n",
        encoding="latin-1",
    )
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return d


@pytest.fixture
def ml_latest(tmp_path: Path) -> Path:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    _write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,11,3.5,964982703\n1,12,4.0,964981247\n"
        "2,11,0.5,1445714994\n",
    )
    _write(
        d / "movies.csv",
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "12,Death Note: Desu nôto (2006–2007),(no genres listed)\n"
        "13,Babylon 5,Sci-Fi\n",
    )
    _write(
        d / "tags.csv",
        "userId,movieId,tag,timestamp\n"
        "2,11,Funny ,1445714995\n"
        "3,11,funny,1445714996\n"
        '3,11,"dark,  witty",1445714997\n',
    )
    _write(d / "links.csv", "movieId,imdbId,tmdbId\n11,0112346,9087\n")
    return d


def _assert_valid(logs: RawLogs) -> None:
    for table, contract in ((logs.events, EVENTS), (logs.items, ITEMS), (logs.users, USERS)):
        report = validate_table(table, contract)
        assert report.ok, str(report)


def _rows(table: pa.Table, key: str) -> dict[str, dict]:
    return {r[key]: r for r in table.to_pylist()}


def _utc(seconds: int) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC")


# --- ml-100k ---------------------------------------------------------------------------------


def test_ml100k_ratings_become_rating_events_with_utc_millisecond_timestamps(ml100k: Path):
    logs = read_movielens(ml100k)
    _assert_valid(logs)
    assert logs.events.schema.field("ts").type == TS_TYPE
    events = logs.events.to_pylist()
    assert [(e["user_id"], e["item_id"], e["event"], e["value"]) for e in events] == [
        ("3", "20", "rating", 1.0),
        ("1", "10", "rating", 5.0),
        ("2", "10", "rating", 3.0),
    ]
    assert events[1]["ts"] == _utc(881250949)
    assert logs.events.column("ts").cast(pa.int64()).to_pylist()[1] == 881250949000


def test_ml100k_latin1_title_genre_flags_and_year_are_decoded(ml100k: Path):
    items = _rows(read_movielens(ml100k).items, "item_id")
    cafe = items["10"]
    assert cafe["title"] == "Café Society (1995)"
    assert cafe["concepts"] == ["genre:Comedy", "genre:Drama"]
    assert cafe["year"] == "1995"
    assert cafe["text"] == "Café Society (1995). Genres: Comedy, Drama"
    unknown = items["20"]
    assert unknown["concepts"] == [] and unknown["year"] is None
    assert unknown["text"] == "unknown"


def test_ml100k_demographics_are_string_columns_and_every_rating_user_has_a_row(ml100k: Path):
    users = read_movielens(ml100k).users
    for name in ("gender", "age", "occupation", "zip"):
        assert users.schema.field(name).type == pa.string()
    rows = _rows(users, "user_id")
    assert set(rows) == {"1", "2", "3"}
    assert rows["1"] | {"concepts": None} == {
        "user_id": "1",
        "concepts": None,
        "gender": "M",
        "age": "18-24",
        "occupation": "technician",
        "zip": "85711",
    }
    assert rows["2"]["age"] == "under-18" and rows["2"]["zip"] == "T8H1N"
    # user 3 rated but is not in u.user: present, attributes unknown, no declared concepts
    assert rows["3"] == {
        "user_id": "3",
        "concepts": [],
        "gender": None,
        "age": None,
        "occupation": None,
        "zip": None,
    }


def test_ml100k_without_u_genre_uses_the_standard_genre_names(ml100k: Path):
    (ml100k / "u.genre").unlink()
    items = _rows(read_movielens(ml100k).items, "item_id")
    assert items["10"]["concepts"] == ["genre:Comedy", "genre:Drama"]


# --- ml-1m -----------------------------------------------------------------------------------


def test_ml1m_double_colon_files_are_split_even_when_titles_contain_colons(ml1m: Path):
    logs = read_movielens(ml1m)
    _assert_valid(logs)
    items = _rows(logs.items, "item_id")
    assert items["1196"]["title"] == "Star Wars: Episode V - The Empire Strikes Back (1980)"
    assert items["1196"]["year"] == "1980"
    assert items["1196"]["concepts"] == ["genre:Action", "genre:Adventure", "genre:Sci-Fi"]
    assert items["3000"]["concepts"] == ["genre:Animation", "genre:Children's"]
    assert items["3001"]["title"] == "Déjà Vu (1997)"  # Latin-1 on disk
    events = logs.events.to_pylist()
    assert [(e["user_id"], e["item_id"], e["value"], e["ts"]) for e in events] == [
        ("1", "1196", 5.0, _utc(978300760)),
        ("2", "3000", 2.0, _utc(978302109)),
    ]


def test_ml1m_age_and_occupation_codes_become_readme_labels(ml1m: Path):
    rows = _rows(read_movielens(ml1m).users, "user_id")
    assert rows["1"] == {
        "user_id": "1",
        "concepts": [],
        "gender": "F",
        "age": "under-18",
        "occupation": "K-12 student",
        "zip": "48067",
    }
    assert (rows["2"]["age"], rows["2"]["occupation"]) == ("56+", "self-employed")


def test_ml10m_tags_dat_becomes_tag_events_and_users_dat_is_optional(ml1m: Path):
    (ml1m / "users.dat").unlink()
    _write(ml1m / "tags.dat", "7::1196::Darth: Vader::978300761\n")
    logs = read_movielens(ml1m)
    _assert_valid(logs)
    tag = [e for e in logs.events.to_pylist() if e["event"] == "tag"]
    assert tag == [
        {"user_id": "7", "item_id": "1196", "ts": _utc(978300761), "event": "tag", "value": None}
    ]
    assert logs.users.column_names == ["user_id", "concepts"]
    assert sorted(logs.users.column("user_id").to_pylist()) == ["1", "2", "7"]
    assert "tag:darth: vader" in _rows(logs.items, "item_id")["1196"]["concepts"]


# --- ml-latest -------------------------------------------------------------------------------


def test_ml_latest_quoted_titles_with_commas_and_half_star_ratings(ml_latest: Path):
    logs = read_movielens(ml_latest)
    _assert_valid(logs)
    items = _rows(logs.items, "item_id")
    assert items["11"]["title"] == "American President, The (1995)"
    assert items["11"]["year"] == "1995"
    ratings = [e for e in logs.events.to_pylist() if e["event"] == "rating"]
    assert sorted(e["value"] for e in ratings) == [0.5, 3.5, 4.0]


def test_ml_latest_tags_are_null_valued_tag_events(ml_latest: Path):
    events = read_movielens(ml_latest).events
    tags = [e for e in events.to_pylist() if e["event"] == "tag"]
    assert [(e["user_id"], e["item_id"], e["ts"], e["value"]) for e in tags] == [
        ("2", "11", _utc(1445714995), None),
        ("3", "11", _utc(1445714996), None),
        ("3", "11", _utc(1445714997), None),
    ]
    assert events.column("ts").to_pylist() == sorted(events.column("ts").to_pylist())


def test_ml_latest_concepts_are_genres_then_distinct_lowercased_tags_by_frequency(
    ml_latest: Path,
):
    items = _rows(read_movielens(ml_latest).items, "item_id")
    assert items["11"]["concepts"] == [
        "genre:Comedy",
        "genre:Drama",
        "genre:Romance",
        "tag:funny",
        "tag:dark, witty",
    ]
    assert items["11"]["text"] == (
        "American President, The (1995). Genres: Comedy, Drama, Romance. Tags: funny, dark, witty"
    )
    # "(no genres listed)" is no genre; a TV year range gives its first year
    assert items["12"]["concepts"] == [] and items["12"]["year"] == "2006"
    assert items["13"]["year"] is None and items["13"]["text"] == "Babylon 5. Genres: Sci-Fi"


def test_ml_latest_max_item_tags_keeps_the_most_used_tags(ml_latest: Path):
    items = _rows(read_movielens(ml_latest, max_item_tags=1).items, "item_id")
    assert items["11"]["concepts"][-1] == "tag:funny"
    assert not any(c.startswith("tag:dark") for c in items["11"]["concepts"])


def test_ml_latest_users_have_empty_declared_concepts_and_include_tag_only_users(
    ml_latest: Path,
):
    users = read_movielens(ml_latest).users
    assert users.column_names == ["user_id", "concepts"]
    assert users.schema.field("concepts").type == STR_LIST
    assert users.to_pylist() == [{"user_id": u, "concepts": []} for u in ("1", "2", "3")]


def test_ml_latest_items_rated_but_missing_from_movies_csv_still_get_a_row(ml_latest: Path):
    with open(ml_latest / "ratings.csv", "a") as f:
        f.write("1,99,2.0,964982800\n")
    logs = read_movielens(ml_latest)
    _assert_valid(logs)
    assert _rows(logs.items, "item_id")["99"] == {
        "item_id": "99",
        "title": None,
        "text": None,
        "concepts": [],
        "year": None,
    }


def test_raw_logs_survive_a_parquet_round_trip(ml_latest: Path, tmp_path: Path):
    logs = read_movielens(ml_latest)
    back = RawLogs.read(logs.write(tmp_path / "raw"))
    _assert_valid(back)
    assert back.events.equals(logs.events) and back.items.equals(logs.items)


def test_a_clean_read_writes_an_empty_quarantine_beside_the_raw_logs(
    ml_latest: Path, tmp_path: Path
):
    raw = read_movielens(ml_latest).write(tmp_path / "raw")
    quarantine = pq.read_table(raw / "quarantine.parquet")
    assert quarantine.num_rows == 0
    assert quarantine.column_names == ["file", "line", "reason", "text"]


# --- layout detection and errors -------------------------------------------------------------


def test_a_directory_without_a_layout_is_named_with_the_expected_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as e:
        read_movielens(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "notes.txt" in msg
    for name in ("u.data", "ratings.dat", "movies.dat", "ratings.csv", "movies.csv"):
        assert name in msg


def test_a_half_present_layout_says_which_file_is_missing(ml_latest: Path):
    (ml_latest / "movies.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"ml-latest layout .*lacks movies\.csv"):
        read_movielens(ml_latest)


def test_the_parent_of_a_single_layout_directory_is_accepted(ml_latest: Path):
    layout, root = detect_layout(ml_latest.parent)
    assert (layout.name, root) == ("ml-latest", ml_latest)


def test_a_file_with_too_many_malformed_rows_is_reported_with_its_path(ml_latest: Path):
    with open(ml_latest / "ratings.csv", "a") as f:
        f.write("1,abc,2.0,964982800\n")
    with pytest.raises(MovieLensError, match="ratings.csv"):
        read_movielens(ml_latest)


def test_a_non_integer_id_in_a_dat_file_names_file_reason_and_line(ml1m: Path):
    _write(ml1m / "ratings.dat", "1::1196::5::978300760\nx::3000::2::978302109\n")
    with pytest.raises(
        MovieLensError,
        match=r"ratings\.dat: 1 of 2 rows quarantined .*bad_user_id: 1; first: line 2, "
        r"bad_user_id, 'x::3000::2::978302109'",
    ):
        read_movielens(ml1m)


# --- bundled data ----------------------------------------------------------------------------


@pytest.mark.skipif(not BUNDLED.is_dir(), reason="bundled data/ml-latest-small is absent")
def test_bundled_ml_latest_small_has_the_published_counts_and_is_valid():
    logs = read_movielens(BUNDLED)  # how long this takes: benchmarks/movielens_read.py
    _assert_valid(logs)
    kinds = logs.summary()["event_kinds"]
    assert kinds == {"rating": 100836, "tag": 3683}
    assert logs.items.num_rows == 9742
    assert logs.users.num_rows == 610
