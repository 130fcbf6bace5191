"""Reading MovieLens into raw logs: ``read_movielens`` vs the bare CSV parse, and CSV vs ``.dat``.

Times, on the same ratings, movies and tags (default: the bundled ml-latest-small):

- ``pandas.read_csv`` of the three files alone (the baseline: parsing, nothing else);
- ``read_movielens`` on the ml-latest CSV layout (parse, validate, tags -> concepts, contract
  tables);
- ``read_movielens`` on the same data written in the ml-1m/ml-10m ``::`` layout
  (``ratings.dat``, ``movies.dat``, ``tags.dat``, and a ``users.dat`` with seeded ml-1m style
  attributes, so that layout's user columns are read too).

Repetitions interleave the three (order alternating); the table shows medians and the ratio to
the baseline.

    .venv/bin/python benchmarks/movielens_read.py --out benchmarks/results/movielens_read.json
    .venv/bin/python benchmarks/movielens_read.py --quick     # 3 repetitions
    .venv/bin/python benchmarks/movielens_read.py --quick --keep-dat /tmp/ml-dat  # keep the copy

A full run without ``--out`` refuses to replace ``benchmarks/results/movielens_read.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from host import describe_host
from result_file import command_line, output_path, shown, write_result

from recsys.sources.movielens import AGE_BUCKETS, ML1M_OCCUPATIONS, detect_layout, read_movielens

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "ml-latest-small"


def write_dat_layout(src: Path, dst: Path, seed: int = 0) -> Path:
    """Write the ml-latest CSV files of ``src`` as an ml-1m/ml-10m ``::`` release in ``dst``:
    ``ratings.dat`` (user::movie::rating::ts), ``movies.dat`` (movie::title::genres),
    ``tags.dat`` (user::movie::tag::ts, when ``src`` has tags) and ``users.dat``
    (user::gender::age code::occupation code::zip, drawn with ``seed``)."""
    dst.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(src / "ratings.csv")
    movies = pd.read_csv(src / "movies.csv")

    def write(name: str, frame: pd.DataFrame) -> None:
        lines = frame.astype(str).agg("::".join, axis=1)
        (dst / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    write("ratings.dat", ratings[["userId", "movieId", "rating", "timestamp"]])
    write("movies.dat", movies[["movieId", "title", "genres"]])
    if (src / "tags.csv").exists():
        tags = pd.read_csv(src / "tags.csv")
        tags["tag"] = tags["tag"].astype(str).str.replace("::", ":", regex=False)
        write("tags.dat", tags[["userId", "movieId", "tag", "timestamp"]])
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"userId": np.sort(ratings["userId"].unique())})
    users["gender"] = rng.choice(["M", "F"], len(users))
    users["age"] = rng.choice(sorted(AGE_BUCKETS), len(users))
    users["occupation"] = rng.integers(0, len(ML1M_OCCUPATIONS), len(users))
    users["zip"] = rng.integers(10_000, 99_999, len(users))
    write("users.dat", users)
    return dst


def parse_only(src: Path) -> int:
    """The baseline: ``pandas.read_csv`` of ratings, movies and tags; returns the row count."""
    names = ("ratings.csv", "movies.csv", "tags.csv")
    return sum(len(pd.read_csv(src / n)) for n in names if (src / n).exists())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=str(BUNDLED), help="an ml-latest CSV release")
    p.add_argument("--reps", type=int, default=None, help="repetitions (7; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="3 repetitions")
    p.add_argument("--keep-dat", default=None, help="write the :: copy here and keep it")
    p.add_argument("--out", default=None, help="JSON path (default: results/movielens_read.json)")
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    out = output_path("movielens_read", args.quick, args.out)
    src = Path(args.path).resolve()
    layout, _ = detect_layout(src)
    if layout.name != "ml-latest":
        raise SystemExit(f"--path {src}: an ml-latest CSV release is needed, found {layout.name}")

    with tempfile.TemporaryDirectory(prefix="ml-dat-") as tmp:
        dat = write_dat_layout(src, Path(args.keep_dat or tmp).resolve())
        print(f"# machine: {describe_host()}")
        print(f"# data: {shown(src)} ({parse_only(src):,} rows in ratings/movies/tags) and its")
        print(f"#   :: copy {shown(dat)} (+ users.dat); {reps} reps, order alternating")
        cases: dict[str, Callable[[], object]] = {
            "pandas.read_csv only (baseline)": lambda: parse_only(src),
            "read_movielens, ml-latest CSV": lambda: read_movielens(src),
            "read_movielens, ml-1m :: layout": lambda: read_movielens(dat),
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for rep in range(reps):
            for name in list(cases) if rep % 2 == 0 else list(cases)[::-1]:
                t0 = time.perf_counter()
                cases[name]()
                seconds[name].append(time.perf_counter() - t0)
        events = read_movielens(dat).events.num_rows

    base = float(np.median(seconds["pandas.read_csv only (baseline)"]))
    rows = []
    print("\n| reading | seconds (median) | min–max | × baseline |")
    print("|---|---:|---|---:|")
    for name, values in seconds.items():
        med = float(np.median(values))
        rows.append({"case": name, "median_s": med, "min_s": min(values), "max_s": max(values)})
        print(f"| {name} | {med:.2f} | {min(values):.2f}–{max(values):.2f} | {med / base:.2f}× |")
    setup = {"machine": describe_host(), "path": shown(src), "reps": reps, "events": events}
    payload = {"setup": setup, "rows": rows, "command": command_line("movielens_read.py", argv)}
    write_result(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
