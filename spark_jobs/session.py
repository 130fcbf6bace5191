"""``build_session``: one SparkSession built from ``SparkConfig``, the same on a laptop and a cluster.

Run as plain Python (tests, ``recsys prepare``) the config decides everything: master, app name,
memory, shuffle partitions and ``extra`` settings. Run under ``spark-submit`` the command line
wins for what it sets (``--master``, ``--driver-memory``, ``--conf``): the JVM is already up,
so only runtime SQL settings (shuffle partitions, time zone, Arrow, ``extra``) are applied.

Every session uses the UTC time zone (days, hours and weekdays of events are UTC) and writes
Parquet timestamps as ``TIMESTAMP_MILLIS`` so they read back as the contract's
``timestamp[ms, tz=UTC]``.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from recsys.config import SparkConfig

# Runtime SQL settings: applied to new and to already running sessions.
RUNTIME_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MILLIS",
    "spark.sql.sources.partitionOverwriteMode": "static",
}

# Static settings for local masters only: no web UI, loopback networking.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


def launched_by_spark_submit() -> bool:
    """True when this Python process is the driver of a ``spark-submit`` (its JVM is running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(cfg: SparkConfig | None = None, log_level: str = "WARN") -> SparkSession:
    """Get or create the SparkSession described by ``cfg`` (defaults: ``SparkConfig()``).

    If a session is already active, it is returned with the runtime settings applied (static
    settings such as memory cannot change in a running JVM).
    """
    cfg = cfg or SparkConfig()
    runtime = {
        **RUNTIME_DEFAULTS,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
    }
    builder = SparkSession.builder.appName(cfg.app_name)
    if not launched_by_spark_submit():
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
        if cfg.master.startswith("local"):
            for k, v in LOCAL_DEFAULTS.items():
                builder = builder.config(k, v)
            # Local Python workers run the driver's interpreter (the project's venv); pyspark
            # reads only the environment variable for this.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.config("spark.executor.memory", cfg.executor_memory)
    for k, v in {**runtime, **cfg.extra}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    try:
        spark.sparkContext.setLogLevel(log_level)
    except Exception:  # noqa: BLE001 - Spark Connect sessions have no SparkContext
        pass
    apply_runtime_settings(spark, {**runtime, **cfg.extra})
    return spark


def apply_runtime_settings(spark: SparkSession, settings: dict[str, str] | None = None) -> None:
    """Apply runtime SQL ``settings`` (default: ``RUNTIME_DEFAULTS``) to a running session.

    Jobs call this on a session they were handed (a caller's, a notebook's), so that UTC days
    and millisecond Parquet timestamps hold whoever built the session. Static settings of a
    running session stay as they are.
    """
    for k, v in (RUNTIME_DEFAULTS if settings is None else settings).items():
        if not k.startswith("spark.sql."):
            continue
        try:
            spark.conf.set(k, v)
        except Exception:  # noqa: BLE001 - a static SQL conf of a running session stays as is
            pass
