"""Benchmark: spark_jobs/build_training_data.py throughput and driver memory vs input size.

    .venv/bin/python benchmarks/prepare.py --sizes 1250000 2500000 5000000 \
        --out benchmarks/results/prepare.json
    .venv/bin/python benchmarks/prepare.py --quick         # 100k and 200k events

For each size the seeded simulator (``simulate_to_parquet``, no media) writes raw logs, then a
fresh Python process runs the job on ``local[2]`` (Spark start-up excluded from the timing) and
reports wall seconds, events/s, the driver's Python peak RSS and the driver JVM's peak RSS
(sampled every 0.2 s with psutil; in local mode the JVM also runs the executors). Linearity:
the time per event of each size relative to the smallest must stay within 1.5x.
Prints a table and writes benchmarks/results/prepare.json (a full run refuses to replace it
unless ``--out`` names it; ``--quick`` writes prepare_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host import describe_host  # noqa: E402 - benchmarks/ is the script directory
from result_file import command_line, output_path, write_result  # noqa: E402

QUICK_SIZES = [100_000, 200_000]


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
    jvms = [c for c in me.children(recursive=True) if "java" in c.name()]

    def cpu_seconds() -> float:
        """CPU time of the driver JVM (it runs the executors in local mode) and this process.

        Unlike wall time it barely moves when other jobs share the machine, so it is the
        measure the linearity check trusts on a noisy host.
        """
        total = sum(me.cpu_times()[:2])
        for p in jvms:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

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
    t0, c0 = time.perf_counter(), cpu_seconds()
    manifest = job.run(cfg, raw, out, spark)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    stop.set()
    t.join()
    spark.stop()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="events (1M 5M)")
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON path (default: results/prepare.json)")
    p.add_argument("--resummarize", action="store_true", help="re-print --out without running")
    p.add_argument("--worker", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.master, args.partitions)))
        return 0

    if args.resummarize:
        if not args.out:
            raise SystemExit("--resummarize: name the JSON to re-print with --out")
        data = json.loads(Path(args.out).read_text())
        data.update(summarize(data["rows"]))
        data.pop("linear_within_1_5x", None)
        write_result(Path(args.out), data)
        return 0
    sizes = args.sizes or (QUICK_SIZES if args.quick else [1_000_000, 5_000_000])
    out = output_path("prepare", args.quick, args.out)

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


if __name__ == "__main__":
    sys.exit(main())
