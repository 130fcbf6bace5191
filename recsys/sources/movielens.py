"""MovieLens files in any official layout -> raw logs (``RawLogs``, see ``recsys.contract``).

Layouts, detected from the files present in the directory (or in its only ``ml-*``-like
subdirectory that matches, so pointing at the folder a zip was unpacked into also works):

- ``ml-100k``: ``u.data`` (tab: user item rating ts), ``u.item`` (``|``, Latin-1: id, title,
  release date, video date, IMDb URL, 19 genre flags), ``u.genre`` (flag names; optional,
  the standard names are used without it), ``u.user`` (optional: id|age|gender|occupation|zip).
- ``ml-1m`` / ``ml-10m``: ``ratings.dat``, ``movies.dat`` (``::``-separated), optional
  ``users.dat`` (ml-1m: id::gender::age code::occupation code::zip) and ``tags.dat`` (ml-10m).
- ``ml-latest`` / ``ml-latest-small`` / ``ml-20m`` and later: ``ratings.csv``, ``movies.csv``,
  optional ``tags.csv``; ``links.csv`` and genome files are ignored.

Reading is row by row (``recsys.sources.text_rows``): a row with the wrong number of fields, an
id or rating that is not a number, or a timestamp that is not an integer or lies outside a
plausible window (``TS_WINDOW_S``: 1970-01-01 to 2100-01-01 UTC) is quarantined with its file,
line and reason (``RawLogs.quality``, written as ``quarantine.parquet`` beside the raw logs) and
the rest is kept; when a file's rejected fraction exceeds ``max_bad_fraction`` the read fails
with ``MovieLensError`` naming the file, the reasons and the first bad line. Text is decoded per
row: valid UTF-8 stays exact; bytes that are not UTF-8 (ml-100k and ml-1m are Latin-1) are
decoded as Latin-1 on their own line only, and those lines are counted as ``decoded_latin1``.
The detected layout is logged (logger ``recsys.sources.movielens``, INFO).

Mapping (the same for every layout):

- ``events``: each rating is a ``rating`` event (``value`` = stars, float64); each tag is a
  ``tag`` event (``value`` null). ``ts`` = epoch seconds -> ``timestamp[ms, UTC]``. Sorted by
  ``ts``, then user, item, rating before tag.
- ``items``: ``item_id`` (movie id as a string), ``title`` (as in the files, year included),
  ``text`` (``"<title>. Genres: A, B. Tags: x, y"``, parts without values left out),
  ``concepts`` (see below), ``year`` (string attribute, from ``(YYYY)`` or ``(YYYY-YYYY)`` at
  the end of the title; ml-100k falls back to the release date; null when unknown).
- ``users``: ``user_id``, ``concepts`` = ``[]`` (MovieLens has no declared interests: a user's
  own tags and ratings are behaviour, which the pipeline learns from events, not a declaration),
  and where the layout has them ``gender`` (M/F), ``age`` (bucket label, see ``AGE_BUCKETS``;
  ml-100k exact ages are bucketed the ml-1m way), ``occupation`` (a name; ml-1m codes are
  mapped to the README names) and ``zip``, all strings.
- Every user and item that appears in events has a row (attributes null when the
  user/item file does not list it).

Concept names: ``genre:<Genre>`` with the genre spelled as in the files (``genre:Comedy``,
``genre:Sci-Fi``; ml-100k/ml-1m say ``Children's``, ml-latest ``Children``); ``unknown`` and
``(no genres listed)`` mean no genre. ``tag:<tag>`` with the tag lower-cased, trimmed and inner
whitespace collapsed (``tag:dark comedy``); per movie, the ``max_item_tags`` tags used by the
most tagging events (ties alphabetical) are kept, genres first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.contract import EVENTS, ITEMS, STR_LIST, TS_TYPE, USERS, TableContract
from recsys.sources.quarantine import FileQuality, SourceQuality
from recsys.sources.raw_logs import RawLogs
from recsys.sources.text_rows import (
    DECODED_LATIN1,
    TS_WINDOW_S,
    Rows,
    read_free_text_rows,
    read_rows,
)

log = logging.getLogger(__name__)

MAX_ITEM_TAGS = 20
# Default limit on the fraction of rejected rows per file; the same default as the Spark gate's
# ``prepare.max_bad_fraction`` (callers pass the configured value).
MAX_BAD_FRACTION = 0.01

# Reasons a row is quarantined (besides ``wrong_field_count`` and ``ts_out_of_window``).
BAD_USER_ID = "bad_user_id"
BAD_MOVIE_ID = "bad_movie_id"
BAD_RATING = "bad_rating"
BAD_TS = "bad_ts"
BAD_GENRE_INDEX = "bad_genre_index"

# Genre flag names of ml-100k, used when u.genre is absent.
ML100K_GENRES = tuple(
    "unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|"
    "Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western".split("|")
)
NO_GENRE = ("unknown", "(no genres listed)", "")

# ml-1m age codes (README) and the bucket labels used for every layout.
AGE_BUCKETS = {
    1: "under-18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS = tuple(
    "other|academic/educator|artist|clerical/admin|college/grad student|customer service|"
    "doctor/health care|executive/managerial|farmer|homemaker|K-12 student|lawyer|programmer|"
    "retired|sales/marketing|scientist|self-employed|technician/engineer|tradesman/craftsman|"
    "unemployed|writer".split("|")
)

_YEAR = r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$"


@dataclass(frozen=True)
class Layout:
    """One official file layout: the files it needs, the ones it may have, and the encoding its
    text files are published in (``utf-8`` or ``latin-1``)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    encoding: str = "utf-8"

    def describe(self) -> str:
        opt = f" [{', '.join(self.optional)}]" if self.optional else ""
        return f"{self.name}: {', '.join(self.required)}{opt}"


