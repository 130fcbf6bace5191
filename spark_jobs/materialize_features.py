"""Materialise online features: every user's and item's latest feature row, for the server.

Run after prepare (Feast's ``materialize``)::

    spark-submit spark_jobs/materialize_features.py --config configs/movielens.yaml \\
        [--as-of 2018-09-01T00:00:00] [--redis redis://:password@host:6379/0 --ttl 86400]

The rows are what an example at ``as_of`` (default: just after the last valid event) would
hold, computed with prepare's own functions (``spark_jobs/build_training_data.py``: the same
validation, label rule, as-of history window and prior counts), so the server's features and
the training examples never disagree:

- users: ``user_id``, ``history`` (last ``history_length`` positives strictly before
  ``as_of``, oldest first), the raw user columns (declared ``concepts``, attributes) and
  ``d_user_prior_events`` / ``d_user_prior_positives``; every user with an event or a row;
- items: ``item_id`` and ``d_item_prior_events`` / ``d_item_prior_positives``.

Output: a release of ``<output_dir>/online`` (``features/users``, ``features/items``,
``features/manifest.json`` written last, ``quarantine/``) switched in atomically
(``spark_jobs/publication.py``); the release id is the feature *version*. With ``--redis``
the executors also SET each row as JSON under ``recsys-features:<version>:<kind>:<id>``
(``recsys.online_features``), the driver marks each kind complete and then points
``recsys-features:_current`` at the version, so a reader never sees half a materialisation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (spark-submit): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys.config import PipelineConfig, load_config  # noqa: E402
from recsys.embedding_keys import (  # noqa: E402
    CompletionMarker,
    checksum_hex,
    combine_checksums,
    embedding_key,
    entry_checksum,
)
from recsys.online_features import (  # noqa: E402
    FEATURES,
    NAMESPACE,
    ONLINE_DIR,
    TABLES,
    current_key,
    encode_row,
)
from spark_jobs.build_training_data import (  # noqa: E402
    _item_features,
    _user_features,
    _validated_inputs,
    label_examples,
    prior_count_features,
)
from spark_jobs.job_run import JobRun  # noqa: E402
from spark_jobs.quality import DataQualityError  # noqa: E402
from spark_jobs.redis_version import RedisVersion, RedisWarmingError, redacted  # noqa: E402
from spark_jobs.session import build_session  # noqa: E402

__all__ = ["feature_rows", "main", "run"]

WRITE_SCHEMA = "keys long, checksum string"


def feature_rows(
    good: DataFrame,
    users: DataFrame | None,
    cfg: PipelineConfig,
    as_of_ms: int,
) -> tuple[DataFrame, DataFrame]:
    """``(users, items)`` rows as of ``as_of_ms`` from prepare's valid events ``good`` (with
    ``ts_ms``) and valid ``users`` rows: each entity's features as an example row at
    ``as_of_ms`` holds them (one query row per entity at ``as_of_ms`` joins prepare's as-of
    windows, which only look strictly before it)."""
    past = good.filter(F.col("ts_ms") < as_of_ms)
    positives = (
        label_examples(past, cfg.prepare)
        .filter(F.col("label") == 1)
        .select("user_id", "item_id", "ts_ms")
    )
    at = F.lit(as_of_ms).cast("long").alias("ts_ms")
    user_ids = past.select("user_id")
    if users is not None:
        user_ids = user_ids.unionByName(users.select(F.col("_id").alias("user_id")))
    user_ids = user_ids.distinct()
    item_ids = past.select("item_id").distinct()
    user_events = past.select("user_id", "ts_ms").unionByName(user_ids.select("user_id", at))
    item_events = past.select("item_id", "ts_ms").unionByName(item_ids.select("item_id", at))
    priors = prior_count_features()
    user_part = (
        _user_features(user_events, positives, cfg.prepare.history_length)
        .filter(F.col("ts_ms") == as_of_ms)
        .select(
            "user_id",
            "history",
            *[priors[name].alias(name) for name in priors if name.startswith("d_user_")],
        )
    )
    if users is not None:
        own = [
            c for c in users.columns if not c.startswith("_") and c not in ("user_id", "history")
        ]
        attributes = users.select(F.col("_id").alias("user_id"), *own)
        user_part = user_part.join(attributes, "user_id", "left")
    item_part = (
        _item_features(item_events, positives)
        .filter(F.col("ts_ms") == as_of_ms)
        .select("item_id", *[priors[n].alias(n) for n in priors if n.startswith("d_item_")])
    )
    return user_part, item_part


def _write_rows(
    frames: Iterator[pd.DataFrame], *, target: RedisVersion, id_column: str, seed: int
) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: SET each row as JSON; yield the partition's count and checksum."""
    rng = np.random.default_rng(seed)
    count, total = 0, 0
    for frame in frames:
        if frame.empty:
            continue
        records = frame.to_dict("records")
        keys = [
            embedding_key(target.namespace, target.version, target.kind, str(r[id_column]))
            for r in records
        ]
        payloads = [encode_row(r) for r in records]
        target.set_batch(keys, payloads, rng)
        count += len(keys)
        total += entry_checksum(keys, payloads)
    yield pd.DataFrame({"keys": [count], "checksum": [checksum_hex(total)]})


