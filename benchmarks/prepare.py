"""Benchmark: Spark prepare (``spark_jobs/build_training_data.run``) against the Spark floor.

    .venv/bin/python benchmarks/prepare.py --out benchmarks/results/prepare_floor.json
    .venv/bin/python benchmarks/prepare.py --quick          # MovieLens only
    .venv/bin/python benchmarks/prepare.py --sizes 1250000 2500000 5000000 \
        --out benchmarks/results/prepare.json              # throughput vs input size

Floor mode (the default). For each dataset (the bundled MovieLens ml-latest-small with
configs/movielens.yaml; the simulated world of configs/simulated.yaml with media off, about 1M
events) one worker process holds one Spark session (``local[2]``, 8 shuffle partitions, driver
4g; start-up excluded) and runs, interleaved rep by rep (the order alternates, after one
warm-up rep of each that is not counted):

- ``floor``: the minimal Spark job with the same history on every row: read the raw events
  Parquet, attach to each event the user's last ``history_length`` positive items strictly
  before its ts (positives by the dataset's label rule), write Parquet. One action;
- ``prepare``: the whole ``run()`` (validation, quarantine, labels, lt7/lt14, history, prior
  counts, entity features, split, statistics, manifest, publish);
- ``write_only``: prepare's own output, read back and cached before the clock starts, written
  and published again as ``run()`` does (``JobRun.write_examples``): what writing the contracted
  examples alone costs, a lower bound on the write inside ``run()``. Its ratio to the floor is
  the part of the bar the output format takes before any work is done.

Reported per dataset: medians of wall seconds, ``run() / floor``, the same ratio on CPU seconds
(driver JVM + this process: it moves much less than wall time when other jobs share the host),
Spark jobs launched by each (a job group per run, counted with the status tracker), output
bytes (examples vs the floor's output), and where ``run()``'s wall time goes: the quality
action, the time cut-offs, the examples write, the statistics action, and the rest (planning
on the driver, the manifest, the publish). When ``duckdb`` is importable the same window in
DuckDB (2 threads) is the single-node reference. The bars: ``run() / floor`` <= 2.5 on
MovieLens and <= 2.0 on the simulated world. Other jobs may share the machine: the JSON
records the load average before and after.

``--cold`` runs every rep of each kind in a fresh worker process (JVM start and session
excluded, nothing warmed up), as ``recsys pipeline`` runs prepare: JIT compilation and class
loading then weigh on both, and the JSON is ``prepare_floor_cold.json``. ``--cold --against
REF`` also runs, interleaved with the rest, the ``run()`` of commit REF (a ``git archive`` of it,
its own configs) and reports this tree's ``run()`` over REF's, rep by rep
(``prepare_floor_cold_against.json``): how a change to the job moved it, on the same machine
at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tree whose ``recsys``/``spark_jobs`` a worker imports: this one, or (``--against REF``) a
# ``git archive`` of REF, named by the parent through this variable.
CODE_ROOT = Path(os.environ.get("RECSYS_BENCH_CODE_ROOT") or ROOT)
sys.path.insert(0, str(CODE_ROOT))

from host import describe_host  # noqa: E402 - benchmarks/ is the script directory
from result_file import command_line, output_path, write_result  # noqa: E402

DATASETS = ("movielens", "simulated")
REPS = 3
# Interleaved in this order, reversed every other rep. ``write_only`` reads what ``prepare``
# wrote, so prepare runs before it in the first rep.
KINDS = ("floor", "prepare", "write_only")


# ----------------------------------------------------------------------------- floor mode


def _raw_dir(dataset: str, work: Path) -> Path:
    """Raw logs of ``dataset`` under ``work`` (written once, then reused)."""
    from recsys.config import load_config

    raw = work / f"raw-{dataset}"
    if (raw / "events.parquet").exists():
        return raw
    if dataset == "movielens":
        from recsys.sources.movielens import read_movielens

        read_movielens(ROOT / "data" / "ml-latest-small").write(raw)
    else:
        from recsys.sources.simulator import simulate_to_parquet

        sim = load_config(ROOT / "configs" / "simulated.yaml").simulator
        simulate_to_parquet(sim.model_copy(update={"with_media": False}), raw)
    return raw


def floor_job(spark, raw: Path, out: Path, positive, history_length: int) -> None:  # noqa: ANN001
    """The Spark floor: events -> the user's last ``history_length`` positives strictly before
    each event (the as-of window prepare computes, nothing else) -> Parquet. One action."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ev = spark.read.parquet(str(raw / "events.parquet")).withColumn("ts_ms", F.unix_millis("ts"))
    w = Window.partitionBy("user_id").orderBy("ts_ms", "item_id")
    snaps = (
        ev.filter(positive)
        .select(
            "user_id",
            "ts_ms",
            F.collect_list("item_id").over(w.rowsBetween(-(history_length - 1), 0)).alias("h"),
            F.lead("ts_ms").over(w).alias("nxt"),
        )
        .filter(F.col("nxt").isNull() | (F.col("nxt") != F.col("ts_ms")))
    )
    rows = ev.select(
        "user_id", "item_id", "ts", "event", "value", "ts_ms",
        F.lit(0).alias("k"), F.lit(None).cast("array<string>").alias("h"),
    ).unionByName(
        snaps.select(
            "user_id", F.lit(None).cast("string").alias("item_id"),
            F.lit(None).cast("timestamp").alias("ts"), F.lit(None).cast("string").alias("event"),
            F.lit(None).cast("double").alias("value"), "ts_ms", F.lit(1).alias("k"), "h",
        )
    )  # fmt: skip
    upto = (
        Window.partitionBy("user_id")
        .orderBy("ts_ms", "k")
        .rowsBetween(Window.unboundedPreceding, 0)
    )
    history = F.coalesce(F.last("h", ignorenulls=True).over(upto), F.array().cast("array<string>"))
    (
        rows.select("*", history.alias("history"))
        .filter(F.col("k") == 0)
        .drop("k", "h", "ts_ms")
        .write.mode("overwrite")
        .parquet(str(out))
    )


