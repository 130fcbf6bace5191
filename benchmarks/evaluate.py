"""Offline metrics vs simulated long-term value: does offline AUC order policies like LT7 does?

One simulated world (``configs/simulated.yaml`` resized, no media) goes through the real
pipeline (``recsys pipeline --stages source,prepare``: simulator logs -> Spark -> examples); a
DCN-v2 ranker with an LT head is trained on them and exported. ``recsys.evaluation`` then

1. scores the test split (AUC, GAUC, log loss, NE, calibration with user-bootstrap 95 % CIs,
   slices, LT head), and
2. runs the simulated A/B: the world's users split at random into five arms (logging policy =
   control, random, popularity, oracle, the ranker bundle), one simulation for ``--ab-days``
   days with one seed; per arm LT7 and its lift over the logging policy with bootstrap CIs, and
   every policy's offline AUC/GAUC on the same test rows.

Prints the setup, the offline metrics, the table of policies and the rank correlation of the
offline-AUC and LT7 orderings; writes JSON (and the report directory beside the run).

    .venv/bin/python benchmarks/evaluate.py --quick      # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/evaluate.py --out benchmarks/results/evaluate.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from host import describe_host
from result_file import command_line, ensure_examples, output_path, shown, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import load_config  # noqa: E402
from recsys.evaluation.evaluate import console_table, evaluate_bundle  # noqa: E402
from recsys.training import export, train  # noqa: E402

CONFIG = ROOT / "configs" / "simulated.yaml"
# Test split from ``test_day`` to the end of the logs: its first ``days - 6 - test_day`` days
# have a complete 7-day LT window (later ones are right-censored and left out of LT metrics).
SIZES = {
    True: {
        "num_users": 2000,
        "num_items": 400,
        "days": 16,
        "test_day": 7,
        "epochs": 2,
        "ab_days": 7,
        "reps": 100,
    },
    False: {
        "num_users": 6000,
        "num_items": 1000,
        "days": 21,
        "test_day": 11,
        "epochs": 3,
        "ab_days": 14,
        "reps": 200,
    },
}


def sets_for(quick: bool) -> dict[str, Any]:
    size = SIZES[quick]
    start = date(2024, 1, 1)  # SimulatorConfig.start_date
    return {
        "prepare.split.valid_from": str(start + timedelta(days=size["test_day"] - 1)),
        "prepare.split.test_from": str(start + timedelta(days=size["test_day"])),
        "output_dir": f"runs/evaluate_bench{'_quick' if quick else ''}",
        "simulator.num_users": size["num_users"],
        "simulator.num_items": size["num_items"],
        "simulator.days": size["days"],
        "simulator.with_media": False,
        "spark.master": "local[2]",
        "spark.shuffle_partitions": 4,
        "train.epochs": size["epochs"],
        "train.progress": False,
    }


def print_policies(ab: dict[str, Any]) -> None:
    print(f"\n# simulated A/B, {ab['days']} days, control = {ab['control']}")
    print(
        f"{'policy':<11} {'users':>5} {'AUC':>7} {'GAUC':>7} {'LT7':>6} {'lift':>7}  95% CI"
        f"{'':>9}{'vs random':>10}  95% CI"
    )
    for a in ab["arms"]:
        lo, hi = a["lift_ci"]
        vs = a.get("lift_vs_random", 0.0)
        vlo, vhi = a.get("lift_vs_random_ci", [0.0, 0.0])
        print(
            f"{a['policy']:<11} {a['users']:>5} {a.get('auc', float('nan')):>7.4f} "
            f"{a.get('gauc', float('nan')):>7.4f} {a['lt7']:>6.3f} {a['lift']:>+7.3f}  "
            f"[{lo:+.3f}, {hi:+.3f}] {vs:>+9.3f}  [{vlo:+.3f}, {vhi:+.3f}]"
        )
    o = ab["offline_vs_lt"]
    print(
        f"offline AUC vs LT7 ordering over {len(o['policies'])} policies: "
        f"Spearman {o['spearman']:+.3f}, Kendall {o['kendall']:+.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small world, short A/B (< 5 min)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/evaluate[_quick].json)")
    args = p.parse_args(argv)
    out_path = output_path("evaluate", args.quick, args.out)
    size, sets = SIZES[args.quick], sets_for(args.quick)
    cfg = load_config(CONFIG, sets)
    print(f"# host: {describe_host()}")
    print(
        f"# world: {size['num_users']} users, {size['num_items']} items, {size['days']} days, "
        f"test split from day {size['test_day']} "
        f"(seed {cfg.simulator.seed}); ranker {cfg.train.epochs} epochs; A/B {size['ab_days']} "
        f"days, 5 arms; bootstrap {size['reps']} replicates over users"
    )
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    run_dir = ROOT / cfg.out
    examples = ensure_examples(CONFIG, sets, run_dir / "examples")
    t_examples = time.perf_counter() - t0
    t1 = time.perf_counter()
    train(cfg, examples, run_dir / "bench_checkpoints", resume=False)
    bundle = export(cfg, run_dir / "bench_checkpoints", run_dir / "bench_bundles")
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = evaluate_bundle(
        cfg,
        bundle,
        examples,
        run_dir / "evaluation",
        replicates=size["reps"],
        ab_days=size["ab_days"],
        progress=False,
    )
    t_eval = time.perf_counter() - t2
    print(console_table(result))
    print_policies(result["ab"])
    arms = {a["policy"]: a for a in result["ab"]["arms"]}
    checks = {
        "oracle_beats_logging": arms["oracle"]["lift_ci"][0] > 0,
        "oracle_beats_random": arms["oracle"]["lift_vs_random_ci"][0] > 0,
        "bundle_between_random_and_oracle": arms["random"]["lt7"]
        <= arms["bundle"]["lt7"]
        <= arms["oracle"]["lt7"],
    }
    print(f"checks: {checks}")
    payload = {
        "setup": {
            "host": describe_host(),
            "config": shown(CONFIG),
            "sets": sets,
            "sizes": size,
            "examples_dir": shown(examples),
        },
        "seconds": {
            "examples": round(t_examples, 1),
            "train_export": round(t_train, 1),
            "evaluate": round(t_eval, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "overall": result["overall"],
        "lt": result["lt"],
        "slices": result["slices"],
        "ab": result["ab"],
        "checks": checks,
        "report": shown(Path(result["report"])),
        "command": command_line("evaluate.py", argv),
    }
    write_result(out_path, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
