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

Then the simulated world (``configs/simulated.yaml`` as a two-tower model, ``--sim-users``
users over ``--sim-days`` days, no media): source and Spark prepare once, a two-tower trained
``--sim-epochs`` epochs and exported per seed 0-2. Per seed, on the test split's clicks (user
vector from the row's ``s_*`` history, ``Bundle.embed("user", rows)``; the clicked item's
``Bundle.embed("item", raw items)`` row), recall@50 of exact search, of two-tier search
(``--sim-shortlist`` candidates) without progressive optimisation, with it at the synthetic
task's settings fixed beforehand, and with the settings of a small grid that score best on the
VALID split's clicks. Last, the methods above side by side on seed 0's trained catalogue, with
test-split user vectors as queries.

Usage::

    .venv/bin/python benchmarks/retrieval.py --quick     # 100k x 128, sim 300 users x 10 days; 2 min
    .venv/bin/python benchmarks/retrieval.py --out F     # 1M x 128, sim 2000 users x 21 days; 11 min
    .venv/bin/python benchmarks/retrieval.py --sections simulated --out F   # one section

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
        if method == "ivfpq" and _has_ivf(index):  # below ivf_min_items tier 1 is flat PQ
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


def _has_ivf(index: object) -> bool:
    import faiss

    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


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
# the simulated world: a trained two-tower model, its catalogue, its next-item task

SIM_CONFIG = ROOT / "configs" / "simulated.yaml"
SIM_K = 50
# Progressive settings fixed before any simulated run (the synthetic task's, with negatives
# drawn from the same shortlist size the two-tier search serves with: a smaller training
# shortlist leaves the items ranked between the two never pushed down, and they rise) ...
SIM_PROGRESSIVE = {"epochs": 5, "negatives": 32, "lr": 0.02}
# ... and a small grid, one of which is chosen per seed by recall on the VALID split.
SIM_GRID = [
    {"epochs": epochs, "negatives": 32, "lr": lr, "l2": l2}
    for lr in (0.002, 0.02)
    for l2 in (0.1, 10.0)
    for epochs in (1, 5)
]


def train_simulated(
    workdir: Path, seeds: list[int], users: int, days: int, epochs: int
) -> tuple[Path, dict[int, Path]]:
    """The simulated world (``configs/simulated.yaml``, ``users`` users over ``days`` days, no
    media) through source and Spark prepare once, then a two-tower model trained and exported
    per seed (``train.seed``). Returns ``(run dir, {seed: bundle dir})``."""
    from recsys.cli import run_pipeline
    from recsys.config import load_config

    sets: dict[str, object] = {
        "output_dir": str(workdir / "run"),
        "simulator.num_users": users,
        "simulator.days": days,
        "simulator.with_media": False,
        "spark.master": "local[2]",
        "spark.shuffle_partitions": 2,
        "model.kind": "two_tower",
        "train.epochs": epochs,
        "train.progress": False,
    }
    run_pipeline(load_config(SIM_CONFIG, sets), ("source", "prepare"))
    bundles = {}
    for seed in seeds:
        cfg = load_config(SIM_CONFIG, {**sets, "train.seed": seed})
        summary = run_pipeline(cfg, ("train", "export"), resume=False)
        bundles[seed] = Path(summary["stages"]["export"]["bundle"])
    return workdir / "run", bundles


def _examples(run_dir: Path, split: str) -> "pd.DataFrame":  # noqa: F821, UP037
    import pyarrow.dataset as ds

    table = ds.dataset(
        run_dir / "examples", format="parquet", partitioning="hive", exclude_invalid_files=True
    ).to_table()
    rows = table.to_pandas()
    return rows[rows.split == split].reset_index(drop=True)


def _embed(bundle: object, kind: str, frame: "pd.DataFrame") -> np.ndarray:  # noqa: F821, UP037
    parts = [bundle.embed(kind, frame.iloc[i : i + 4096]) for i in range(0, len(frame), 4096)]
    return np.concatenate(parts).astype(np.float32)


def simulated_task(run_dir: Path, bundle_dir: Path) -> dict:
    """The next-item task of one trained bundle: catalogue ``ids (n,)`` and ``items (n, d)``
    (``Bundle.embed("item", raw items)``); per split (``train``, ``test``) the clicked rows'
    user vectors ``(P, d)`` (``Bundle.embed("user", rows)``, their ``s_*`` history at that
    time) and the clicked item's catalogue row ``(P,)``."""
    import pandas as pd

    from recsys.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    raw = pd.read_parquet(run_dir / "raw" / "items.parquet")
    ids = raw.item_id.astype(str).to_numpy()
    row_of = {item: r for r, item in enumerate(ids)}
    task = {"ids": ids, "items": _embed(bundle, "item", raw)}
    for split in ("train", "valid", "test"):
        rows = _examples(run_dir, split)
        rows = rows[(rows.label > 0.5) & rows.item_id.astype(str).isin(row_of)]
        task[split] = (
            _embed(bundle, "user", rows.reset_index(drop=True)),
            rows.item_id.astype(str).map(row_of).to_numpy(dtype=np.int64),
        )
    return task