def _fill_redis(written: dict[str, DataFrame], targets: dict[str, RedisVersion]) -> dict[str, int]:
    """Write every table into Redis, then each kind's marker, then the ``_current`` pointer."""
    first_write = time.time()
    markers = {}
    for kind, frame in written.items():
        target = targets[kind]

        def body(frames: Iterator[pd.DataFrame], target: RedisVersion = target) -> Iterator:
            yield from _write_rows(frames, target=target, id_column=f"{target.kind}_id", seed=0)

        parts = frame.mapInPandas(body, WRITE_SCHEMA).collect()
        markers[kind] = CompletionMarker(
            count=sum(int(p["keys"]) for p in parts),
            dim=0,
            checksum=checksum_hex(combine_checksums(int(p["checksum"], 16) for p in parts)),
            written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
    for kind, marker in markers.items():
        targets[kind].write_marker(marker, first_write)
    pointer = targets["user"]
    pointer.point(current_key(pointer.namespace))
    return {kind: m.count for kind, m in markers.items()}


def run(
    cfg: PipelineConfig,
    raw_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    spark: SparkSession | None = None,
    as_of: datetime | None = None,
    redis_url: str | None = None,
    namespace: str = NAMESPACE,
    ttl_s: int | None = None,
    ttl_jitter: float = 0.0,
) -> dict[str, Any]:
    """Materialise ``cfg``'s raw logs into ``out_dir`` (default ``<output_dir>/online``) and,
    with ``redis_url``, into Redis; returns the manifest. ``RedisWarmingError`` (one line)
    when Redis cannot be reached or filled: the pointer then still names the old version."""
    raw_dir = str(raw_dir or cfg.out / "raw")
    out_dir = str(out_dir or cfg.out / ONLINE_DIR)
    spark = spark or build_session(cfg.spark)
    with JobRun(spark, out_dir, stable=(FEATURES, "quarantine")) as job:
        version = job.staging.rstrip("/").rsplit("/", 1)[-1].removeprefix(".staging-")
        targets = {}
        if redis_url:
            for kind in TABLES:
                targets[kind] = RedisVersion(redis_url, namespace, version, kind, ttl_s, ttl_jitter)
                targets[kind].check()  # before any Spark work
        good, _items, good_users, _by_kind = _validated_inputs(job, raw_dir, cfg.prepare)
        as_of_ms = _as_of_ms(good, as_of)
        users, items = feature_rows(good, good_users, cfg, as_of_ms)
        base = f"{job.staging}/{FEATURES}"
        written = {}
        for kind, frame in (("user", users), ("item", items)):
            frame.write.mode("overwrite").parquet(f"{base}/{TABLES[kind]}")
            written[kind] = spark.read.parquet(f"{base}/{TABLES[kind]}")
        manifest: dict[str, Any] = {
            "version": version,
            "as_of_ms": as_of_ms,
            "history_length": cfg.prepare.history_length,
            "counts": {TABLES[k]: df.count() for k, df in written.items()},
            "columns": {TABLES[k]: df.columns for k, df in written.items()},
            "quarantined": job.quality.by_reason(),
            "raw_dir": raw_dir,
        }
        if targets:
            try:
                manifest["redis"] = {
                    "namespace": namespace,
                    "keys": _fill_redis(written, targets),
                    "url": redacted(redis_url or ""),
                }
            except Exception as e:
                errors = [t.failure(e) for t in targets.values()]
                if errors[0] is e:
                    raise
                raise errors[0] from None
        job.storage.mkdirs(job.quarantine_dir)
        job.storage.write_json(f"{base}/manifest.json", manifest)
        job.publication.publish(job.staging)
        job.staging = ""
        return manifest


def _as_of_ms(good: DataFrame, as_of: datetime | None) -> int:
    if as_of is not None:
        return int(as_of.timestamp() * 1000)
    last = good.agg(F.max("ts_ms")).first()[0]
    return int(last) + 1 if last is not None else int(time.time() * 1000)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--config X.yaml [--raw DIR] [--out DIR] [--as-of ISO] [--redis URL]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="pipeline YAML (prepare + spark sections)")
    p.add_argument("--raw", help="raw-log directory (default: <output_dir>/raw)")
    p.add_argument("--out", help="output directory (default: <output_dir>/online)")
    p.add_argument("--as-of", help="ISO time (UTC if no offset); default: after the last event")
    p.add_argument("--redis", help="redis:// URL to fill (optional; may carry a password)")
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--ttl", type=int, default=0, help="seconds; 0 = no expiry")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    as_of = datetime.fromisoformat(args.as_of) if args.as_of else None
    if as_of is not None and as_of.tzinfo is None:
        from datetime import UTC

        as_of = as_of.replace(tzinfo=UTC)
    try:
        manifest = run(
            cfg,
            args.raw,
            args.out,
            as_of=as_of,
            redis_url=args.redis,
            namespace=args.namespace,
            ttl_s=args.ttl or None,
        )
    except (DataQualityError, RedisWarmingError, FileNotFoundError, ValueError) as e:
        print(f"materialize_features: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["counts"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    # Re-import through the package so mapInPandas pickles functions by reference.
    from spark_jobs.materialize_features import main as _main

    sys.exit(_main())
