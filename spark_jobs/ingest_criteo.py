"""Criteo display-advertising TSV -> examples + ``manifest.json`` (the examples contract).

Run::

    spark-submit spark_jobs/ingest_criteo.py --config configs/criteo.yaml \\
        --raw data/criteo --out runs/criteo

Input: one TSV file or a directory of day files (``day_0``, ``day_1.tsv``, ``day_2.gz``, ...;
sorted by the number in the name). Each line is ``label``, 13 integer columns, 26 hashed
categorical columns, tab-separated; empty fields are allowed. A line is quarantined (to
``quarantine/criteo/`` with the raw ``line``, its ``file`` and a ``reason``) when it has a
number of fields other than 40 (``wrong_field_count``), a label other than 0/1 (``bad_label``)
or a non-empty integer field that does not parse (``bad_int``).

Output columns: ``label`` (int8), ``split``, ``user_id``/``item_id``/``ts``/``lt7``/``lt14``
null (Criteo has no users, items or times), ``history`` empty, ``d_int_1..13`` =
``log1p(max(x, 0))`` as float32 (an empty field counts as 0), ``s_cat_1..26`` = ``[value]`` or
``[]`` for an empty field (raw hex strings; hashing happens in the model).

Split (never random; the Criteo files are in time order):

- three or more day files: the last day is test, the one before valid, the rest train;
- two day files: the first is train; the second is cut in half by line position
  (first half valid, second half test);
- one file: by line position, the last ``prepare.split.test_fraction`` of lines test, the
  ``valid_fraction`` before them valid, the rest train (cut-offs by ``approxQuantile`` of the
  line position, so they are exact up to ``prepare.quantile_error``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys.config import PipelineConfig, load_config  # noqa: E402
from spark_jobs.job_run import JobRun  # noqa: E402
from spark_jobs.quality import REASON, DataQualityError, first_reason  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.stats import arrow_schema  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

__all__ = ["NUM_CAT", "NUM_INT", "day_files", "main", "parse_lines", "run"]

NUM_INT = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_INT + NUM_CAT
INT_COLS = [f"d_int_{i}" for i in range(1, NUM_INT + 1)]
CAT_COLS = [f"s_cat_{i}" for i in range(1, NUM_CAT + 1)]
_SKIP = re.compile(r"(^|/)[._]|\.(md|json|crc)$")


def _natural_key(path: str) -> tuple[Any, ...]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def day_files(storage: Storage, raw: str | Path | list[str | Path]) -> list[str]:
    """The input files in day order: a file, a list of files, or the data files of a directory."""
    paths = [str(p) for p in raw] if isinstance(raw, list) else [str(raw)]
    files: list[str] = []
    for p in paths:
        if not storage.exists(p):
            raise FileNotFoundError(f"{p}: no such Criteo file or directory")
        if storage.is_dir(p):
            files += [f for f in storage.list(p) if not _SKIP.search(f) and not storage.is_dir(f)]
        else:
            files.append(p)
    if not files:
        raise FileNotFoundError(f"{raw}: no Criteo day files found")
    names = [f.rstrip("/").rsplit("/", 1)[-1] for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"Criteo day files must have distinct names, got {names}")
    return sorted(files, key=_natural_key)


def parse_lines(lines: DataFrame) -> DataFrame:
    """Tag and parse raw lines (``value``, ``file``, ``pos``) into example columns + ``reason``."""
    parts = F.split(F.col("value"), "\t", -1)
    # try_element_at: a short line gives nulls (it is quarantined), not an ANSI error.
    field = [F.try_element_at(parts, F.lit(i + 1)) for i in range(NUM_FIELDS)]
    ints = [F.when(f == "", None).otherwise(f.try_cast("long")) for f in field[1 : 1 + NUM_INT]]
    bad_int = F.lit(False)
    for raw, parsed in zip(field[1 : 1 + NUM_INT], ints, strict=True):
        bad_int = bad_int | ((raw != "") & parsed.isNull())
    reason = first_reason(
        (F.size(parts) != NUM_FIELDS, "wrong_field_count"),
        (~F.coalesce(field[0].isin("0", "1"), F.lit(False)), "bad_label"),
        (bad_int, "bad_int"),
    )
    empty = F.array().cast("array<string>")
    return lines.select(
        "value",
        "file",
        "pos",
        reason.alias(REASON),
        field[0].try_cast("byte").alias("label"),
        *[
            F.log1p(F.greatest(F.coalesce(x, F.lit(0)), F.lit(0)).cast("double"))
            .cast("float")
            .alias(name)
            for x, name in zip(ints, INT_COLS, strict=True)
        ],
        *[
            F.when(f == "", empty).otherwise(F.array(f)).alias(name)
            for f, name in zip(field[1 + NUM_INT :], CAT_COLS, strict=True)
        ],
    )


def _split_column(
    good: DataFrame, files: list[str], valid_fraction: float, test_fraction: float, err: float
) -> tuple[F.Column, dict[str, Any]]:
    names = [f.rstrip("/").rsplit("/", 1)[-1] for f in files]

    def by_position(name: str, qs: list[float]) -> list[int]:
        got = good.filter(F.col("file") == name).approxQuantile("pos", qs, err)
        if len(got) != len(qs):
            raise ValueError(f"{name}: no valid lines to split by position")
        return [int(g) for g in got]

    if len(names) >= 3:
        split = (
            F.when(F.col("file") == names[-1], "test")
            .when(F.col("file") == names[-2], "valid")
            .otherwise("train")
        )
        info = {"by": "day_file", "files": {n: "train" for n in names[:-2]}}
        info["files"].update({names[-2]: "valid", names[-1]: "test"})
    elif len(names) == 2:
        (mid,) = by_position(names[1], [0.5])
        split = (
            F.when(F.col("file") == names[0], "train")
            .when(F.col("pos") < mid, "valid")
            .otherwise("test")
        )
        info = {"by": "day_file+position", "files": {names[0]: "train", names[1]: "valid|test"}}
    else:
        v, t = by_position(names[0], [1 - valid_fraction - test_fraction, 1 - test_fraction])
        split = F.when(F.col("pos") < v, "train").when(F.col("pos") < t, "valid").otherwise("test")
        info = {
            "by": "position",
            "files": {names[0]: "train|valid|test"},
            "fractions": {"valid": valid_fraction, "test": test_fraction},
        }
    info.update({"valid_from": None, "test_from": None})
    return split, info


def run(
    cfg: PipelineConfig,
    raw: str | Path | list[str | Path],
    out_dir: str | Path,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Ingest Criteo TSV into ``<out_dir>/examples`` (+ manifest) and ``<out_dir>/quarantine``.

    Returns the manifest. Raises ``DataQualityError`` (nothing published) when the fraction of
    quarantined lines exceeds ``cfg.prepare.max_bad_fraction``.
    """
    spark = spark or build_session(cfg.spark)
    prepare = cfg.prepare
    files = day_files(Storage(spark), raw)
    with JobRun(spark, out_dir) as job:
        # The position id must be taken before any shuffle: it follows line order in a file.
        lines = spark.read.text(files).select(
            "value",
            F.col("_metadata.file_name").alias("file"),
            F.monotonically_increasing_id().alias("pos"),
        )
        tagged = job.cache(parse_lines(lines))
        job.quarantine("criteo", tagged, F.col("value").alias("line"), "file")
        job.check_quality(prepare.max_bad_fraction)
        good = tagged.filter(F.col(REASON).isNull())
        s = prepare.split
        split, split_info = _split_column(
            good, files, s.valid_fraction, s.test_fraction, prepare.quantile_error
        )
        examples = good.select(
            F.col("label").cast("byte").alias("label"),
            split.alias("split"),
            F.lit(None).cast("string").alias("user_id"),
            F.lit(None).cast("string").alias("item_id"),
            F.lit(None).cast("timestamp").alias("ts"),
            F.lit(None).cast("byte").alias("lt7"),
            F.lit(None).cast("byte").alias("lt14"),
            F.array().cast("array<string>").alias("history"),
            *CAT_COLS,
            *INT_COLS,
        )
        written = job.write_examples(examples)
        job.uncache_all()
        counts = {
            r["split"]: (int(r["n"]), int(r["pos"] or 0))
            for r in written.groupBy("split")
            .agg(F.count("*").alias("n"), F.sum("label").alias("pos"))
            .collect()
        }
        manifest: dict[str, Any] = {
            "source": "criteo",
            "features": {
                "sparse": CAT_COLS,
                "dense": INT_COLS,
                "user": [],
                "item": [],
                "context": CAT_COLS,
                **job.train_stats(written, CAT_COLS, INT_COLS, prepare.top_values),
            },
            "counts": {
                **{k: counts.get(k, (0, 0))[0] for k in ("train", "valid", "test")},
                "examples": sum(n for n, _ in counts.values()),
                "positives": sum(p for _, p in counts.values()),
                "quarantined": job.quality.by_reason(),
                "tables": job.quality.by_table(),
                "lines_in": job.quality.tables[0].rows,
            },
            "label_rule": {"kind": "click", "source": "criteo label column"},
            "split": split_info,
            "params": {
                "files": [f.rstrip("/").rsplit("/", 1)[-1] for f in files],
                "prepare": prepare.model_dump(mode="json"),
                "d_int": "log1p(max(x, 0)), empty field = 0",
            },
            "schema": arrow_schema(written),
        }
        job.publish(manifest)
        return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--config X.yaml --raw FILE_OR_DIR [--raw ...] --out DIR``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--raw", action="append", help="TSV file or directory (default source.path)")
    p.add_argument("--out", help="output directory (default: the config's output_dir)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    raw = args.raw or ([cfg.source.path] if cfg.source.path else None)
    if not raw:
        p.error("--raw is required when the config has no source.path")
    try:
        manifest = run(cfg, raw if len(raw) > 1 else raw[0], args.out or str(cfg.out))
    except (DataQualityError, FileNotFoundError, ValueError) as e:
        print(f"ingest_criteo: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["counts"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