def simulated_progressive(task: dict, seed: int, shortlist: int) -> dict:
    """Recall@50 on the test split's clicks: exact search of the trained vectors, two-tier
    (tier-1 seed ``seed``, ``shortlist`` candidates) without progressive optimisation, with it
    at the fixed ``SIM_PROGRESSIVE`` settings, and with the ``SIM_GRID`` settings that score
    best on the valid split's clicks; all trained on the train split's clicks (seed ``seed``)."""
    from recsys.retrieval.compact import TierOneConfig
    from recsys.retrieval.progressive import ProgressiveConfig, progressive_optimise
    from recsys.retrieval.two_tier import TwoTierIndex

    index = TwoTierIndex.build(task["items"], task["ids"], TierOneConfig(seed=seed))

    def recall(ix: TwoTierIndex, split: str) -> float:
        users, positives = task[split]
        hits = ix.search(users, k=SIM_K, shortlist=shortlist)
        wanted = task["ids"][positives]
        return float(np.mean([w in h.ids for h, w in zip(hits, wanted, strict=True)]))

    def tune(settings: dict) -> tuple[TwoTierIndex, float]:
        t0 = time.perf_counter()
        config = ProgressiveConfig(seed=seed, shortlist=shortlist, **settings)
        tuned = progressive_optimise(index, *task["train"], config)
        return tuned, time.perf_counter() - t0

    fixed, train_s = tune(SIM_PROGRESSIVE)
    valid = []
    for settings in SIM_GRID:
        valid.append((recall(tune(settings)[0], "valid"), settings))
    best_valid, best = max(valid, key=lambda v: v[0])
    users, positives = task["test"]
    top = np.argpartition(-(users @ task["items"].T), SIM_K, axis=1)[:, :SIM_K]
    return {
        "seed": seed,
        "exact": float(np.mean([p in t for p, t in zip(positives, top, strict=True)])),
        "without": recall(index, "test"),
        "with": recall(fixed, "test"),
        "with_selected": recall(tune(best)[0], "test"),
        "selected": best,
        "valid_without": recall(index, "valid"),
        "train_without": recall(index, "train"),
        "train_with": recall(fixed, "train"),
        "valid_selected": best_valid,
        "train_s": train_s,
        "train_pairs": len(task["train"][1]),
        "test_pairs": len(positives),
    }


def compare_methods(
    items: np.ndarray, queries: np.ndarray, args: argparse.Namespace, shortlists: list[int]
) -> list[dict]:
    """Exact, HNSW, tier 1 alone and two-tier per shortlist on ``items (n, d)``, each built
    and measured in child processes; ground truth the exact top ``K``."""
    import faiss

    exact = faiss.IndexFlatIP(items.shape[1])
    exact.add(items)
    truth = exact.search(queries, K)[1]
    del exact
    rows = []
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
        data = Path(tmp)
        for name, array in (("items", items), ("queries", queries), ("truth", truth)):
            np.save(data / f"{name}.npy", array)
        plan = [("exact", 0), ("hnsw", 0), ("ivfpq", 0)] + [("two_tier", n) for n in shortlists]
        for method, n in plan:
            t0 = time.perf_counter()
            built = _run_child("build", method, data, args, n)
            rows.append({**_run_child("measure", method, data, args, n), **built})
            print(
                f"# {method}{f' N={n}' if n else ''}: {time.perf_counter() - t0:.0f} s", flush=True
            )
    return rows


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
    p.add_argument("--sim-users", type=int, default=2000, help="simulated world's users")
    p.add_argument("--sim-days", type=int, default=21)
    p.add_argument("--sim-epochs", type=int, default=2, help="two-tower training epochs")
    p.add_argument("--sim-shortlist", type=int, default=200, help="two-tier N on the catalogue")
    p.add_argument(
        "--sections",
        default="synthetic,progressive,simulated",
        help="comma-separated subset of synthetic,progressive,simulated",
    )
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
        args.sim_users, args.sim_days = 300, 10
    sections = set(args.sections.split(","))
    out = output_path("retrieval", args.quick, args.out)
    print(f"# host: {describe_host()}")
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    result: dict = {
        "command": command_line("retrieval.py", argv),
        "host": describe_host(),
        "python": platform.python_version(),
        "k": K,
        "threads": args.threads,
        "seed": args.seed,
    }
    if "synthetic" in sections:
        shortlists = [int(s) for s in args.shortlists.split(",")]
        print(f"# {args.items} x {args.dim} clustered unit vectors, {args.queries} queries")
        print(f"# seed {args.seed}, faiss threads {args.threads}, k {K}, shortlists {shortlists}")
        items, queries = make_data(args.items, args.queries, args.dim, args.seed)
        rows = compare_methods(items, queries, args, shortlists)
        del items
        _print_table(rows)
        result.update(
            {"items": args.items, "dim": args.dim, "queries": args.queries, "results": rows}
        )
    if "progressive" in sections:
        result["progressive"] = _synthetic_progressive(args)
    if "simulated" in sections:
        result["simulated"] = _simulated(args)
    write_result(out, result)


