"""Benchmark two-tier retrieval against FAISS exact, HNSW and IVF-PQ without the exact tier.

Data: ``--items`` synthetic clustered unit vectors (``--dim`` wide, 1000 centres) and
``--queries`` queries near the same centres; ground truth is FAISS ``IndexFlatIP`` (exact).
Each method is built in one subprocess and written to disk, then loaded and searched in a
fresh one, so the memory measured is the loaded index's, not the build's:

- ``exact``: ``IndexFlatIP`` (all float32 vectors in memory);
- ``hnsw``: ``IndexHNSWFlat`` (M 32, efSearch 256; float32 vectors + graph in memory);
- ``ivfpq``: the two-tier index's tier 1 alone (OPQ + IVF-PQ codes), top-k from codes;
- ``two_tier``: ``recsys.retrieval`` (tier 1 in memory, float32 vectors memory-mapped from
  disk, exact re-score of a shortlist of ``N``), for each ``N`` of ``--shortlists``.

Reported per method: recall@10 and recall@100 against exact, single-query p50/p99 (k=100,
one query per call on one thread), batched QPS (all queries in one call, ``--threads``),
tier-1 (in-memory index) bytes,
and the searching process's RSS after loading and after searching, minus its RSS before
loading (all, and anonymous only: the two-tier index's mapped vector pages count in RSS once
touched but are file pages the kernel can drop and reread).

Then progressive optimisation, with vs without, over seeds 0-2 on a synthetic next-item task
(``progressive_task``): recall@50 of two-tier search for held-out users.

Usage::

    .venv/bin/python benchmarks/retrieval.py --quick     # 100k x 128, ~3 min on 2 cores
    .venv/bin/python benchmarks/retrieval.py             # 1M x 128

A full run without ``--out`` refuses to replace ``benchmarks/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from host import describe_host
from result_file import command_line, output_path, write_result

ROOT = Path(__file__).resolve().parents[1]
K = 100
SINGLE_QUERIES = 300


def make_data(items: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 1000 centres: ``(items, dim)`` catalogue, ``(queries, dim)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    out = []
    for n in (items, queries):
        x = centres[rng.integers(0, 1000, n)]
        x += 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x)
    return out[0], out[1]


def rss_bytes(kind: str = "VmRSS") -> int:
    """This process's resident memory: ``VmRSS`` (all), ``RssAnon`` (heap, held for good) or
    ``RssFile`` (pages of mapped files, which the kernel may drop and reread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) * 1024
    return 0


def _recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    hits = [
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits) / k)


# ---------------------------------------------------------------------------------------------
# one method, in a child process


def _build(method: str, data_dir: Path, threads: int, seed: int, shortlist: int) -> dict:
    """Build ``method``'s index from ``items.npy`` and write it under ``data_dir``."""
    import faiss

    from recsys.retrieval.compact import CompactCodes, TierOneConfig
    from recsys.retrieval.two_tier import TwoTierIndex, write_index

    faiss.omp_set_num_threads(threads)
    vectors = np.load(data_dir / "items.npy")
    n, d = vectors.shape
    config = TierOneConfig(seed=seed)
    t0 = time.perf_counter()
    if method == "exact":
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(vectors)
    elif method == "ivfpq":
        index = CompactCodes.train(vectors, config).index
    else:
        built = TwoTierIndex.build(vectors, np.arange(n), config, default_shortlist=shortlist)
        write_index(built, data_dir / f"{method}-{shortlist}")
        return {"build_s": time.perf_counter() - t0}
    faiss.write_index(index, str(data_dir / f"{method}.faiss"))
    return {"build_s": time.perf_counter() - t0}


