"""Embed a whole item or user table with an exported bundle, inside Spark (``mapInPandas``).

Run::

    spark-submit --py-files dist/recsys.zip spark_jobs/batch_embed.py \\
        --bundle runs/movielens/bundles/20240101-000000 --table runs/movielens/raw/items.parquet \\
        --kind item --out runs/movielens/embeddings/item \\
        [--redis redis://:password@host:6379/0 --namespace recsys --ttl 86400]

The table is a raw ``items``/``users`` table (its columns become the model's ``s_*`` features
by the feature rule, ``recsys.features.sparse_rule``) or rows that already carry the ``s_*``
columns. A feature the model needs that the table cannot provide fails the job, naming it.

Each executor Python process loads the bundle once (``recsys.bundle.load_bundle``, cached by
path; Spark reuses Python workers) and embeds Arrow batches with ``Bundle.embed(kind, frame)``.
The bundle directory must be readable at the same path on every executor (a shared disk, or
ship it with ``--files``/``--archives``).

Output (written to a staging directory, then renamed into place): Parquet with ``id``
(string), ``embedding`` (``array<float>``), ``model_version`` (string). Ids must be unique.

Redis warming (optional), from the executors: pipelined ``SET key value EX ttl`` in the layout
of ``recsys.embedding_keys`` (``<namespace>:<model_version>:<kind>:<id>`` -> little-endian
float32 bytes). Before any Spark work the driver connects, authenticates and deletes the
version's completion marker and stale keys (a bad URL or password is a one-line error). After
the last key it writes the marker (count, dim, checksum) with a TTL no longer than any key's,
so readers (``recsys.embedding_keys.read_vectors``) use a version only when it is complete. A
failed run deletes the keys it wrote (what it cannot delete expires by TTL) and leaves no
marker. A new model version never overwrites an old one's keys; those expire by TTL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys.bundle import Bundle, load_bundle  # noqa: E402
from recsys.config import SparkConfig  # noqa: E402
from recsys.embedding_keys import (  # noqa: E402
    CompletionMarker,
    checksum_hex,
    combine_checksums,
    embedding_key,
    encode_vector,
    entry_checksum,
    marker_key,
)
from recsys.features.sparse_rule import check_feature_columns  # noqa: E402
from spark_jobs.redis_version import RedisVersion, RedisWarmingError  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

__all__ = [
    "OUTPUT_SCHEMA",
    "RedisWarmingError",
    "cached_bundle",
    "embed_frames",
    "main",
    "run",
]

OUTPUT_SCHEMA = "id string, embedding array<float>, model_version string"
CHECKSUM_SCHEMA = "keys long, checksum string"

# Per Python process (driver or executor worker): bundle path -> loaded bundle. Module-level so
# it outlives one task when Spark reuses the worker.
_BUNDLES: dict[str, Bundle] = {}


def cached_bundle(path: str) -> Bundle:
    """Load the bundle at ``path`` once per process and return the cached one afterwards."""
    key = str(Path(path).resolve())
    if key not in _BUNDLES:
        _BUNDLES[key] = load_bundle(key)
    return _BUNDLES[key]


def embed_frames(
    frames: Iterator[pd.DataFrame],
    *,
    bundle_path: str,
    kind: str,
    id_column: str,
    redis_url: str | None = None,
    namespace: str = "recsys",
    ttl_s: int | None = None,
    ttl_jitter: float = 0.0,
    seed: int = 0,
) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body: embed each batch, optionally SET it in Redis, yield the rows."""
    bundle = cached_bundle(bundle_path)
    version = bundle.version
    rng = np.random.default_rng(seed)
    for frame in frames:
        if frame.empty:
            continue
        vectors = np.asarray(bundle.embed(kind, frame), dtype=np.float32)
        if vectors.shape[0] != len(frame):
            raise ValueError(
                f"{bundle_path}: embed({kind!r}) returned {vectors.shape[0]} rows for "
                f"{len(frame)} inputs"
            )
        ids = frame[id_column].astype(str).to_numpy()
        if redis_url:
            target = RedisVersion(redis_url, namespace, version, kind, ttl_s, ttl_jitter)
            keys = [embedding_key(namespace, version, kind, id_) for id_ in ids]
            target.set_batch(keys, [encode_vector(v) for v in vectors], rng)
        yield pd.DataFrame({"id": ids, "embedding": list(vectors), "model_version": version})


