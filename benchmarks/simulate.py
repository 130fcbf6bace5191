"""Benchmark the world simulator: events/s and peak memory, streaming vs in-memory, media on/off.

Every measurement runs in a fresh subprocess so peak memory is clean: peak = ``ru_maxrss`` at
the end minus the RSS after imports. Rows:

- ``stream``: ``simulate_to_parquet(cfg, tmp, target_events=N)`` (the CLI path);
- ``memory``: ``simulate(cfg)`` then ``RawLogs.write`` (same events, held in memory);
- media ``off``/``on``: items without / with PNG images and audio vectors.

Usage::

    .venv/bin/python benchmarks/simulate.py --sizes 1e6,5e6,1e7 --out benchmarks/results/simulate.json
    .venv/bin/python benchmarks/simulate.py --quick            # 200k events, 1 repeat

A full run without ``--out`` refuses to replace ``benchmarks/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host import describe_host
from result_file import command_line, output_path, write_result

ROOT = Path(__file__).resolve().parents[1]


def _child(mode: str, size: int, media: bool, seed: int) -> dict:
    """Run one measurement in this (fresh) process and return its numbers."""
    import psutil

    from recsys.config import SimulatorConfig
    from recsys.sources.simulator import scale_to_events, simulate, simulate_to_parquet

    base_rss = psutil.Process().memory_info().rss
    cfg = SimulatorConfig(seed=seed, with_media=media)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if mode == "stream":
            summary = simulate_to_parquet(cfg, Path(tmp) / "raw", target_events=size)
            events, users = summary["events"], summary["users"]
        else:
            scaled = scale_to_events(cfg, size)
            logs = simulate(scaled)
            logs.write(Path(tmp) / "raw")
            events, users = logs.events.num_rows, logs.users.num_rows
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "mode": mode,
        "target": size,
        "media": media,
        "events": events,
        "users": users,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "peak_mib": (peak - base_rss) / 2**20,
    }


def _measure(mode: str, size: int, media: bool, seed: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--child", mode, str(size), str(int(media)), str(seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row = dict(runs[0])
    for key in ("seconds", "events_per_s", "peak_mib"):
        row[key] = statistics.median(r[key] for r in runs)
    row["repeats"] = repeats
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="target events, comma separated (1e6,5e6)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs per row at the first size (3; 1 above)"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="200k events, 1 repeat")
    ap.add_argument("--out", default=None, help="JSON path (default: results/simulate.json)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, size, media, seed = args.child
        print(json.dumps(_child(mode, int(size), media == "1", int(seed))))
        return
    args.sizes = args.sizes or ("2e5" if args.quick else "1e6,5e6")
    args.repeats = args.repeats or (1 if args.quick else 3)
    out = output_path("simulate", args.quick, args.out)

    from recsys.config import SimulatorConfig

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    cfg = SimulatorConfig(seed=args.seed)
    setup = {
        "sizes": sizes,
        "seed": args.seed,
        "repeats_at_1m": args.repeats,
        "world": {
            "items": cfg.num_items,
            "concepts": cfg.num_concepts,
            "days": cfg.days,
            "new_items_per_day": cfg.new_items_per_day,
            "slate_size": cfg.slate_size,
            "image_size": cfg.image_size,
            "audio_dim": cfg.audio_dim,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "host": describe_host(),
        },
        "note": "users scale to reach the target; median of repeats; peak = maxrss - rss "
        "after imports, per subprocess",
    }
    print("setup:", json.dumps(setup))

    rows = []
    first = sizes[0]
    plan = [("stream", n, False) for n in sizes]
    plan += [("memory", first, False), ("stream", first, True)]
    for mode, n, media in plan:
        reps = args.repeats if n == first else 1
        row = _measure(mode, n, media, args.seed, reps)
        rows.append(row)
        print(
            f"  {mode:6s} media={'on ' if media else 'off'} target={n:>10,d} "
            f"events={row['events']:>10,d} {row['seconds']:7.2f}s "
            f"{row['events_per_s']:>11,.0f} ev/s peak {row['peak_mib']:7.1f} MiB",
            flush=True,
        )

    def pick(mode: str, n: int, media: bool) -> dict:
        return next(r for r in rows if (r["mode"], r["target"], r["media"]) == (mode, n, media))

    stream, memory, media_on = (
        pick("stream", first, False),
        pick("memory", first, False),
        pick("stream", first, True),
    )
    ratios = {
        "memory_over_stream_seconds": memory["seconds"] / stream["seconds"],
        "memory_over_stream_peak": memory["peak_mib"] / max(stream["peak_mib"], 1e-9),
        "media_on_over_off_seconds": media_on["seconds"] / stream["seconds"],
        "media_on_over_off_peak": media_on["peak_mib"] / max(stream["peak_mib"], 1e-9),
    }

    print()
    print("| mode | media | target events | events | users | seconds | events/s | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {'on' if r['media'] else 'off'} | {r['target']:,} | "
            f"{r['events']:,} | {r['users']:,} | {r['seconds']:.2f} | "
            f"{r['events_per_s']:,.0f} | {r['peak_mib']:.1f} |"
        )
    print()
    print(f"at {first:,} events (media off unless stated):")
    print("| comparison | time ratio | peak-memory ratio |")
    print("|---|---:|---:|")
    print(
        f"| in-memory / streaming | {ratios['memory_over_stream_seconds']:.2f} | "
        f"{ratios['memory_over_stream_peak']:.2f} |"
    )
    print(
        f"| media on / media off (streaming) | {ratios['media_on_over_off_seconds']:.2f} | "
        f"{ratios['media_on_over_off_peak']:.2f} |"
    )
    payload = {
        "setup": setup,
        "rows": rows,
        "ratios": ratios,
        "command": command_line("simulate.py", argv),
    }
    write_result(out, payload)


if __name__ == "__main__":
    main()
