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

Text files are decoded as UTF-8 when they are valid UTF-8, else as Latin-1 (ml-100k, ml-1m).

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

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.contract import EVENTS, ITEMS, STR_LIST, TS_TYPE, USERS, TableContract
from recsys.sources.raw_logs import RawLogs

MAX_ITEM_TAGS = 20

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
    """One official file layout: the files it needs and the ones it may have."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    def describe(self) -> str:
        opt = f" [{', '.join(self.optional)}]" if self.optional else ""
        return f"{self.name}: {', '.join(self.required)}{opt}"


LAYOUTS = (
    Layout("ml-100k", ("u.data", "u.item"), ("u.user", "u.genre")),
    Layout("ml-1m", ("ratings.dat", "movies.dat"), ("users.dat", "tags.dat")),
    Layout("ml-latest", ("ratings.csv", "movies.csv"), ("tags.csv", "links.csv")),
)


class MovieLensError(ValueError):
    """A MovieLens file that cannot be read; the message names the file and the problem."""


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


def read_movielens(path: str | Path, max_item_tags: int = MAX_ITEM_TAGS) -> RawLogs:
    """Read a MovieLens directory in any official layout into raw logs (see module docstring).

    The result passes ``validate_table`` for EVENTS, ITEMS and USERS.
    """
    layout, root = detect_layout(path)
    reader = {"ml-100k": _read_100k, "ml-1m": _read_dat, "ml-latest": _read_csv}[layout.name]
    ratings, tags, movies, users = reader(root)
    return _assemble(ratings, tags, movies, users, max_item_tags)


# --- per-layout readers -------------------------------------------------------------------
# Each returns (ratings[user, item, rating, ts], tags[user, item, tag, ts] | None,
# movies[item, title, genres: list, year], users[user, attributes...] | None).

_Frames = tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, pd.DataFrame | None]


def _read_100k(root: Path) -> _Frames:
    ratings = _table(
        root / "u.data",
        sep="\t",
        names=["user", "item", "rating", "ts"],
        dtype={"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"},
    )
    genre_path = root / "u.genre"
    genres = list(ML100K_GENRES)
    if genre_path.is_file():
        g = _table(genre_path, sep="|", names=["name", "index"], dtype=str, text=True)
        g["index"] = _ints(g["index"], genre_path, "genre index")
        genres = list(g.sort_values("index")["name"])
    names = ["item", "title", "release", "video", "url", *[f"g{i}" for i in range(len(genres))]]
    raw = _table(
        root / "u.item",
        sep="|",
        names=names,
        dtype=str,
        text=True,
        keep_default_na=False,
        na_values=[""],
    )
    flags = raw[names[5:]].fillna("0").to_numpy() == "1"
    movies = pd.DataFrame(
        {"item": _ints(raw["item"], root / "u.item", "movie id"), "title": raw["title"]}
    )
    movies["genres"] = _flag_lists(flags, genres)
    year = raw["release"].str.extract(r"(\d{4})\s*$", expand=False)
    movies["year"] = _title_year(movies["title"]).fillna(year)
    users = None
    if (root / "u.user").is_file():
        u = _table(
            root / "u.user",
            sep="|",
            names=["user", "age", "gender", "occupation", "zip"],
            dtype=str,
            text=True,
        )
        users = pd.DataFrame(
            {
                "user": _ints(u["user"], root / "u.user", "user id"),
                "gender": u["gender"],
                "age": _age_bucket(pd.to_numeric(u["age"], errors="coerce")),
                "occupation": u["occupation"],
                "zip": u["zip"],
            }
        )
    return ratings, None, movies, users


def _read_dat(root: Path) -> _Frames:
    path = root / "ratings.dat"
    numeric = {"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"}
    r = _colon_table(path, list(numeric), dtype=numeric)
    ratings = pd.DataFrame(
        {
            "user": _ints(r["user"], path, "user id"),
            "item": _ints(r["item"], path, "movie id"),
            "rating": _numbers(r["rating"], path, "rating"),
            "ts": _ints(r["ts"], path, "timestamp"),
        }
    )
    m = _split_lines(root / "movies.dat", 3)
    movies = pd.DataFrame({"item": _ints(m[0], root / "movies.dat", "movie id"), "title": m[1]})
    movies["genres"] = _split_genres(m[2])
    movies["year"] = _title_year(movies["title"])
    tags = None
    if (root / "tags.dat").is_file():
        t = _split_lines(root / "tags.dat", 4)
        p = root / "tags.dat"
        tags = pd.DataFrame(
            {
                "user": _ints(t[0], p, "user id"),
                "item": _ints(t[1], p, "movie id"),
                "tag": t[2],
                "ts": _ints(t[3], p, "timestamp"),
            }
        )
    users = None
    if (root / "users.dat").is_file():
        u = _colon_table(root / "users.dat", ["user", "gender", "age", "occupation", "zip"])
        occ = pd.to_numeric(u["occupation"], errors="coerce")
        names = pd.Series(ML1M_OCCUPATIONS).reindex(occ.to_numpy()).to_numpy()
        users = pd.DataFrame(
            {
                "user": _ints(u["user"], root / "users.dat", "user id"),
                "gender": u["gender"],
                "age": pd.to_numeric(u["age"], errors="coerce").map(AGE_BUCKETS).fillna(u["age"]),
                "occupation": pd.Series(names, index=u.index).fillna(u["occupation"]),
                "zip": u["zip"],
            }
        )
    return ratings, tags, movies, users


def _read_csv(root: Path) -> _Frames:
    ratings = _table(
        root / "ratings.csv",
        sep=",",
        header=0,
        names=["user", "item", "rating", "ts"],
        dtype={"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"},
        quoting=csv.QUOTE_MINIMAL,
    )
    m = _table(
        root / "movies.csv",
        sep=",",
        header=0,
        names=["item", "title", "genres"],
        dtype={"item": "int64", "title": str, "genres": str},
        quoting=csv.QUOTE_MINIMAL,
        keep_default_na=False,
        text=True,
    )
    movies = m[["item", "title"]].copy()
    movies["genres"] = _split_genres(m["genres"])
    movies["year"] = _title_year(movies["title"])
    tags = None
    if (root / "tags.csv").is_file():
        tags = _table(
            root / "tags.csv",
            sep=",",
            header=0,
            names=["user", "item", "tag", "ts"],
            dtype={"user": "int64", "item": "int64", "tag": str, "ts": "int64"},
            quoting=csv.QUOTE_MINIMAL,
            keep_default_na=False,
            text=True,
        )
    return ratings, tags, movies, None


# --- file helpers -------------------------------------------------------------------------


def _encoding(path: Path) -> str:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _table(
    path: Path,
    *,
    sep: str,
    names: list[str],
    header: int | None = None,
    quoting: int = csv.QUOTE_NONE,
    text: bool = False,
    **kw: object,
) -> pd.DataFrame:
    """``pd.read_csv`` (C engine) that names the file in every error.

    ``text``: the file has free text (titles, tags), so its encoding is detected.
    """
    enc = _encoding(path) if text else "utf-8"
    try:
        return pd.read_csv(
            path,
            sep=sep,
            header=header,
            names=names,
            quoting=quoting,
            encoding=enc,
            engine="c",
            **kw,
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise MovieLensError(
            f"{path}: cannot parse as {len(names)} columns "
            f"({', '.join(names)}) separated by {sep!r}: {e}"
        ) from None


def _colon_table(path: Path, names: list[str], dtype: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a ``::``-separated file whose fields never contain ``:`` with the fast C parser.

    Splitting on ``:`` puts an empty column between each pair of fields; those are dropped.
    With ``dtype`` (field -> numpy dtype) numbers are parsed by the C parser; if that fails the
    file is read as strings so that the caller's checks can name the bad row.
    """
    cols = list(range(0, 2 * len(names), 2))
    types = {c: dtype.get(n, str) for c, n in zip(cols, names, strict=True)} if dtype else str
    try:
        df = pd.read_csv(
            path,
            sep=":",
            header=None,
            usecols=cols,
            dtype=types,
            engine="c",
            quoting=csv.QUOTE_NONE,
            encoding=_encoding(path),
        )
    except (ValueError, pd.errors.ParserError) as e:
        if dtype:
            return _colon_table(path, names)
        raise MovieLensError(
            f"{path}: expected {len(names)} fields separated by '::' ({'::'.join(names)}): {e}"
        ) from None
    df.columns = names
    bad = df.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MovieLensError(
            f"{path}: {int(bad.sum())} lines lack some of the "
            f"{len(names)} fields {'::'.join(names)} (first: line {row + 1})"
        )
    return df