LAYOUTS = (
    Layout("ml-100k", ("u.data", "u.item"), ("u.user", "u.genre"), "latin-1"),
    Layout("ml-1m", ("ratings.dat", "movies.dat"), ("users.dat", "tags.dat"), "latin-1"),
    Layout("ml-latest", ("ratings.csv", "movies.csv"), ("tags.csv", "links.csv"), "utf-8"),
)


class MovieLensError(ValueError):
    """MovieLens files that cannot be used (too many bad rows); the message names each file,
    the reasons with their counts and the first bad line."""


def detect_layout(path: str | Path) -> tuple[Layout, Path]:
    """Return the layout of ``path`` and the directory holding its files.

    Looks in ``path`` first, then in its subdirectories (when exactly one matches). Raises
    ``FileNotFoundError`` naming the directory, the expected files per layout and what was found.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected a MovieLens directory)")
    partial: list[str] = []
    for layout in LAYOUTS:
        present = [f for f in layout.required if (path / f).is_file()]
        if len(present) == len(layout.required):
            return layout, path
        if present:
            missing = [f for f in layout.required if f not in present]
            partial.append(
                f"{layout.name} layout (has {', '.join(present)}) lacks {', '.join(missing)}"
            )
    if not partial:
        found = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            for layout in LAYOUTS:
                if all((sub / f).is_file() for f in layout.required):
                    found.append((layout, sub))
                    break
        if len(found) == 1:
            return found[0]
    names = sorted(p.name for p in path.iterdir())
    expected = "; ".join(layout.describe() for layout in LAYOUTS)
    why = f" ({'; '.join(partial)})" if partial else ""
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "nothing"
    raise FileNotFoundError(
        f"{path}: no MovieLens layout matches{why}. Expected the files of one of: {expected}. "
        f"Found: {shown}"
    )


def read_movielens(
    path: str | Path,
    max_item_tags: int = MAX_ITEM_TAGS,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    ts_window_s: tuple[int, int] = TS_WINDOW_S,
) -> RawLogs:
    """Read a MovieLens directory in any official layout into raw logs (see module docstring).

    The result passes ``validate_table`` for EVENTS, ITEMS and USERS; ``result.quality`` holds
    the rejected rows (file, line, reason) and the repaired ones. Raises ``MovieLensError`` when
    a file's rejected fraction exceeds ``max_bad_fraction``.
    """
    layout, root = detect_layout(path)
    present = [f for f in (*layout.required, *layout.optional) if (root / f).is_file()]
    log.info("%s: MovieLens layout %s (%s)", root, layout.name, ", ".join(present))
    ctx = _Context(root, SourceQuality(), ts_window_s)
    reader = {"ml-100k": _read_100k, "ml-1m": _read_dat, "ml-latest": _read_csv}[layout.name]
    ratings, tags, movies, users = reader(ctx)
    _report(ctx.quality, layout, max_bad_fraction)
    logs = _assemble(ratings, tags, movies, users, max_item_tags)
    logs.quality = ctx.quality
    return logs


def _report(quality: SourceQuality, layout: Layout, max_bad_fraction: float) -> None:
    """Log repairs and quarantined rows; raise ``MovieLensError`` past ``max_bad_fraction``."""
    level = logging.INFO if layout.encoding == "latin-1" else logging.WARNING
    for f in quality.files.values():
        lines = f.repaired.get(DECODED_LATIN1, [])
        if lines:
            log.log(
                level,
                "%s: %d lines are not UTF-8; their non-UTF-8 bytes were decoded as Latin-1 "
                "(first: line %d)",
                f.path,
                len(lines),
                lines[0],
            )
    failures = quality.failures(max_bad_fraction)
    if failures:
        raise MovieLensError(
            "; ".join(failures) + " (prepare.max_bad_fraction; fix or remove those rows)"
        )
    for line in quality.warnings():
        log.warning(
            "%s; moved to the quarantine, run continues (limit %.1f%%)",
            line,
            100 * max_bad_fraction,
        )


# --- per-layout readers -------------------------------------------------------------------
# Each returns (ratings[user, item, rating, ts], tags[user, item, tag, ts] | None,
# movies[item, title, genres: list, year], users[user, attributes...] | None), keeping only the
# rows that pass every check; the others are recorded in ``quality`` with line and reason.

_Frames = tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, pd.DataFrame | None]


@dataclass(frozen=True)
class _Context:
    root: Path
    quality: SourceQuality
    ts_window_s: tuple[int, int]

    def file(self, name: str) -> FileQuality:
        return self.quality.file(self.root / name)


# Column types of the ratings files, parsed while read when every row is clean.
_RATING_TYPES = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "ts": pa.int64()}


def _ratings(rows: Rows, ctx: _Context) -> pd.DataFrame:
    ratings = pd.DataFrame(
        {
            "user": rows.integers("user", BAD_USER_ID),
            "item": rows.integers("item", BAD_MOVIE_ID),
            "rating": rows.floats("rating", BAD_RATING),
            "ts": rows.epoch_seconds("ts", BAD_TS, ctx.ts_window_s),
        }
    )
    return ratings[rows.finish()].reset_index(drop=True)


def _tags(rows: Rows, ctx: _Context) -> pd.DataFrame:
    tags = pd.DataFrame(
        {
            "user": rows.integers("user", BAD_USER_ID),
            "item": rows.integers("item", BAD_MOVIE_ID),
            "tag": rows.strings("tag"),
            "ts": rows.epoch_seconds("ts", BAD_TS, ctx.ts_window_s),
        }
    )
    return tags[rows.finish()].reset_index(drop=True)


def _read_100k(ctx: _Context) -> _Frames:
    root = ctx.root
    ratings = _ratings(
        read_rows(
            root / "u.data", list(_RATING_TYPES), "\t", ctx.file("u.data"), types=_RATING_TYPES
        ),
        ctx,
    )
    genres = list(ML100K_GENRES)
    if (root / "u.genre").is_file():
        g = read_rows(root / "u.genre", ["name", "index"], "|", ctx.file("u.genre"))
        index = g.integers("index", BAD_GENRE_INDEX)
        good = g.finish()
        genres = list(pd.Series(g.strings("name")[good], index=index[good]).sort_index())
    names = ["item", "title", "release", "video", "url", *[f"g{i}" for i in range(len(genres))]]
    raw = read_rows(root / "u.item", names, "|", ctx.file("u.item"))
    item = raw.integers("item", BAD_MOVIE_ID)
    good = raw.finish()
    flags = np.stack([raw.strings(n)[good] == "1" for n in names[5:]], axis=1)
    title = pd.Series(raw.strings("title")[good], dtype=object)
    movies = pd.DataFrame({"item": item[good], "title": title.where(title != "", None)})
    movies["genres"] = _flag_lists(flags, genres)
    release = pd.Series(raw.strings("release")[good], dtype=object)
    year = release.str.extract(r"(\d{4})\s*$", expand=False)
    movies["year"] = _title_year(movies["title"]).fillna(year)
    users = None
    if (root / "u.user").is_file():
        u = read_rows(
            root / "u.user",
            ["user", "age", "gender", "occupation", "zip"],
            "|",
            ctx.file("u.user"),
        )
        user = u.integers("user", BAD_USER_ID)
        good = u.finish()
        users = pd.DataFrame(
            {
                "user": user[good],
                "gender": u.strings("gender")[good],
                "age": _age_bucket(pd.to_numeric(pd.Series(u.strings("age")[good]), "coerce")),
                "occupation": u.strings("occupation")[good],
                "zip": u.strings("zip")[good],
            }
        )
    return ratings, None, movies, users


def _read_dat(ctx: _Context) -> _Frames:
    root = ctx.root
    ratings = _ratings(
        read_rows(
            root / "ratings.dat",
            list(_RATING_TYPES),
            "::",
            ctx.file("ratings.dat"),
            types=_RATING_TYPES,
        ),
        ctx,
    )
    m = read_free_text_rows(
        root / "movies.dat", ["item", "title", "genres"], ctx.file("movies.dat")
    )
    item = m.integers("item", BAD_MOVIE_ID)
    good = m.finish()
    movies = pd.DataFrame({"item": item[good], "title": m.strings("title")[good]})
    movies["genres"] = _split_genres(pd.Series(m.strings("genres")[good], dtype=object))
    movies["year"] = _title_year(movies["title"])
    tags = None
    if (root / "tags.dat").is_file():
        t = read_free_text_rows(
            root / "tags.dat", ["user", "item", "tag", "ts"], ctx.file("tags.dat")
        )
        tags = _tags(t, ctx)
    users = None
    if (root / "users.dat").is_file():
        u = read_rows(
            root / "users.dat",
            ["user", "gender", "age", "occupation", "zip"],
            "::",
            ctx.file("users.dat"),
        )
        user = u.integers("user", BAD_USER_ID)
        good = u.finish()
        age = pd.Series(u.strings("age")[good], dtype=object)
        occupation = pd.Series(u.strings("occupation")[good], dtype=object)
        code = pd.to_numeric(occupation, errors="coerce")
        occupation_name = pd.Series(ML1M_OCCUPATIONS).reindex(code.to_numpy()).to_numpy()
        users = pd.DataFrame(
            {
                "user": user[good],
                "gender": u.strings("gender")[good],
                "age": pd.to_numeric(age, errors="coerce").map(AGE_BUCKETS).fillna(age),
                "occupation": pd.Series(occupation_name, index=occupation.index).fillna(occupation),
                "zip": u.strings("zip")[good],
            }
        )
    return ratings, tags, movies, users


def _read_csv(ctx: _Context) -> _Frames:
    root = ctx.root
    r = read_rows(
        root / "ratings.csv",
        list(_RATING_TYPES),
        ",",
        ctx.file("ratings.csv"),
        header=True,
        quoted=True,
        types=_RATING_TYPES,
    )
    ratings = _ratings(r, ctx)
    m = read_rows(
        root / "movies.csv",
        ["item", "title", "genres"],
        ",",
        ctx.file("movies.csv"),
        header=True,
        quoted=True,
    )
    item = m.integers("item", BAD_MOVIE_ID)
    good = m.finish()
    movies = pd.DataFrame({"item": item[good], "title": m.strings("title")[good]})
    movies["genres"] = _split_genres(pd.Series(m.strings("genres")[good], dtype=object))
    movies["year"] = _title_year(movies["title"])
    tags = None
    if (root / "tags.csv").is_file():
        t = read_rows(
            root / "tags.csv",
            ["user", "item", "tag", "ts"],
            ",",
            ctx.file("tags.csv"),
            header=True,
            quoted=True,
        )
        tags = _tags(t, ctx)
    return ratings, tags, movies, None


# --- field helpers ------------------------------------------------------------------------


def _title_year(title: pd.Series) -> pd.Series:
    return title.str.extract(_YEAR, expand=False)


def _split_genres(genres: pd.Series) -> pd.Series:
    parts = genres.fillna("").str.split("|")
    return parts.map(lambda gs: [g for g in gs if g.strip() not in NO_GENRE])


def _flag_lists(flags: np.ndarray, names: list[str]) -> list[list[str]]:
    keep = np.array([n not in NO_GENRE for n in names])
    rows, cols = np.nonzero(flags & keep)
    out: list[list[str]] = [[] for _ in range(flags.shape[0])]
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):  # per genre flag, not rating
        out[r].append(names[c])
    return out


def _age_bucket(age: pd.Series) -> pd.Series:
    edges = [-np.inf, 18, 25, 35, 45, 50, 56, np.inf]
    labels = list(AGE_BUCKETS.values())
    return pd.cut(age, edges, right=False, labels=labels).astype(object).where(age.notna(), None)


def _normalize_tags(tag: pd.Series) -> pd.Series:
    return tag.astype(str).str.strip().str.lower().str.replace(r"\s+", " ", regex=True)


# --- assembly -----------------------------------------------------------------------------


def _assemble(
    ratings: pd.DataFrame,
    tags: pd.DataFrame | None,
    movies: pd.DataFrame,
    users: pd.DataFrame | None,
    max_item_tags: int,
) -> RawLogs:
    events = _events(ratings, tags)
    item_ids = np.unique(
        np.concatenate(
            [
                movies["item"].to_numpy(),
                ratings["item"].to_numpy(),
                [] if tags is None else tags["item"].to_numpy(),
            ]
        )
    )
    user_ids = np.unique(
        np.concatenate(
            [
                ratings["user"].to_numpy(),
                [] if tags is None else tags["user"].to_numpy(),
                [] if users is None else users["user"].to_numpy(),
            ]
        )
    ).astype(np.int64)
    return RawLogs(
        events=events,
        items=_items(item_ids.astype(np.int64), movies, tags, max_item_tags),
        users=_users(user_ids, users),
    )


def _events(ratings: pd.DataFrame, tags: pd.DataFrame | None) -> pa.Table:
    parts = [ratings.assign(kind=np.int8(0))[["user", "item", "ts", "kind", "rating"]]]
    if tags is not None and len(tags):
        parts.append(tags.assign(kind=np.int8(1), rating=np.nan)[list(parts[0].columns)])
    ev = pd.concat(parts, ignore_index=True)
    order = np.lexsort(
        (ev["kind"].to_numpy(), ev["item"].to_numpy(), ev["user"].to_numpy(), ev["ts"].to_numpy())
    )
    ev = ev.iloc[order]
    value = ev["rating"].to_numpy(dtype=np.float64)
    columns = {
        "user_id": _id_strings(ev["user"]),
        "item_id": _id_strings(ev["item"]),
        "ts": pc.multiply_checked(pa.array(ev["ts"].to_numpy(dtype=np.int64)), 1000).cast(TS_TYPE),
        "event": pc.take(pa.array(["rating", "tag"]), pa.array(ev["kind"].to_numpy())),
        "value": pa.array(value, pa.float64(), mask=np.isnan(value)),
    }
    return _table_of(EVENTS, columns, [])


def _items(
    ids: np.ndarray, movies: pd.DataFrame, tags: pd.DataFrame | None, max_item_tags: int
) -> pa.Table:
    m = movies.drop_duplicates("item").set_index("item").reindex(ids)
    pos = pd.Series(np.arange(len(ids)), index=ids)
    genre = m["genres"].explode().dropna()
    long = [
        pd.DataFrame(
            {
                "row": pos[genre.index].to_numpy(),
                "group": 0,
                "rank": 0,
                "name": "genre:" + genre.astype(str).to_numpy(),
            }
        )
    ]
    if tags is not None and len(tags) and max_item_tags > 0:
        t = pd.DataFrame({"item": tags["item"].to_numpy(), "tag": _normalize_tags(tags["tag"])})
        t = t[t["tag"] != ""]
        counts = t.groupby(["item", "tag"]).size().rename("n").reset_index()
        counts = counts.sort_values(["item", "n", "tag"], ascending=[True, False, True])
        counts = counts[counts.groupby("item").cumcount() < max_item_tags]
        long.append(
            pd.DataFrame(
                {
                    "row": pos[counts["item"]].to_numpy(),
                    "group": 1,
                    "rank": np.arange(len(counts)),
                    "name": "tag:" + counts["tag"].to_numpy().astype(object),
                }
            )
        )
    concepts = pd.concat(long, ignore_index=True).sort_values(
        ["row", "group", "rank"], kind="stable"
    )
    concept_lists = _lists(concepts["row"].to_numpy(), concepts["name"], len(ids))
    title = pa.array(m["title"].to_numpy(dtype=object), pa.string(), from_pandas=True)
    text = _describe(title, concepts, len(ids))
    year = pa.array(m["year"].to_numpy(dtype=object), pa.string(), from_pandas=True)
    columns = {
        "item_id": _id_strings(pd.Series(ids)),
        "title": title,
        "text": text,
        "concepts": concept_lists,
    }
    return _table_of(ITEMS, columns, [("year", year)])


def _describe(title: pa.Array, concepts: pd.DataFrame, n: int) -> pa.Array:
    """``"<title>. Genres: A, B. Tags: x, y"``; null when the item has no title and no concepts."""
    text = pd.Series(title.to_pandas(), dtype=object).fillna("")
    for group, label in ((0, "Genres"), (1, "Tags")):
        c = concepts[concepts["group"] == group]
        names = c["name"].str.split(":", n=1).str[1]
        joined = pc.binary_join(_lists(c["row"].to_numpy(), names, n), ", ").to_pandas()
        has = (joined != "").to_numpy()
        sep = np.where((text != "").to_numpy(), ". ", "")
        text = text.where(~has, text + sep + f"{label}: " + joined)
    return pa.array(text.where(text != "", None).to_numpy(dtype=object), pa.string())


def _users(ids: np.ndarray, users: pd.DataFrame | None) -> pa.Table:
    columns = {
        "user_id": _id_strings(pd.Series(ids)),
        "concepts": pa.array([[]] * len(ids), STR_LIST),
    }
    extra: list[tuple[str, pa.Array]] = []
    if users is not None:
        u = users.drop_duplicates("user").set_index("user").reindex(ids)
        for name in ("gender", "age", "occupation", "zip"):
            vals = u[name].to_numpy(dtype=object)
            extra.append((name, pa.array(vals, pa.string(), from_pandas=True)))
    return _table_of(USERS, columns, extra)


def _lists(rows: np.ndarray, values: pd.Series, n: int) -> pa.Array:
    """A ``list<string>`` array of length ``n``; ``rows`` (sorted) says which list each value joins."""
    counts = np.bincount(rows.astype(np.int64), minlength=n) if len(rows) else np.zeros(n, int)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = pa.array(values.to_numpy(dtype=object), pa.string(), from_pandas=True)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat, type=STR_LIST)


def _id_strings(ids: pd.Series) -> pa.Array:
    return pa.array(ids.to_numpy(dtype=np.int64)).cast(pa.string())


def _table_of(
    contract: TableContract, columns: dict[str, pa.Array], extra: list[tuple[str, pa.Array]]
) -> pa.Table:
    fields = [pa.field(n, contract.column(n).type, contract.column(n).nullable) for n in columns]
    fields += [pa.field(n, a.type) for n, a in extra]
    return pa.Table.from_arrays(
        [*columns.values(), *(a for _, a in extra)], schema=pa.schema(fields)
    )
