"""Peak memory per process of checkpointing and validation metrics, gathered vs sharded.

A world of ``--ranks`` gloo processes (``torchrun`` on this machine: the simulated cluster)
holds one DCN-v2 ranker whose unified embedding tables (``--params`` float32 parameters over
``--tables`` tables) are sharded table-wise by ``DistributedModelParallel``. Each process
measures, with a thread sampling its RSS every 2 ms, how far above its RSS at the start of a
phase its peak went, and its peak RSS overall. Each of the four phases runs in a fresh world
(freed memory kept by the allocator would hide the next phase's growth):

- ``save: gather to rank 0``: the previous checkpoint, which gathered every table whole onto
  rank 0 and wrote one file there;
- ``save: sharded (DCP)``: ``recsys.training.checkpoint.save_checkpoint``, where every rank
  writes only its own shards;
- ``metrics: gather predictions``: the previous validation, which gathered every rank's
  predictions and labels to every rank and scored them with scikit-learn;
- ``metrics: streaming``: ``recsys.evaluation.BinaryMetrics``, per-rank histograms and sums
  reduced over ranks.

Each rank scores ``--rows`` validation rows (synthetic probabilities, in batches of 4,096).

    .venv/bin/python benchmarks/train_memory.py --out benchmarks/results/train_memory.json
    .venv/bin/python benchmarks/train_memory.py --quick   # 2 ranks, small tables, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from host import describe_host
from result_file import command_line, output_path, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 4096
PHASES = (
    "save: gather to rank 0",
    "save: sharded (DCP)",
    "metrics: gather predictions",
    "metrics: streaming",
)


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_above_start(work: Callable[[], None]) -> float:
    """How many MiB above its RSS at the start ``work`` drove this process's RSS."""
    start, peak, done = rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        work()
    finally:
        done.set()
        thread.join()
    return max(peak[0], rss_mib()) - start


# -- the worker (one per rank) -------------------------------------------------------------


def _model(params: int, tables: int, env: Any) -> Any:
    from recsys.config import parse_config
    from recsys.features.spec import FeatureSpec
    from recsys.training.distributed import shard
    from recsys.training.model_factory import build_model, seed_everything

    cfg = parse_config(
        {
            "name": "train-memory",
            "source": {"kind": "simulator"},
            "embedding": {"kind": "unified", "dim": 16, "param_budget": params,
                          "num_tables": tables},
            "model": {"kind": "ranker", "mlp": [64, 32], "cross_layers": 2},
        }
    )  # fmt: skip
    features = [f"s_f{i}" for i in range(tables)]
    stats = {f: {"distinct": 10 * params} for f in features}  # more ids than table rows
    spec = FeatureSpec.from_manifest(
        {"features": {"sparse": features, "dense": [], "user": features[:1],
                      "item": features[1:], "stats": stats}}
    )  # fmt: skip
    seed_everything(0)
    return cfg, spec, shard(build_model(cfg, spec), env, embedding_lr=0.05)


def _batches(rows: int, rank: int) -> Iterator[tuple[Any, Any]]:
    import torch

    rng = np.random.default_rng(rank)
    for lo in range(0, rows, BATCH):
        n = min(BATCH, rows - lo)
        labels = (rng.uniform(size=n) < 0.3).astype(np.float32)
        probs = 1 / (1 + np.exp(-(rng.normal(size=n) + labels)))
        yield torch.from_numpy(probs.astype(np.float32)), torch.from_numpy(labels)


def _gathered_save(model: Any, env: Any, path: Path) -> None:
    """The previous checkpoint: every table gathered whole onto rank 0, one file there."""
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    full: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if env.is_main else None
            value.gather(dst=0, out=out)
            if out is not None:
                full[key] = out
        elif env.is_main:
            full[key] = value.detach().clone()
    if env.is_main:
        torch.save({"model": full}, path)


def _gathered_metrics(rows: int, env: Any) -> None:
    """The previous validation: all predictions gathered to every rank, then scikit-learn."""
    import torch.distributed as dist
    from sklearn.metrics import log_loss, roc_auc_score

    probs, labels = [], []
    for p, y in _batches(rows, env.rank):
        probs.append(p.numpy())
        labels.append(y.numpy())
    local = {"p": np.concatenate(probs), "y": np.concatenate(labels)}
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, local)
    p = np.concatenate([g["p"] for g in gathered])
    y = np.concatenate([g["y"] for g in gathered])
    roc_auc_score(y, p)
    log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])