def write_only_job(spark, examples, out: Path) -> None:  # noqa: ANN001
    """The write alone: ``examples`` (prepare's output, already in memory: ``load_examples``)
    written and published as ``run()`` writes and publishes them. No reading, validation,
    features or statistics: what the contracted output costs to write, a lower bound on
    prepare's own write."""
    from spark_jobs.job_run import JobRun

    with JobRun(spark, out) as job:
        job.write_examples(examples)
        job.publish({"write_only": True})
    examples.unpersist()


def load_examples(spark, examples: Path):  # noqa: ANN001, ANN201 - a DataFrame
    """The examples at ``examples``, cached and counted: the untimed set-up of
    ``write_only_job``."""
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    df = spark.read.option("basePath", str(examples)).parquet(str(examples / "split=*"))
    # As many partitions as run() writes from (one per shuffle partition of users): the
    # files read back would give fewer, and a write with fewer tasks than cores.
    df = df.repartition(partitions).cache()
    df.count()
    return df


def _positive(cfg):  # noqa: ANN001, ANN202 - a Spark column
    from pyspark.sql import functions as F

    rule = cfg.prepare.label
    if rule.kind == "rating":
        return (F.col("event") == "rating") & (F.col("value") >= rule.threshold)
    return F.col("event") == "click"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.parquet"))


