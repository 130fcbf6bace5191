"""Run under ``torchrun --nproc_per_node=N`` by test_distributed.py (not a test module itself).

1. For table-wise and column-wise sharding: the same seeded model, unsharded on every rank
   and wrapped in ``DistributedModelParallel``, scores this rank's 32 validation rows; the
   largest difference goes to ``forward.json``.
2. ``train()`` runs the ranker and the two-tower model exactly as a single process would,
   and a column-wise ranker run once straight through and once interrupted at step 7 and
   resumed; rank 0 writes the loss curves and metrics to ``result.json``.
3. Sharded checkpoints across world sizes: a table-wise run stops at step 7 in ``ws2to1``
   (the test resumes it in one process), and the single-process run the test stopped at
   step 7 in ``ws1to2`` is resumed here on 2 ranks.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recsys.config import parse_config
from recsys.features.batcher import table_to_batch
from recsys.training import train
from recsys.training.distributed import init_distributed, shard
from recsys.training.model_factory import build_model, read_spec, seed_everything


def config(kind: str = "ranker", dim: int = 8, **train_kw: object):
    return parse_config(
        {
            "name": "dist",
            "source": {"kind": "simulator"},
            "embedding": {"dim": dim, "num_tables": 2},
            "model": {"kind": kind, "mlp": [32, 16], "cross_layers": 2},
            # 1600 train rows = 10 steps of 160 (80 per rank with 2 ranks): no partial batch
            "train": {"batch_size": 160, "epochs": 2, "progress": False, **train_kw},
        }
    )


def main(examples_dir: Path, out_dir: Path) -> None:
    env = init_distributed()
    spec = read_spec(examples_dir)
    rows = pq.read_table(examples_dir / "split=valid").slice(32 * env.rank, 32)
    batch = table_to_batch(rows, spec)
    diffs = {}
    # 64-wide tables so that column-wise sharding really splits columns across the ranks
    for sharding, dim in (("table_wise", 8), ("column_wise", 64)):
        seed_everything(0)
        model = build_model(config(dim=dim), spec)
        reference = copy.deepcopy(model).eval()
        dmp = shard(model, env, embedding_lr=0.05, sharding=sharding).eval()
        with torch.no_grad():
            got = dmp(batch.sparse, batch.dense).logits
            want = reference(batch.sparse, batch.dense).logits
        diff = torch.tensor([(got - want).abs().max().item()])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        diffs[sharding] = diff.item()
        diffs[f"{sharding}_plan"] = str(dmp.plan)
    if env.is_main:
        (out_dir / "forward.json").write_text(json.dumps(diffs))
    results = {}
    for kind in ("ranker", "two_tower"):
        r = train(config(kind), examples_dir, out_dir / kind, resume=False)
        results[kind] = {"losses": r.losses, "metrics": r.metrics, "world": env.world_size}
    # column-wise shards, interrupted inside epoch 0 and resumed from the per-rank files
    train(config(sharding="column_wise", max_steps=7), examples_dir, out_dir / "cw_resumed")
    r = train(config(sharding="column_wise"), examples_dir, out_dir / "cw_resumed")
    results["cw_resumed"] = {"losses": r.losses, "metrics": r.metrics}
    r = train(config(sharding="column_wise"), examples_dir, out_dir / "cw", resume=False)
    results["cw"] = {"losses": r.losses, "metrics": r.metrics}
    train(config(max_steps=7), examples_dir, out_dir / "ws2to1")
    r = train(config(), examples_dir, out_dir / "ws1to2")
    results["ws1to2"] = {"losses": r.losses, "metrics": r.metrics}
    if env.is_main:
        (out_dir / "result.json").write_text(json.dumps(results))
    env.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