def _measure(method: str, data_dir: Path, threads: int, shortlist: int) -> dict:
    """Load ``method``'s index in this fresh process and search with it."""
    import faiss

    from recsys.retrieval.two_tier import load_index

    faiss.omp_set_num_threads(threads)
    queries = np.load(data_dir / "queries.npy")
    truth = np.load(data_dir / "truth.npy")
    n, d = np.load(data_dir / "items.npy", mmap_mode="r").shape
    gc.collect()
    base, base_anon = rss_bytes(), rss_bytes("RssAnon")
    if method == "two_tier":
        index = load_index(data_dir / f"{method}-{shortlist}")
        tier_one = index.tier_one_bytes()
        per_item = tier_one / n

        def search(q: np.ndarray) -> list[np.ndarray]:
            return [h.ids for h in index.search(q, K)]
    else:
        index = faiss.read_index(str(data_dir / f"{method}.faiss"))
        if method == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = 256
        if method == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = max(
                1, faiss.extract_index_ivf(index).nlist // 8
            )
        tier_one = int(faiss.serialize_index(index).nbytes)
        per_item = tier_one / n

        def search(q: np.ndarray) -> list[np.ndarray]:
            return list(index.search(q, K)[1])

    rss_loaded = rss_bytes() - base
    search(queries[:8])  # warm-up
    t0 = time.perf_counter()
    found = search(queries)
    qps = len(queries) / (time.perf_counter() - t0)
    lat = []
    faiss.omp_set_num_threads(1)  # one query per call is served by one core
    for q in queries[:SINGLE_QUERIES]:
        t0 = time.perf_counter()
        search(q[None, :])
        lat.append((time.perf_counter() - t0) * 1000)
    return {
        "method": method,
        "shortlist": shortlist if method == "two_tier" else None,
        "recall@10": _recall(found, truth, 10),
        "recall@100": _recall(found, truth, 100),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "batched_qps": qps,
        "tier1_bytes": tier_one,
        "tier1_bytes_per_item": per_item,
        "float32_bytes": n * d * 4,
        "rss_loaded_bytes": rss_loaded,
        "rss_after_search_bytes": rss_bytes() - base,
        "rss_anon_after_search_bytes": rss_bytes("RssAnon") - base_anon,
    }


