"""Root fixtures: one local Spark session for the whole test run (``spark``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A ``local[2]`` SparkSession shared by every test (built once; stopped at the end)."""
    pytest.importorskip("pyspark")
    from recsys.config import SparkConfig
    from spark_jobs.session import build_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cfg = SparkConfig(
        master="local[2]",
        app_name="recsys-tests",
        driver_memory="1g",
        shuffle_partitions=2,
        extra={
            "spark.default.parallelism": "2",
            # Tiny inputs: adaptive execution only adds jobs (one per query stage).
            "spark.sql.adaptive.enabled": "false",
            "spark.python.worker.reuse": "true",
        },
    )
    session = build_session(cfg, log_level="ERROR")
    yield session
    session.stop()
