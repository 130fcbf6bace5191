"""Input pipeline: featurising batch by batch vs a chunk of batches at once, same run.

Baseline (per batch): every 1,024-row batch is hashed and turned into a KJT on its own.
``ExampleBatcher`` (chunked): ``FEATURISE_BATCHES`` batches are featurised together and sliced.
Both read the same shuffled row groups; repetitions interleave the two in alternating order.

    .venv/bin/python benchmarks/featurise.py --out benchmarks/results/featurise.json
    .venv/bin/python benchmarks/featurise.py --quick      # 3 repetitions

Reads ``runs/movielens/examples`` (``--examples``); when missing, builds them with
``recsys pipeline --config configs/movielens.yaml --stages source,prepare``. A full run without
``--out`` refuses to replace ``benchmarks/results/featurise.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from host import describe_host
from result_file import command_line, ensure_examples, output_path, shown, write_result

from recsys.features.batcher import FEATURISE_BATCHES, ExampleBatcher, table_to_batch
from recsys.features.spec import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = ROOT / "configs" / "movielens.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", default=None, help="examples dir (runs/movielens/examples)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--reps", type=int, default=None, help="repetitions (7; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="3 repetitions")
    p.add_argument("--out", default=None, help="JSON path (default: results/featurise.json)")
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    out = output_path("featurise", args.quick, args.out)
    if args.examples:
        examples = Path(args.examples)
    else:
        examples = ensure_examples(MOVIELENS, {}, ROOT / "runs/movielens/examples")

    spec = FeatureSpec.from_manifest(json.loads((examples / "manifest.json").read_text()))
    batcher = ExampleBatcher(examples, "train", spec, args.batch_size, shuffle=True, prefetch=0)
    print(
        f"# examples {shown(examples)}: {batcher.num_rows:,} train rows, {len(spec.sparse)} sparse"
    )
    print(f"# batch {args.batch_size}, chunk {FEATURISE_BATCHES} batches, {reps} reps")
    print(f"# machine: {describe_host()}")

    def per_batch() -> int:
        return sum(1 for t in batcher._tables(0, 0) if len(table_to_batch(t, spec)))

    def chunked() -> int:
        return sum(1 for b in batcher._batches(0, 0) if len(b))

    runs: dict[str, list[float]] = {"per batch": [], "chunked (ExampleBatcher)": []}
    fns = dict(zip(runs, (per_batch, chunked), strict=True))
    for rep in range(reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            t0 = time.perf_counter()
            n = fns[name]()
            runs[name].append((time.perf_counter() - t0) / n * 1000)
    base = float(np.median(runs["per batch"]))
    rows = []
    print("\n| featurisation | ms / batch (median) | min–max | speed-up |")
    print("|---|---:|---|---:|")
    for name, v in runs.items():
        med = float(np.median(v))
        rows.append({"mode": name, "median_ms": med, "min_ms": min(v), "max_ms": max(v)})
        print(f"| {name} | {med:.2f} | {min(v):.2f}–{max(v):.2f} | {base / med:.2f}× |")
    payload = {
        "setup": {
            "machine": describe_host(),
            "examples": shown(examples),
            "train_rows": batcher.num_rows,
            "reps": reps,
        },
        "batch_size": args.batch_size,
        "chunk": FEATURISE_BATCHES,
        "rows": rows,
        "command": command_line("featurise.py", argv),
    }
    write_result(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