class _ProcessCPU:
    """CPU seconds (user + system) of this process and its JVM children: the local-mode driver
    JVM runs the executors, so this is all the work a run does, wherever it ran. Unlike wall
    time it barely moves when other jobs share the machine (build it after the session)."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._jvms = [c for c in self._me.children(recursive=True) if "java" in c.name()]

    def seconds(self) -> float:
        import psutil

        total = sum(self._me.cpu_times()[:2])
        for p in self._jvms:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return total


# run()'s phases: (module, attribute) of the call timed, and its name in the breakdown.
_PHASES = {
    "quality": ("spark_jobs.job_run", "JobRun.quarantine_tables"),
    "cut_offs": ("spark_jobs.build_training_data", "split_cutoffs"),
    "write": ("spark_jobs.job_run", "JobRun.write_examples"),
    "statistics": ("spark_jobs.build_training_data", "example_statistics"),
}


def _time_phases(phases: dict[str, float]) -> None:
    """Wrap each ``_PHASES`` call so its wall seconds add up in ``phases`` (benchmark only)."""
    import functools
    import importlib

    for name, (module, attr) in _PHASES.items():
        owner = importlib.import_module(module)
        *path, leaf = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, leaf, None)
        if original is None:  # an earlier version of the job (run from a `git archive`)
            continue

        def timed(*a, _f=original, _name=name, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - t0

        setattr(owner, leaf, functools.wraps(original)(timed))


def _floor_worker(
    dataset: str, raw: str, work: str, reps: int, warmup: int, kinds: list[str]
) -> dict:
    from recsys.config import SparkConfig, load_config
    from spark_jobs import build_training_data as job
    from spark_jobs.session import build_session

    cfg = load_config(CODE_ROOT / "configs" / f"{dataset}.yaml")
    spark_cfg = SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=8)
    cfg = cfg.model_copy(update={"spark": spark_cfg})
    spark = build_session(spark_cfg)
    sc = spark.sparkContext
    cpu = _ProcessCPU()
    phases: dict[str, float] = {}
    _time_phases(phases)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}

    def one(kind: str, tag: str) -> dict:
        group = f"{kind}-{tag}"
        sc.setJobGroup(group, group)
        out = Path(work) / f"out-{dataset}-{kind}"
        if kind == "write_only":  # what prepare wrote, in memory before the clock starts
            in_memory = load_examples(spark, Path(work) / f"out-{dataset}-prepare" / "examples")
        phases.clear()
        t0, c0 = time.perf_counter(), cpu.seconds()
        if kind == "floor":
            floor_job(spark, Path(raw), out, _positive(cfg), cfg.prepare.history_length)
            rows = None
        elif kind == "write_only":
            write_only_job(spark, in_memory, out)
            rows, out = None, out / "examples"
        else:
            rows = job.run(cfg, raw, out, spark)["counts"]["examples"]
            out = out / "examples"
        seconds, cpu_seconds = time.perf_counter() - t0, cpu.seconds() - c0
        result = {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "spark_jobs": len(sc.statusTracker().getJobIdsForGroup(group)),
            "output_bytes": _dir_bytes(out),
            "examples": rows,
        }
        if kind == "prepare":
            result["phases"] = {**phases, "rest": seconds - sum(phases.values())}
        return result

    for r in range(warmup + reps):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            res = one(kind, str(r))
            if r >= warmup:
                runs[kind].append(res)
            print(f"#   rep {r - warmup}: {kind} {res['seconds']:.1f}s", file=sys.stderr)
    events = spark.read.parquet(str(Path(raw) / "events.parquet")).count()
    spark.stop()
    return {"events": events, "runs": runs}


def _duckdb_seconds(raw: Path, cfg, reps: int) -> list[float] | None:  # noqa: ANN001
    """The floor's window in DuckDB (2 threads), or None when duckdb is not installed."""
    try:
        import duckdb
    except ImportError:
        return None
    rule = cfg.prepare.label
    pos = (
        f"event = 'rating' AND value >= {rule.threshold}"
        if rule.kind == "rating"
        else "event = 'click'"
    )
    n = cfg.prepare.history_length
    sql = f"""
    COPY (
      WITH ev AS (SELECT *, epoch_ms(ts) AS ts_ms FROM read_parquet('{raw}/events.parquet')),
      snaps AS (
        SELECT user_id, ts_ms, h FROM (
          SELECT user_id, ts_ms,
            list(item_id) OVER (PARTITION BY user_id ORDER BY ts_ms, item_id
                                ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW) AS h,
            lead(ts_ms) OVER (PARTITION BY user_id ORDER BY ts_ms, item_id) AS nxt
          FROM ev WHERE {pos}) WHERE nxt IS NULL OR nxt <> ts_ms),
      rows AS (
        SELECT user_id, item_id, ts, event, value, ts_ms, 0 AS k, NULL::VARCHAR[] AS h FROM ev
        UNION ALL SELECT user_id, NULL, NULL, NULL, NULL, ts_ms, 1, h FROM snaps)
      SELECT * EXCLUDE (k, h, ts_ms, last_h), coalesce(last_h, []) AS history FROM (
        SELECT *, last(h IGNORE NULLS) OVER (PARTITION BY user_id ORDER BY ts_ms, k
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS last_h FROM rows)
      WHERE k = 0
    ) TO '{raw.parent}/duckdb-out.parquet' (FORMAT parquet)
    """
    con = duckdb.connect()
    con.execute("SET threads = 2")
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        con.execute(sql)
        out.append(time.perf_counter() - t0)
    return out


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _worker_runs(
    dataset: str,
    raw: Path,
    work: Path,
    reps: int,
    warmup: int,
    kinds: list[str],
    code_root: Path | None = None,
) -> dict | None:
    """Run ``_floor_worker`` in a fresh process (importing the job from ``code_root``, default
    this tree); its result, or None (stderr shown) on failure."""
    env = dict(os.environ)
    if code_root is not None:
        env["RECSYS_BENCH_CODE_ROOT"] = str(code_root)
    res = subprocess.run(
        [sys.executable, __file__, "--floor-worker", dataset, str(raw), str(work)]
        + ["--reps", str(reps), "--warmup", str(warmup), "--kinds", *kinds],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-2000:])
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cold_runs(
    dataset: str, raw: Path, work: Path, reps: int, against: Path | None = None
) -> dict | None:
    """``reps`` interleaved cold runs of each kind, each in a process of its own; with
    ``against`` (a tree of another commit) also that tree's ``run()``, as kind ``against``."""
    kinds = (*KINDS, "against") if against is not None else KINDS
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    events = 0
    for r in range(reps):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            if kind == "against":
                assert against is not None
                got = _worker_runs(dataset, raw, work / "against", 1, 0, ["prepare"], against)
                if got is not None:
                    got["runs"]["against"] = got["runs"].pop("prepare")
            else:
                got = _worker_runs(dataset, raw, work, 1, 0, [kind])
            if got is None:
                return None
            runs[kind] += got["runs"][kind]
            events = got["events"]
            print(f"#   rep {r}: {kind} {got['runs'][kind][0]['seconds']:.1f}s", file=sys.stderr)
    return {"events": events, "runs": runs}


