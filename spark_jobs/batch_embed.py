"""Embed a whole item or user table with an exported bundle, inside Spark (``mapInPandas``).

Run::

    spark-submit --py-files dist/recsys.zip spark_jobs/batch_embed.py \\
        --bundle runs/movielens/bundles/20240101-000000 --table runs/movielens/raw/items.parquet \\
        --kind item --out runs/movielens/embeddings/item \\
        [--redis redis://host:6379/0 --namespace recsys --ttl 86400]

Each executor Python process loads the bundle once (``recsys.bundle.load_bundle``, cached by
path; Spark reuses Python workers) and embeds Arrow batches with ``Bundle.embed(kind, frame)``.
The bundle directory must be readable at the same path on every executor (a shared disk, or
ship it with ``--files``/``--archives``).

Output (written to a staging directory, then renamed into place): Parquet with ``id``
(string), ``embedding`` (``array<float>``), ``model_version`` (string).

Redis warming (optional), from the executors: pipelined ``SET key value EX ttl`` with versioned
keys ``<namespace>:<model_version>:<kind>:<id>`` and the value the embedding as raw
little-endian float32 bytes (``np.frombuffer(value, "<f4")`` reads it back). A new model
version never overwrites the old one's keys; they expire by TTL (optionally jittered).
"""

from __future__ import annotations

import argparse
import json
import sys
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
from spark_jobs.session import build_session  # noqa: E402
from spark_jobs.storage import Storage  # noqa: E402

__all__ = ["OUTPUT_SCHEMA", "cached_bundle", "embed_frames", "main", "redis_key", "run"]

OUTPUT_SCHEMA = "id string, embedding array<float>, model_version string"

# Per Python process (driver or executor worker): bundle path -> loaded bundle, and Redis
# clients by URL. Module-level so they outlive one task when Spark reuses the worker.
_BUNDLES: dict[str, Bundle] = {}
_REDIS: dict[str, Any] = {}
LOADS: dict[str, int] = {}  # how many times each path was loaded in this process (for tests)


def cached_bundle(path: str) -> Bundle:
    """Load the bundle at ``path`` once per process and return the cached one afterwards."""
    key = str(Path(path).resolve())
    if key not in _BUNDLES:
        _BUNDLES[key] = load_bundle(key)
        LOADS[key] = LOADS.get(key, 0) + 1
    return _BUNDLES[key]


def redis_key(namespace: str, model_version: str, kind: str, id_: str) -> str:
    """The versioned cache key ``ns:model_version:kind:id`` shared with the serving cache."""
    return f"{namespace}:{model_version}:{kind}:{id_}"


def _redis(url: str) -> Any:
    if url not in _REDIS:
        import redis  # imported on the executors only when warming is asked for

        _REDIS[url] = redis.Redis.from_url(url)
    return _REDIS[url]


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
            client = _redis(redis_url)
            pipe = client.pipeline(transaction=False)
            little = vectors.astype("<f4", copy=False)
            for i, id_ in enumerate(ids):
                ex = None
                if ttl_s:
                    ex = int(ttl_s * (1.0 + ttl_jitter * rng.random())) if ttl_jitter else ttl_s
                pipe.set(redis_key(namespace, version, kind, id_), little[i].tobytes(), ex=ex)
            pipe.execute()
        yield pd.DataFrame({"id": ids, "embedding": list(vectors), "model_version": version})


def _read_table(spark: SparkSession, table: str) -> DataFrame:
    lower = table.lower()
    if lower.endswith((".json", ".jsonl", ".ndjson")):
        return spark.read.json(table)
    return spark.read.parquet(table)


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
    Returns ``{"rows", "dim", "model_version", "output", "redis_keys"}``.
    """
    if kind not in ("item", "user"):
        raise ValueError(f"kind must be 'item' or 'user', got {kind!r}")
    spark = spark or build_session(spark_cfg)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    bundle_path = (
        str(Path(bundle_path).resolve()) if "://" not in str(bundle_path) else str(bundle_path)
    )
    bundle = cached_bundle(bundle_path)  # fail fast on the driver for a broken bundle
    df = table if isinstance(table, DataFrame) else _read_table(spark, str(table))
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
    src = src.filter(F.col(id_column).isNotNull() & (F.col(id_column) != ""))

    keys = spark.sparkContext.accumulator(0)
    args = dict(
        bundle_path=bundle_path,
        kind=kind,
        id_column=id_column,
        redis_url=redis_url,
        namespace=namespace,
        ttl_s=ttl_s,
        ttl_jitter=ttl_jitter,
    )

    def body(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for out in embed_frames(frames, **args):
            if redis_url:
                keys.add(len(out))
            yield out

    storage = Storage(spark)
    out = str(out_dir).rstrip("/")
    parent = out.rsplit("/", 1)[0] if "/" in out else "."
    staging = storage.staging_dir(parent, "embed")
    try:
        src.mapInPandas(body, OUTPUT_SCHEMA).write.mode("overwrite").parquet(f"{staging}/data")
        written = spark.read.parquet(f"{staging}/data")
        row = written.agg(
            F.count("*").alias("n"),
            F.min(F.size("embedding")).alias("dmin"),
            F.max(F.size("embedding")).alias("dmax"),
        ).first()
        if row["n"] and row["dmin"] != row["dmax"]:
            raise ValueError(
                f"{bundle_path}: embeddings of different widths {row['dmin']}..{row['dmax']}"
            )
        storage.replace_dir(f"{staging}/data", out)
    finally:
        storage.delete(staging)
    return {
        "rows": int(row["n"]),
        "dim": int(row["dmax"] or 0),
        "model_version": bundle.version,
        "kind": kind,
        "output": out,
        "redis_keys": int(keys.value),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--bundle DIR --table PATH --kind item|user --out DIR [--redis URL]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="bundle/<version> directory")
    p.add_argument("--table", required=True, help="items or users table (Parquet / JSON lines)")
    p.add_argument("--kind", required=True, choices=["item", "user"])
    p.add_argument("--out", required=True, help="output Parquet directory")
    p.add_argument("--redis", help="redis:// URL to warm (optional)")
    p.add_argument("--namespace", default="recsys")
    p.add_argument("--ttl", type=int, default=7 * 86_400, help="seconds; 0 = no expiry")
    p.add_argument("--ttl-jitter", type=float, default=0.1)
    p.add_argument("--config", help="pipeline YAML whose spark section builds the session")
    args = p.parse_args(argv)
    spark_cfg = None
    if args.config:
        from recsys.config import load_config

        spark_cfg = load_config(args.config).spark
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
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    # Re-import through the package so mapInPandas pickles `embed_frames` by reference and the
    # per-process bundle cache lives in the importable module, not in a pickled __main__.
    from spark_jobs.batch_embed import main as _main

    sys.exit(_main())