def _split_lines(path: Path, fields: int) -> pd.DataFrame:
    """Split ``::``-separated lines whose middle field may contain ``:`` (titles, tags)."""
    text = path.read_bytes().decode(_encoding(path))
    lines = pd.Series(text.splitlines(), dtype=object)
    lines = lines[lines.str.strip() != ""].reset_index(drop=True)
    head = lines.str.split("::", n=2, expand=True)
    if head.shape[1] < 3 or head[2].isna().any():
        row = (
            int(np.flatnonzero(head.isna().any(axis=1).to_numpy())[0]) if head.shape[1] >= 3 else 0
        )
        raise MovieLensError(
            f"{path}: expected {fields} fields separated by '::' (first bad line: {row + 1})"
        )
    if fields == 3:
        return head
    tail = head[2].str.rsplit("::", n=1, expand=True)
    if tail.shape[1] < 2 or tail[1].isna().any():
        raise MovieLensError(f"{path}: expected {fields} fields separated by '::'")
    return pd.DataFrame({0: head[0], 1: head[1], 2: tail[0], 3: tail[1]})


def _numbers(s: pd.Series, path: Path, what: str, integer: bool = False) -> pd.Series:
    """Parse a column of numbers; errors name the file, the field, the count and the first row."""
    v = pd.to_numeric(s.str.strip() if s.dtype == object else s, errors="coerce")
    bad = v.isna().to_numpy()
    if integer:
        bad |= v.fillna(0).to_numpy() % 1 != 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a number"
        raise MovieLensError(
            f"{path}: {int(bad.sum())} rows do not have {kind} as {what} "
            f"(first: row {row + 1}, {s.iloc[row]!r})"
        )
    return v.astype("int64" if integer else "float64")


def _ints(s: pd.Series, path: Path, what: str) -> pd.Series:
    return _numbers(s, path, what, integer=True)


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
        "ts": pa.array(ev["ts"].to_numpy(dtype=np.int64) * 1000, TS_TYPE),
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