def _tree_of(ref: str, work: Path) -> Path:
    """``git archive`` of commit ``ref`` of this repository, unpacked under ``work``."""
    tree = work / f"tree-{ref}"
    if not tree.exists():
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
        ).stdout
        partial = work / f".tree-{ref}.partial"
        partial.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
        partial.rename(tree)  # a failed extraction is never taken for a tree
    return tree


def _per_rep(runs: list[dict], base: list[dict], key: str) -> list[float]:
    """``runs`` over ``base`` rep by rep (runs of one rep are neighbours in time)."""
    return [x[key] / b[key] for x, b in zip(runs, base, strict=True)]


def _dataset_result(dataset: str, r: dict, duck: list[float] | None) -> dict:
    floor, prep, write = r["runs"]["floor"], r["runs"]["prepare"], r["runs"]["write_only"]

    def over_floor(runs: list[dict], key: str) -> list[float]:
        return _per_rep(runs, floor, key)

    ratios, cpu_ratios = over_floor(prep, "seconds"), over_floor(prep, "cpu_seconds")
    bar = 2.5 if dataset == "movielens" else 2.0
    return {
        "events": r["events"],
        "examples": prep[0]["examples"],
        "floor_seconds": _median(floor, "seconds"),
        "prepare_seconds": _median(prep, "seconds"),
        "prepare_over_floor": statistics.median(ratios),
        "prepare_over_floor_per_rep": ratios,
        "cpu_prepare_over_floor": statistics.median(cpu_ratios),
        "prepare_phase_seconds": {
            name: statistics.median(p["phases"][name] for p in prep) for name in prep[0]["phases"]
        },
        "write_only_seconds": _median(write, "seconds"),
        "write_only_over_floor": statistics.median(over_floor(write, "seconds")),
        "cpu_write_only_over_floor": statistics.median(over_floor(write, "cpu_seconds")),
        "bar": bar,
        "meets_bar": statistics.median(ratios) <= bar,
        **(_against_result(prep, r["runs"]["against"]) if "against" in r["runs"] else {}),
        "floor_spark_jobs": floor[0]["spark_jobs"],
        "prepare_spark_jobs": prep[0]["spark_jobs"],
        "floor_output_bytes": floor[0]["output_bytes"],
        "prepare_output_bytes": prep[0]["output_bytes"],
        "duckdb_seconds": None if duck is None else statistics.median(duck),
        "runs": r["runs"],
    }