def _synthetic_progressive(args: argparse.Namespace) -> dict:
    progressive = [
        progressive_task(seed, args.prog_items, args.prog_users, 32) for seed in (0, 1, 2)
    ]
    gains = [r["with"] - r["without"] for r in progressive]
    print(f"# progressive optimisation, synthetic next-item task ({args.prog_items} x 32 items):")
    print(f"{'seed':>4}{'R@50 without':>14}{'R@50 with':>11}{'train s':>9}")
    for r in progressive:
        print(f"{r['seed']:>4}{r['without']:>14.3f}{r['with']:>11.3f}{r['train_s']:>9.1f}")
    print(f"# gain {np.mean(gains):+.3f} +- {np.std(gains):.3f} (mean +- std over 3 seeds)")
    return {
        "task": "synthetic next item: hidden-direction best of the 200 nearest",
        "items": args.prog_items,
        "users": args.prog_users,
        "runs": progressive,
        "gain_mean": float(np.mean(gains)),
        "gain_std": float(np.std(gains)),
    }


def _simulated(args: argparse.Namespace) -> dict:
    """Train two-towers on the simulated world (seeds 0-2), then progressive optimisation with
    vs without on its next-item task, and the methods compared on seed 0's catalogue."""
    seeds = [0, 1, 2]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrieval-sim-") as tmp:
        run_dir, bundles = train_simulated(
            Path(tmp), seeds, args.sim_users, args.sim_days, args.sim_epochs
        )
        pipeline_s = time.perf_counter() - t0
        tasks = {seed: simulated_task(run_dir, bundles[seed]) for seed in seeds}
    runs = [simulated_progressive(tasks[s], s, args.sim_shortlist) for s in seeds]
    gains = [r["with"] - r["without"] for r in runs]
    selected = [r["with_selected"] - r["without"] for r in runs]
    n, d = tasks[0]["items"].shape
    print(f"# simulated world ({args.sim_users} users, {args.sim_days} days): {n} x {d} items,")
    print(f"# two-tower {args.sim_epochs} epochs per seed; pipeline {pipeline_s:.0f} s")
    print(f"# test-split clicks, recall@{SIM_K}; two-tier N = {args.sim_shortlist}")
    print(
        f"{'seed':>4}{'exact':>8}{'without':>9}{'with':>8}{'with (valid-selected)':>23}"
        f"{'train s':>9}{'pairs':>8}"
    )
    for r in runs:
        print(
            f"{r['seed']:>4}{r['exact']:>8.3f}{r['without']:>9.3f}{r['with']:>8.3f}"
            f"{r['with_selected']:>23.3f}{r['train_s']:>9.1f}{r['train_pairs']:>8}"
        )
        print(
            f"#   seed {r['seed']}: selected on valid {r['selected']}; train-split recall "
            f"{r['train_without']:.3f} without, {r['train_with']:.3f} with (fixed)"
        )
    print(f"# gain, fixed settings: {np.mean(gains):+.3f} +- {np.std(gains):.3f} (mean +- std)")
    print(f"# gain, valid-selected: {np.mean(selected):+.3f} +- {np.std(selected):.3f}")
    users = tasks[0]["test"][0]
    queries = users[np.random.default_rng(args.seed).permutation(len(users))[: args.queries]]
    print(f"# trained catalogue (seed 0): {n} x {d}, {len(queries)} test-split user queries")
    rows = compare_methods(
        tasks[0]["items"], np.ascontiguousarray(queries), args, [args.sim_shortlist]
    )
    _print_table(rows)
    return {
        "world": {
            "users": args.sim_users,
            "days": args.sim_days,
            "config": "configs/simulated.yaml",
        },
        "model": {"kind": "two_tower", "epochs": args.sim_epochs, "seeds": seeds},
        "items": n,
        "dim": d,
        "pipeline_s": pipeline_s,
        "progressive": {
            "task": f"test-split clicks: clicked item in the top {SIM_K}",
            "shortlist": args.sim_shortlist,
            "config": SIM_PROGRESSIVE,
            "grid": SIM_GRID,
            "runs": runs,
            "gain_mean": float(np.mean(gains)),
            "gain_std": float(np.std(gains)),
            "selected_gain_mean": float(np.mean(selected)),
            "selected_gain_std": float(np.std(selected)),
        },
        "catalogue": {"queries": len(queries), "results": rows},
    }


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