def _partial_checksums(
    frames: Iterator[pd.DataFrame], *, namespace: str, version: str, kind: str
) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body over the written output: each partition's key count and checksum
    (``recsys.embedding_keys.entry_checksum``) of what was SET."""
    keys, total = 0, 0
    for frame in frames:
        names = [embedding_key(namespace, version, kind, i) for i in frame["id"]]
        total += entry_checksum(names, [encode_vector(v) for v in frame["embedding"]])
        keys += len(frame)
    yield pd.DataFrame({"keys": [keys], "checksum": [checksum_hex(total)]})


def _read_table(spark: SparkSession, table: str) -> DataFrame:
    lower = table.lower()
    if lower.endswith((".json", ".jsonl", ".ndjson")):
        return spark.read.json(table)
    return spark.read.parquet(table)


def _source(df: DataFrame, table: object, kind: str, columns: list[str] | None) -> DataFrame:
    """The input rows: ``columns`` (default: all but media) with a non-empty string id."""
    id_column = f"{kind}_id"
    if id_column not in df.columns:
        raise ValueError(f"{table}: no column {id_column!r} (columns: {df.columns})")
    if columns is None:
        columns = [
            f.name
            for f in df.schema.fields
            if f.name not in ("image", "audio") and f.dataType.typeName() != "binary"
        ]
    if id_column not in columns:
        columns = [id_column, *columns]
    src = df.select(*columns).withColumn(id_column, F.col(id_column).cast("string"))
    return src.filter(F.col(id_column).isNotNull() & (F.col(id_column) != ""))


def _check_features(bundle: Bundle, kind: str, columns: list[str], table: object) -> None:
    """On the driver: every feature the model's ``kind`` side needs is in ``columns`` itself or
    derivable from them by the feature rule; else a ``FeatureRuleError`` naming it."""
    side_spec = getattr(bundle.model, "side_spec", None)
    if side_spec is None:  # a model that embeds from ids only
        return
    try:
        check_feature_columns(side_spec(kind).sparse, columns)
    except ValueError as e:
        where = table if isinstance(table, str | Path) else "input DataFrame"
        raise type(e)(f"{where}: {e}") from None


def _check_output(written: DataFrame, bundle_path: str) -> tuple[int, int]:
    """``(rows, dim)`` of the written output; unique ids and one width, or a ``ValueError``."""
    row = written.agg(
        F.count("*").alias("n"),
        F.countDistinct("id").alias("ids"),
        F.min(F.size("embedding")).alias("dmin"),
        F.max(F.size("embedding")).alias("dmax"),
    ).first()
    if row["n"] != row["ids"]:
        dup = written.groupBy("id").count().filter(F.col("count") > 1).first()
        raise ValueError(
            f"{bundle_path}: {row['n'] - row['ids']} duplicate ids in the table "
            f"(first: {dup['id']!r}, {dup['count']} rows); ids must be unique"
        )
    if row["n"] and row["dmin"] != row["dmax"]:
        raise ValueError(
            f"{bundle_path}: embeddings of different widths {row['dmin']}..{row['dmax']}"
        )
    return int(row["n"]), int(row["dmax"] or 0)


def run(
    bundle_path: str | Path,
    table: str | Path | DataFrame,
    kind: str,
    out_dir: str | Path,
    *,
    spark: SparkSession | None = None,
    spark_cfg: SparkConfig | None = None,
    columns: list[str] | None = None,
    redis_url: str | None = None,
    namespace: str = "recsys",
    ttl_s: int | None = 7 * 86_400,
    ttl_jitter: float = 0.0,
    batch_rows: int = 4096,
) -> dict[str, Any]:
    """Embed every row of ``table`` (``kind`` = ``"item"`` or ``"user"``) into ``out_dir``.

    ``table``: a Parquet/JSON-lines path or a DataFrame with a ``<kind>_id`` column;
    ``columns``: the input columns the bundle needs (default: all but binary/media columns).
    Returns ``{"rows", "dim", "model_version", "kind", "output", "redis_keys"}`` (and the
    ``redis_marker`` written when warming). Raises ``RedisWarmingError`` (one line) when
    Redis cannot be reached or filled; nothing of the version is left marked complete.
    """
    if kind not in ("item", "user"):
        raise ValueError(f"kind must be 'item' or 'user', got {kind!r}")
    bundle_path = (
        str(Path(bundle_path).resolve()) if "://" not in str(bundle_path) else str(bundle_path)
    )
    bundle = cached_bundle(bundle_path)  # fail fast on the driver for a broken bundle
    version = bundle.version
    target = (
        RedisVersion(redis_url, namespace, version, kind, ttl_s, ttl_jitter) if redis_url else None
    )
    if target is not None:
        target.check()  # before any Spark work
    spark = spark or build_session(spark_cfg)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    df = table if isinstance(table, DataFrame) else _read_table(spark, str(table))
    src = _source(df, table, kind, columns)
    _check_features(bundle, kind, src.columns, table)
    args = dict(
        bundle_path=bundle_path,
        kind=kind,
        id_column=f"{kind}_id",
        redis_url=redis_url,
        namespace=namespace,
        ttl_s=ttl_s,
        ttl_jitter=ttl_jitter,
    )

    def body(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from embed_frames(frames, **args)

    storage = Storage(spark)
    out = str(out_dir).rstrip("/")
    parent = out.rsplit("/", 1)[0] if "/" in out else "."
    staging = storage.staging_dir(parent, "embed")
    marker = None
    first_write = time.time()
    try:
        src.mapInPandas(body, OUTPUT_SCHEMA).write.mode("overwrite").parquet(f"{staging}/data")
        written = spark.read.parquet(f"{staging}/data")
        rows, dim = _check_output(written, bundle_path)
        if redis_url:
            marker = _marker(written, namespace, version, kind, dim)
        storage.replace_dir(f"{staging}/data", out)
        if target is not None and marker is not None:
            target.write_marker(marker, first_write)
    except Exception as e:
        if target is None:
            raise
        error = target.failure(e)
        if error is e:
            raise
        raise error from None
    finally:
        storage.delete(staging)
    summary: dict[str, Any] = {
        "rows": rows,
        "dim": dim,
        "model_version": version,
        "kind": kind,
        "output": out,
        "redis_keys": marker.count if marker else 0,
    }
    if marker is not None:
        summary["redis_marker"] = marker_key(namespace, version, kind)
    return summary


def _marker(
    written: DataFrame, namespace: str, version: str, kind: str, dim: int
) -> CompletionMarker:
    """Count and checksum of the keys SET, from the written output (one small row per
    partition reaches the driver)."""

    def body(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from _partial_checksums(frames, namespace=namespace, version=version, kind=kind)

    parts = written.select("id", "embedding").mapInPandas(body, CHECKSUM_SCHEMA).collect()
    return CompletionMarker(
        count=sum(int(p["keys"]) for p in parts),
        dim=dim,
        checksum=checksum_hex(combine_checksums(int(p["checksum"], 16) for p in parts)),
        written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--bundle DIR --table PATH --kind item|user --out DIR [--redis URL]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="bundle/<version> directory")
    p.add_argument("--table", required=True, help="items or users table (Parquet / JSON lines)")
    p.add_argument("--kind", required=True, choices=["item", "user"])
    p.add_argument("--out", required=True, help="output Parquet directory")
    p.add_argument("--redis", help="redis:// URL to warm (optional; may carry a password)")
    p.add_argument("--namespace", default="recsys")
    p.add_argument("--ttl", type=int, default=7 * 86_400, help="seconds; 0 = no expiry")
    p.add_argument("--ttl-jitter", type=float, default=0.1)
    p.add_argument("--config", help="pipeline YAML whose spark section builds the session")
    args = p.parse_args(argv)
    spark_cfg = None
    if args.config:
        from recsys.config import load_config

        spark_cfg = load_config(args.config).spark
    try:
        result = run(
            args.bundle,
            args.table,
            args.kind,
            args.out,
            spark_cfg=spark_cfg,
            redis_url=args.redis,
            namespace=args.namespace,
            ttl_s=args.ttl or None,
            ttl_jitter=args.ttl_jitter,
        )
    except (RedisWarmingError, ValueError, FileNotFoundError) as e:
        print(f"batch_embed: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    # Re-import through the package so mapInPandas pickles `embed_frames` by reference and the
    # per-process bundle cache lives in the importable module, not in a pickled __main__.
    from spark_jobs.batch_embed import main as _main

    sys.exit(_main())