def _streaming_metrics(rows: int, env: Any) -> None:
    from recsys.evaluation.metrics import BinaryMetrics

    acc = BinaryMetrics()
    for p, y in _batches(rows, env.rank):
        acc.update(p, y)
    acc.compute(env.device)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from recsys.training.checkpoint import init_dense_optimizer_state, save_checkpoint
    from recsys.training.distributed import dense_parameters, init_distributed
    from recsys.training.fingerprint import run_fingerprint
    from recsys.training.state import TrainingState

    torch.set_num_threads(1)
    env = init_distributed()
    cfg, _, model = _model(args.params, args.tables, env)
    optimizer = torch.optim.AdamW(dense_parameters(model), lr=1e-3)
    init_dense_optimizer_state(optimizer)
    out = Path(args.worker_dir)
    state = TrainingState(
        kind="ranker", metric_name="valid_auc", model_kwargs={},
        fingerprint=run_fingerprint(cfg, out, env.world_size), config={},
    )  # fmt: skip
    phases: dict[str, Callable[[], None]] = {
        PHASES[0]: lambda: _gathered_save(model, env, out / "gathered.pt"),
        PHASES[1]: lambda: save_checkpoint(out, model, optimizer, state, env),
        PHASES[2]: lambda: _gathered_metrics(args.rows, env),
        PHASES[3]: lambda: _streaming_metrics(args.rows, env),
    }
    dist.barrier()
    result: dict[str, Any] = {"rank": env.rank, "rss_before_mib": rss_mib()}
    result["above_start_mib"] = peak_above_start(phases[PHASES[args.phase]])
    result["peak_rss_mib"] = _max_rss_mib()
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, result)
    if env.is_main:
        (out / "ranks.json").write_text(json.dumps(gathered))
    env.close()


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the driver ----------------------------------------------------------------------------


def run_world(args: argparse.Namespace, phase: int) -> list[dict[str, Any]]:
    """One fresh world of ``args.ranks`` processes running ``PHASES[phase]``; per-rank dicts."""
    with tempfile.TemporaryDirectory(prefix="train_memory-") as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={args.ranks}", __file__, "--worker-dir", tmp,
            "--params", str(args.params), "--tables", str(args.tables), "--rows", str(args.rows),
            "--phase", str(phase),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        return json.loads((Path(tmp) / "ranks.json").read_text())


def summary(phase: str, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: growth above the phase's start and peak RSS, rank 0 and the others."""
    growth = [r["above_start_mib"] for r in ranks]
    peak = [r["peak_rss_mib"] for r in ranks]
    return {
        "phase": phase,
        "rank0_above_start_mib": growth[0],
        "other_ranks_above_start_mib": max(growth[1:], default=float("nan")),
        "rank0_peak_rss_mib": peak[0],
        "other_ranks_peak_rss_mib": max(peak[1:], default=float("nan")),
        "ranks": ranks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4, help="processes in the simulated world")
    p.add_argument("--params", type=int, default=1 << 26, help="embedding parameters (float32)")
    p.add_argument("--tables", type=int, default=8, help="embedding tables (sharded table-wise)")
    p.add_argument("--rows", type=int, default=4_000_000, help="validation rows per rank")
    p.add_argument("--quick", action="store_true", help="2 ranks, 2^22 parameters, 200k rows")
    p.add_argument("--out", help="JSON path (default benchmarks/results/train_memory.json)")
    p.add_argument("--worker-dir", help=argparse.SUPPRESS)
    p.add_argument("--phase", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_dir:
        worker(args)
        return 0
    if args.quick:
        args.ranks, args.params, args.tables, args.rows = 2, 1 << 22, 4, 200_000
    path = output_path("train_memory", args.quick, args.out)
    print(f"# {describe_host()}")
    print(
        f"# world: {args.ranks} gloo processes; ranker with {args.params:,} float32 embedding "
        f"parameters ({args.params * 4 / 2**20:,.0f} MiB) in {args.tables} tables, table-wise; "
        f"{args.rows:,} validation rows per rank"
    )
    rows = [summary(phase, run_world(args, i)) for i, phase in enumerate(PHASES)]
    print("# MiB above the phase's start (peak RSS of the process), rank 0 | largest other rank")
    print(f"{'phase':<30} {'rank 0':>16} {'other ranks':>16}")
    for r in rows:
        zero = f"{r['rank0_above_start_mib']:.0f} ({r['rank0_peak_rss_mib']:.0f})"
        other = f"{r['other_ranks_above_start_mib']:.0f} ({r['other_ranks_peak_rss_mib']:.0f})"
        print(f"{r['phase']:<30} {zero:>16} {other:>16}")
    write_result(
        path,
        {
            "command": command_line("train_memory.py", argv),
            "host": describe_host(),
            "setup": {"ranks": args.ranks, "params": args.params, "tables": args.tables,
                      "rows_per_rank": args.rows},
            "phases": rows,
        },
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