def _against_result(prep: list[dict], against: list[dict]) -> dict:
    """``run()`` of this tree against ``run()`` of ``--against``, rep by rep (< 1: faster)."""

    def ratio(key: str) -> float:
        return statistics.median(_per_rep(prep, against, key))

    return {
        "against_seconds": _median(against, "seconds"),
        "against_cpu_seconds": _median(against, "cpu_seconds"),
        "prepare_over_against": ratio("seconds"),
        "cpu_prepare_over_against": ratio("cpu_seconds"),
    }


def _print_floor_table(results: dict[str, dict]) -> None:
    print()
    print(
        f"{'dataset':>10} {'events':>10} {'floor s':>8} {'prepare s':>10} {'ratio':>6} "
        f"{'cpu ratio':>9} {'bar':>4} {'write-only s':>12} {'ratio':>6} {'cpu ratio':>9} "
        f"{'jobs floor/prep':>16} {'MB floor/prep':>14} {'duckdb s':>9}"
    )
    for name, d in results.items():
        duck = "n/a" if d["duckdb_seconds"] is None else f"{d['duckdb_seconds']:.2f}"
        print(
            f"{name:>10} {d['events']:>10,} {d['floor_seconds']:>8.1f} "
            f"{d['prepare_seconds']:>10.1f} {d['prepare_over_floor']:>6.2f} "
            f"{d['cpu_prepare_over_floor']:>9.2f} {d['bar']:>4} {d['write_only_seconds']:>12.1f} "
            f"{d['write_only_over_floor']:>6.2f} {d['cpu_write_only_over_floor']:>9.2f} "
            f"{d['floor_spark_jobs']:>7}/{d['prepare_spark_jobs']:<8} "
            f"{d['floor_output_bytes'] / 2**20:>6.1f}/{d['prepare_output_bytes'] / 2**20:<7.1f} "
            f"{duck:>9}"
        )
    for name, d in results.items():
        if "against_seconds" in d:
            print(
                f"{name:>10}: run() {d['prepare_seconds']:.1f}s vs --against "
                f"{d['against_seconds']:.1f}s: {d['prepare_over_against']:.3f}x wall, "
                f"{d['cpu_prepare_over_against']:.3f}x CPU"
            )
    print("\nwhere run() goes (median wall seconds; rest = planning, manifest, publish):")
    names = list(next(iter(results.values()))["prepare_phase_seconds"])
    print(f"{'dataset':>10} " + " ".join(f"{n:>10}" for n in names))
    for name, d in results.items():
        phases = d["prepare_phase_seconds"]
        print(f"{name:>10} " + " ".join(f"{phases[n]:>10.2f}" for n in names))