def _run_child(
    step: str, method: str, data_dir: Path, args: argparse.Namespace, shortlist: int
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"{step}:{method}",
        "--data",
        str(data_dir),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--child-shortlist",
        str(shortlist),
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{step} {method}: child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# progressive optimisation, with vs without, on a synthetic next-item task


def progressive_task(seed: int, items: int, users: int, dim: int) -> dict:
    """Recall@50 on held-out users of two-tier search with and without progressive
    optimisation. The task: each user's next item is, among its 200 nearest items, the one a
    hidden direction scores highest (what the dense vectors alone cannot know, as a trained
    model's blind spot); 75 % of users train, 25 % test."""
    from recsys.retrieval.compact import TierOneConfig
    from recsys.retrieval.progressive import ProgressiveConfig, progressive_optimise
    from recsys.retrieval.two_tier import TwoTierIndex

    item_vecs, user_vecs = make_data(items, users, dim, seed)
    hidden = np.random.default_rng(seed + 1).standard_normal(dim).astype(np.float32)
    near = np.concatenate(  # each user's 200 nearest items (unordered), 1000 users at a time
        [
            np.argpartition(-(u @ item_vecs.T), 200, axis=1)[:, :200]
            for u in np.split(user_vecs, range(1000, users, 1000))
        ]
    )
    positives = near[np.arange(users), np.argmax(item_vecs[near] @ hidden, axis=1)]
    index = TwoTierIndex.build(item_vecs, np.arange(items), TierOneConfig(seed=seed))
    cut = users * 3 // 4
    config = ProgressiveConfig(epochs=5, shortlist=200, negatives=32, lr=0.02, seed=seed)
    t0 = time.perf_counter()
    tuned = progressive_optimise(index, user_vecs[:cut], positives[:cut], config)
    train_s = time.perf_counter() - t0

    def recall(ix: TwoTierIndex) -> float:
        hits = ix.search(user_vecs[cut:], k=50, shortlist=1000)
        return float(np.mean([p in h.ids for h, p in zip(hits, positives[cut:], strict=True)]))

    return {"seed": seed, "without": recall(index), "with": recall(tuned), "train_s": train_s}


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100k items, 1000 queries")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--shortlists", default="1000,2000")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prog-items", type=int, default=100_000)
    p.add_argument("--prog-users", type=int, default=8000)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-shortlist", type=int, default=1000, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        step, method = args.child.split(":")
        data = Path(args.data)
        if step == "build":
            result = _build(method, data, args.threads, args.seed, args.child_shortlist)
        else:
            result = _measure(method, data, args.threads, args.child_shortlist)
        print(json.dumps(result))
        return
    if args.quick:
        args.items, args.queries, args.shortlists = 100_000, 1000, "1000"
        args.prog_items, args.prog_users = 20_000, 2000
    out = output_path("retrieval", args.quick, args.out)
    shortlists = [int(s) for s in args.shortlists.split(",")]
    print(f"# retrieval: {args.items} x {args.dim} clustered unit vectors, {args.queries} queries")
    print(f"# seed {args.seed}, faiss threads {args.threads}, k {K}, shortlists {shortlists}")
    print(f"# host: {describe_host()}")
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    items, queries = make_data(args.items, args.queries, args.dim, args.seed)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(items)
    truth = exact.search(queries, K)[1]
    del exact
    rows = []
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
        data = Path(tmp)
        for name, array in (("items", items), ("queries", queries), ("truth", truth)):
            np.save(data / f"{name}.npy", array)
        del items
        plan = [("exact", 0), ("hnsw", 0), ("ivfpq", 0)] + [("two_tier", n) for n in shortlists]
        for method, n in plan:
            t0 = time.perf_counter()
            built = _run_child("build", method, data, args, n)
            rows.append({**_run_child("measure", method, data, args, n), **built})
            print(
                f"# {method}{f' N={n}' if n else ''}: {time.perf_counter() - t0:.0f} s", flush=True
            )
    _print_table(rows)
    progressive = [
        progressive_task(seed, args.prog_items, args.prog_users, 32) for seed in (0, 1, 2)
    ]
    gains = [r["with"] - r["without"] for r in progressive]
    print(f"# progressive optimisation, synthetic next-item task ({args.prog_items} x 32 items):")
    print(f"{'seed':>4}{'R@50 without':>14}{'R@50 with':>11}{'train s':>9}")
    for r in progressive:
        print(f"{r['seed']:>4}{r['without']:>14.3f}{r['with']:>11.3f}{r['train_s']:>9.1f}")
    print(f"# gain {np.mean(gains):+.3f} +- {np.std(gains):.3f} (mean +- std over 3 seeds)")
    write_result(
        out,
        {
            "command": command_line("retrieval.py", argv),
            "host": describe_host(),
            "python": platform.python_version(),
            "items": args.items,
            "dim": args.dim,
            "queries": args.queries,
            "k": K,
            "threads": args.threads,
            "seed": args.seed,
            "results": rows,
            "progressive": {
                "task": "synthetic next item: hidden-direction best of the 200 nearest",
                "items": args.prog_items,
                "users": args.prog_users,
                "runs": progressive,
                "gain_mean": float(np.mean(gains)),
                "gain_std": float(np.std(gains)),
            },
        },
    )


def _print_table(rows: list[dict]) -> None:
    exact = next(r for r in rows if r["method"] == "exact")
    head = (
        f"{'method':<16}{'R@10':>7}{'R@100':>7}{'p50 ms':>8}{'p99 ms':>8}{'QPS':>9}"
        f"{'vs exact':>9}{'tier1 MB':>10}{'f32/tier1':>10}{'B/item':>8}{'RSS MB':>8}{'anon MB':>8}{'build s':>8}"
    )
    print(head)
    for r in rows:
        name = r["method"] + (f" N={r['shortlist']}" if r["shortlist"] else "")
        print(
            f"{name:<16}{r['recall@10']:>7.3f}{r['recall@100']:>7.3f}{r['p50_ms']:>8.2f}"
            f"{r['p99_ms']:>8.2f}{r['batched_qps']:>9.0f}"
            f"{r['batched_qps'] / exact['batched_qps']:>8.1f}x"
            f"{r['tier1_bytes'] / 1e6:>10.2f}{r['float32_bytes'] / r['tier1_bytes']:>10.1f}"
            f"{r['tier1_bytes_per_item']:>8.1f}"
            f"{r['rss_after_search_bytes'] / 1e6:>8.0f}"
            f"{r['rss_anon_after_search_bytes'] / 1e6:>8.0f}{r['build_s']:>8.1f}"
        )


if __name__ == "__main__":
    main()