def floor_mode(args: argparse.Namespace, argv: list[str] | None) -> int:
    from recsys.config import load_config

    datasets = ["movielens"] if args.quick else list(args.datasets)
    reps = args.reps
    if args.against and not args.cold:
        raise SystemExit("--against runs with --cold (each run in a process of its own)")
    name = "prepare_floor_cold" if args.cold else "prepare_floor"
    name += "_against" if args.against else ""
    out = output_path(name, args.quick, args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-floor-"))
    load_before = os.getloadavg()[0]
    how = "fresh process per run" if args.cold else f"one session, +{args.warmup} warm-up"
    print(
        f"# prepare vs Spark floor: datasets {datasets}, local[2], 8 shuffle partitions, "
        f"{reps} interleaved reps ({how}), medians"
    )
    print(f"# machine: {describe_host()}")
    results = {}
    against = _tree_of(args.against, work) if args.against else None
    for dataset in datasets:
        raw = _raw_dir(dataset, work)
        if args.cold:
            r = _cold_runs(dataset, raw, work, reps, against)
        else:
            r = _worker_runs(dataset, raw, work, reps, args.warmup, list(KINDS))
        if r is None:
            return 1
        cfg = load_config(ROOT / "configs" / f"{dataset}.yaml")
        results[dataset] = _dataset_result(dataset, r, _duckdb_seconds(raw, cfg, reps))
    _print_floor_table(results)
    setup = {
        "master": "local[2]",
        "shuffle_partitions": 8,
        "reps": reps,
        "warmup": 0 if args.cold else args.warmup,
        "cold": args.cold,
        "against": args.against,
        "machine": describe_host(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
        "duckdb": results and next(iter(results.values()))["duckdb_seconds"] is not None,
        "command": command_line("prepare.py", argv),
    }
    write_result(out, {"setup": setup, "datasets": results})
    return 0


# ----------------------------------------------------------------------------- size mode


def _worker(raw: str, out: str, master: str, partitions: int) -> dict:
    import psutil

    from recsys.config import (
        LabelRule,
        PipelineConfig,
        PrepareConfig,
        SimulatorConfig,
        SourceConfig,
        SparkConfig,
    )
    from spark_jobs import build_training_data as job
    from spark_jobs.session import build_session

    spark_cfg = SparkConfig(master=master, driver_memory="4g", shuffle_partitions=partitions)
    cfg = PipelineConfig(
        name="bench",
        source=SourceConfig(kind="simulator"),
        simulator=SimulatorConfig(),
        spark=spark_cfg,
        prepare=PrepareConfig(label=LabelRule(kind="click")),
    )
    spark = build_session(spark_cfg)
    me = psutil.Process()
    peak = {"jvm": 0}
    stop = threading.Event()
    cpu = _ProcessCPU()

    def sample() -> None:
        while not stop.is_set():
            for child in me.children(recursive=True):
                try:
                    if "java" in child.name():
                        peak["jvm"] = max(peak["jvm"], child.memory_info().rss)
                except psutil.Error:
                    pass
            stop.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0, c0 = time.perf_counter(), cpu.seconds()
    manifest = job.run(cfg, raw, out, spark)
    seconds = time.perf_counter() - t0
    cpu_seconds = cpu.seconds() - c0
    stop.set()
    t.join()
    spark.stop()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "events_in": manifest["counts"]["events_in"],
        "examples": manifest["counts"]["examples"],
        "driver_python_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_jvm_peak_mb": peak["jvm"] / 2**20,
    }


def summarize(rows: list[dict]) -> dict:
    """Print the table; fit seconds = fixed + per_event * events; check growth is not superlinear.

    ``time_per_event_vs_smallest`` <= 1.5 for every size means time grows at most linearly
    (within 1.5x); fixed per-run costs (job scheduling, many small stages) make it sublinear at
    these sizes, so the marginal cost (slope of the fit) is the number to extrapolate with.
    """
    base = rows[0]["seconds"] / rows[0]["events_in"]
    for r in rows:
        r["time_per_event_vs_smallest"] = (r["seconds"] / r["events_in"]) / base
    n = [r["events_in"] for r in rows]
    t = [r["seconds"] for r in rows]
    mean_n, mean_t = sum(n) / len(n), sum(t) / len(t)
    var = sum((x - mean_n) ** 2 for x in n)
    slope = sum((x - mean_n) * (y - mean_t) for x, y in zip(n, t, strict=True)) / var if var else 0
    fixed = mean_t - slope * mean_n
    not_superlinear = all(r["time_per_event_vs_smallest"] <= 1.5 for r in rows)
    # "Doubling the input roughly doubles the time": per step between sizes, the growth of
    # time divided by the growth of input, on wall and on CPU seconds (1.0 = linear).
    for prev, r in zip(rows, rows[1:], strict=False):
        grow = r["events_in"] / prev["events_in"]
        r["wall_growth_per_input_growth"] = (r["seconds"] / prev["seconds"]) / grow
        if "cpu_seconds" in r and "cpu_seconds" in prev:
            r["cpu_growth_per_input_growth"] = (r["cpu_seconds"] / prev["cpu_seconds"]) / grow
    steps = [r for r in rows[1:] if "cpu_growth_per_input_growth" in r]
    linear_cpu = bool(steps) and all(
        1 / 1.5 <= r["cpu_growth_per_input_growth"] <= 1.5 for r in steps
    )
    print()
    print(
        f"{'events':>10} {'examples':>10} {'seconds':>8} {'events/s':>10} "
        f"{'py peak MB':>10} {'JVM peak MB':>11} {'t/event vs smallest':>20} "
        f"{'cpu s':>7} {'cpu growth/input growth':>24}"
    )
    for r in rows:
        growth = r.get("cpu_growth_per_input_growth")
        print(
            f"{r['events_in']:>10,} {r['examples']:>10,} {r['seconds']:>8.1f} "
            f"{r['events_per_s']:>10,.0f} {r['driver_python_peak_mb']:>10.0f} "
            f"{r['driver_jvm_peak_mb']:>11.0f} {r['time_per_event_vs_smallest']:>20.2f} "
            f"{r.get('cpu_seconds', float('nan')):>7.0f} "
            f"{'' if growth is None else f'{growth:.2f}':>24}"
        )
    print(f"\nfit: seconds = {fixed:.1f} + {slope * 1e6:.1f} per million events")
    print(f"time grows at most linearly (t/event <= 1.5x smallest): {not_superlinear}")
    print(f"CPU time grows linearly with input (each step within 1.5x of linear): {linear_cpu}")
    return {
        "cpu_linear_within_1_5x": linear_cpu,
        "fit": {"fixed_seconds": fixed, "seconds_per_million_events": slope * 1e6},
        "not_superlinear_within_1_5x": not_superlinear,
    }


def sizes_mode(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Throughput and driver memory of ``run()`` against input size (``--sizes``)."""
    if args.resummarize:
        if not args.out:
            raise SystemExit("--resummarize: name the JSON to re-print with --out")
        data = json.loads(Path(args.out).read_text())
        data.update(summarize(data["rows"]))
        data.pop("linear_within_1_5x", None)
        write_result(Path(args.out), data)
        return 0
    sizes = args.sizes
    out = output_path("prepare", False, args.out)

    from recsys.config import SimulatorConfig
    from recsys.sources.simulator import simulate_to_parquet

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-"))
    sim = SimulatorConfig(seed=7, with_media=False)
    print(
        f"# prepare benchmark: master={args.master}, shuffle partitions={args.partitions}, "
        f"simulator seed={sim.seed} (no media), label=click, history=20"
    )
    print(f"# machine: {describe_host()}")
    rows = []
    for n in sizes:
        raw = work / f"raw-{n}"
        t0 = time.perf_counter()
        if not (raw / "events.parquet").exists():
            simulate_to_parquet(sim, raw, target_events=n)
        gen = time.perf_counter() - t0
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--master",
                args.master,
                "--partitions",
                str(args.partitions),
                "--worker",
                str(raw),
                str(work / f"out-{n}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r.update(
            {
                "target_events": n,
                "simulate_seconds": gen,
                "events_per_s": r["events_in"] / r["seconds"],
            }
        )
        rows.append(r)
        print(f"  {n:>9,}: {r['events_in']:,} events in {r['seconds']:.1f}s", flush=True)
    summary = summarize(rows)
    setup = {
        "master": args.master,
        "shuffle_partitions": args.partitions,
        "cpus": os.cpu_count(),
        "machine": describe_host(),
        "simulator_seed": sim.seed,
        "command": command_line("prepare.py", argv),
    }
    write_result(out, {"setup": setup, "rows": rows, **summary})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="floor mode on MovieLens only")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--reps", type=int, default=REPS, help="interleaved reps (medians)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted reps first")
    p.add_argument("--cold", action="store_true", help="every run in a fresh process")
    p.add_argument(
        "--against", metavar="REF", help="with --cold: also run() of git commit REF, interleaved"
    )
    p.add_argument("--kinds", nargs="+", default=list(KINDS), help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="size mode: events")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON path (default: results/prepare_floor.json)")
    p.add_argument("--resummarize", action="store_true", help="re-print --out without running")
    p.add_argument("--worker", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    p.add_argument(
        "--floor-worker", nargs=3, metavar=("DATASET", "RAW", "WORK"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.master, args.partitions)))
        return 0
    if args.floor_worker:
        print(json.dumps(_floor_worker(*args.floor_worker, args.reps, args.warmup, args.kinds)))
        return 0
    if args.sizes or args.resummarize:
        return sizes_mode(args, argv)
    return floor_mode(args, argv)


if __name__ == "__main__":
    sys.exit(main())
