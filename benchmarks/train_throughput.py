"""Training throughput and peak memory: unified vs collisionless tables, same DCN-v2 ranker.

Every measurement is one fresh child process running the real training path
(``recsys.training.train``: ``ExampleBatcher`` with its prefetch thread, id remapping inside
the embedding module, ``DistributedModelParallel`` with FBGEMM's fused row-wise Adagrad, AdamW
on the dense part) for a few epochs; the child reports the last epoch's examples/s (the
trainer's own timer: training steps only, no validation) and its peak RSS. Kinds are
interleaved within every repetition (order alternating), so machine noise hits all alike;
the table shows medians and the ratio to collisionless.

    .venv/bin/python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
    .venv/bin/python benchmarks/train_throughput.py --profile --out /tmp/profile.json
    .venv/bin/python benchmarks/train_throughput.py --quick   # 1 rep: collisionless vs 2x8@1/4
    .venv/bin/python benchmarks/train_throughput.py --pipeline \
        --out benchmarks/results/train_pipeline.json             # train() vs its own step

``--pipeline`` measures the input pipeline instead of the tables: ``train()`` (examples/s over
all its epochs, the trainer's own timer: first-batch waits included, validation excluded) vs
the same model's training step (``training_loss``, backward, both optimizers) over batches
built beforehand and held in a list, each in its own child, interleaved, ``--reps`` times
(default 3); the bar is ``train() >= 0.95x`` its own step. Memory: each child's peak RSS and
the featurised training split ``train()`` kept in memory (``train.in_memory_mb``).

Examples come from ``runs/<dataset>/examples`` (built by the pipeline when missing). A full run
without ``--out`` refuses to replace ``benchmarks/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from host import describe_host
from result_file import command_line, ensure_examples, output_path, shown, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"movielens": "configs/movielens.yaml", "simulated": "configs/simulated.yaml"}
# name -> (embedding.kind, budget_fraction, chunk dim, probes per feature); every kind feeds
# the ranker 16 columns per feature, so only the tables differ.
KINDS: dict[str, tuple[str, float | None, int, int]] = {
    "collisionless": ("collisionless", None, 16, 1),
    "unified 1x16@1": ("unified", 1.0, 16, 1),
    "unified 1x16@1/4": ("unified", 0.25, 16, 1),
    "unified 2x8@1/4": ("unified", 0.25, 8, 2),
    "unified 4x4@1/4": ("unified", 0.25, 4, 4),
}
# --quick: the configs' default tables against collisionless, one repetition (about a minute).
QUICK_KINDS = "collisionless,unified 2x8@1/4"


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_config(dataset: str, kind: str, epochs: int, threads: int, batch_size: int | None):
    from recsys.config import load_config

    base = load_config(ROOT / CONFIGS[dataset])
    emb_kind, fraction, dim, probes = KINDS[kind]
    train_update: dict[str, Any] = {
        "epochs": epochs,
        "patience": epochs + 1,
        "progress": False,
        "num_threads": threads,
    }
    if batch_size:
        train_update["batch_size"] = batch_size
    return base.model_copy(
        update={
            "embedding": base.embedding.model_copy(
                update={
                    "kind": emb_kind,
                    "budget_fraction": fraction,
                    "dim": dim,
                    "default_probes": probes,
                    "probes": {},
                }
            ),
            "train": base.train.model_copy(update=train_update),
        }
    )


def child(args: argparse.Namespace) -> int:
    """One measurement: train, print one JSON line."""
    import torch

    from recsys.training import train
    from recsys.training.model_factory import build_model, read_spec

    torch.set_num_threads(args.threads)
    cfg = child_config(args.dataset, args.kind, args.epochs, args.threads, args.batch_size)
    exdir = ROOT / cfg.out / "examples"
    base_rss = rss_mib()
    prof = cProfile.Profile() if args.profile_out else None
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        result = train(cfg, exdir, tmp, resume=False)
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
    params = build_model(cfg, read_spec(exdir), exdir).embedding.num_embedding_parameters()
    out = {
        "kind": args.kind,
        "examples_per_s": result.metrics[-1]["examples_per_s"],
        "examples_per_s_epochs": [m["examples_per_s"] for m in result.metrics],
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_imports_mib": base_rss,
        "embedding_params": params,
        "wall_s": wall,
    }
    if prof:
        prof.dump_stats(args.profile_out)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def prebuilt_child(args: argparse.Namespace) -> dict:
    """The trainer's step over pre-built batches: every batch of the training split featurised
    first (not timed), then ``epochs`` passes over the list (timed)."""
    import torch

    from recsys.features.batcher import ExampleBatcher
    from recsys.training.distributed import all_sum, dense_parameters, init_distributed, shard
    from recsys.training.model_factory import build_model, read_spec, seed_everything
    from recsys.training.trainer import training_loss

    cfg = child_config(args.dataset, args.kind, args.epochs, args.threads, args.batch_size)
    exdir = ROOT / cfg.out / "examples"
    spec = read_spec(exdir)
    env = init_distributed()
    try:
        seed_everything(cfg.train.seed)
        inner = build_model(cfg, spec, exdir)
        model = shard(inner, env, embedding_lr=cfg.train.lr_embedding, sharding=cfg.train.sharding)
        bare = model.module
        opt = torch.optim.AdamW(
            dense_parameters(model), lr=cfg.train.lr_dense, weight_decay=cfg.train.weight_decay
        )
        batcher = ExampleBatcher(
            exdir, "train", spec, cfg.train.batch_size, shuffle=True, seed=0, prefetch=0
        )
        batches = list(batcher)
        model.train()
        seen, t0 = 0, time.perf_counter()
        for _ in range(args.epochs):
            for b in batches:
                loss = training_loss(model, bare, b, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _, rows = all_sum([float(loss.detach()), float(len(b.labels))], env)
                seen += int(rows)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return {"examples_per_s": seen / seconds, "examples": seen, "seconds": seconds}


def pipeline_child(args: argparse.Namespace) -> int:
    """One pipeline measurement (``--mode train`` or ``prebuilt``): print one JSON line."""
    import torch

    from recsys.training import train

    torch.set_num_threads(args.threads)
    base_rss = rss_mib()
    if args.mode == "prebuilt":
        out = prebuilt_child(args)
    else:
        cfg = child_config(args.dataset, args.kind, args.epochs, args.threads, args.batch_size)
        with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
            result = train(cfg, ROOT / cfg.out / "examples", tmp, resume=False)
        examples = sum(m["train_examples"] for m in result.metrics)
        seconds = sum(m["train_examples"] / m["examples_per_s"] for m in result.metrics)
        out = {
            "examples_per_s": examples / seconds,
            "examples_per_s_epochs": [m["examples_per_s"] for m in result.metrics],
            "examples": examples,
            "seconds": seconds,
            "train_memory_mib": result.train_memory_bytes / 2**20,
        }
    out.update(mode=args.mode, peak_rss_mib=peak_rss_mib(), rss_after_imports_mib=base_rss)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def pipeline_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--pipeline``: train() vs its own step on pre-built batches, interleaved children."""
    from recsys.config import load_config

    reps = args.reps or 3
    kind = args.kinds or "unified 2x8@1/4"
    out = output_path("train_pipeline", args.quick, args.out)
    base = load_config(ROOT / CONFIGS[args.dataset])
    exdir = ensure_examples(ROOT / CONFIGS[args.dataset], {}, ROOT / base.out / "examples")
    manifest = json.loads((exdir / "manifest.json").read_text())
    print(f"# machine: {describe_host()}; {args.threads} torch thread(s) per child")
    print(
        f"# data: {args.dataset} train split, {manifest['counts']['train']:,} rows; tables "
        f"{kind}; {args.epochs} epochs per child; {reps} repetitions, modes interleaved; "
        f"train.in_memory_mb {base.train.in_memory_mb}"
    )
    sys.stdout.flush()
    samples: dict[str, list[dict]] = {"train": [], "prebuilt": []}
    for rep in range(reps):
        for mode in ("train", "prebuilt") if rep % 2 == 0 else ("prebuilt", "train"):
            cmd = [
                sys.executable, __file__, "--pipeline-child", "--mode", mode, "--kind", kind,
                "--dataset", args.dataset, "--epochs", str(args.epochs),
                "--threads", str(args.threads),
            ]  # fmt: skip
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-3000:]}")
            samples[mode].append(json.loads(lines[-1][len("RESULT ") :]))
            print(f"#   rep {rep}: {mode} {samples[mode][-1]['examples_per_s']:,.0f} ex/s")
    med = {m: float(np.median([s["examples_per_s"] for s in v])) for m, v in samples.items()}
    ratio = med["train"] / med["prebuilt"]
    summary = {
        "train_examples_per_s_median": med["train"],
        "prebuilt_step_examples_per_s_median": med["prebuilt"],
        "train_over_prebuilt": ratio,
        "meets_0_95": ratio >= 0.95,
        "train_memory_mib": samples["train"][0]["train_memory_mib"],
        "peak_rss_mib_median": {
            m: float(np.median([s["peak_rss_mib"] for s in v])) for m, v in samples.items()
        },
    }
    print()
    print("| measured | examples/s (median) | min–max | peak RSS MiB |")
    print("|---|---:|---|---:|")
    for m, label in (("train", "train()"), ("prebuilt", "its step on pre-built batches")):
        eps = [s["examples_per_s"] for s in samples[m]]
        print(
            f"| {label} | {med[m]:,.0f} | {min(eps):,.0f}–{max(eps):,.0f} "
            f"| {summary['peak_rss_mib_median'][m]:.0f} |"
        )
    print(
        f"\ntrain() / pre-built step: {ratio:.3f} (bar 0.95); featurised split in memory: "
        f"{summary['train_memory_mib']:.1f} MiB"
    )
    payload = {
        "setup": {
            "machine": describe_host(),
            "dataset": args.dataset,
            "examples": shown(exdir),
            "train_rows": manifest["counts"]["train"],
            "tables": kind,
            "epochs": args.epochs,
            "reps": reps,
            "threads": args.threads,
            "in_memory_mb": base.train.in_memory_mb,
        },
        "summary": summary,
        "samples": samples,
        "command": command_line("train_throughput.py", argv),
    }
    write_result(out, payload)
    return 0


def run_child(args: argparse.Namespace, kind: str, profile_out: str | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--kind",
        kind,
        "--dataset",
        args.dataset,
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
    ]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if profile_out:
        cmd += ["--profile-out", profile_out]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {kind} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# -- profile -------------------------------------------------------------------------------


def phase_profile(dataset: str, kind: str, threads: int, steps: int = 40) -> dict[str, float]:
    """Milliseconds per batch of each stage of one training step, measured in isolation:
    featurisation (Parquet -> hashed KJT), id remapping, and the DMP step split by
    ``torch.profiler`` into embedding lookup (fwd+bwd, fused optimizer included), the rest of
    forward/backward, and the dense optimizer."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from recsys.features.batcher import ExampleBatcher
    from recsys.training.distributed import dense_parameters, init_distributed, shard
    from recsys.training.model_factory import build_model, read_spec
    from recsys.training.trainer import training_loss

    torch.set_num_threads(threads)
    cfg = child_config(dataset, kind, 1, threads, None)
    exdir = ROOT / cfg.out / "examples"
    spec = read_spec(exdir)
    env = init_distributed()
    try:
        torch.manual_seed(0)
        inner = build_model(cfg, spec, exdir)
        model = shard(inner, env, embedding_lr=cfg.train.lr_embedding)
        bare = model.module
        opt = torch.optim.AdamW(dense_parameters(model), lr=cfg.train.lr_dense)
        batcher = ExampleBatcher(exdir, "train", spec, cfg.train.batch_size, prefetch=0)
        t = time.perf_counter()
        batches = []
        for b in batcher:
            batches.append(b)
            if len(batches) == steps + 5:
                break
        featurise = (time.perf_counter() - t) / len(batches) * 1e3
        emb = inner.embedding
        t = time.perf_counter()
        for b in batches:
            emb.remap(b.sparse)
        remap = (time.perf_counter() - t) / len(batches) * 1e3

        def step(b: Any) -> None:
            loss = training_loss(model, bare, b, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for b in batches[:5]:
            step(b)
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[5:]:
                step(b)
        total = (time.perf_counter() - t) / steps * 1e3
        ev = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
        lookup = sum(v for k, v in ev.items() if "fbgemm" in k or "embedding" in k.lower())
        optim = sum(v for k, v in ev.items() if "Optimizer" in k or "adamw" in k.lower())
        top = sorted(ev.items(), key=lambda kv: -kv[1])[:8]
    finally:
        env.close()
    return {
        "featurise_ms": featurise,
        "remap_ms": remap,
        "step_ms": total,
        "ebc_lookup_and_fused_update_ms": lookup,
        "dense_optimizer_ms": optim,
        "top_ops_ms": {k: round(v, 3) for k, v in top},
    }


def cprofile_summary(path: str, n: int = 18) -> str:
    s = io.StringIO()
    pstats.Stats(path, stream=s).sort_stats("tottime").print_stats(n)
    return s.getvalue()


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="movielens", choices=sorted(CONFIGS))
    p.add_argument("--kinds", default=None, help=f"comma-separated, of {','.join(KINDS)} (all)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (5; --quick: 1)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_KINDS}, 1 repetition")
    p.add_argument("--epochs", type=int, default=2, help="epochs per child; last one is timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--profile", action="store_true", help="also print where the time goes")
    p.add_argument("--out", default=None, help="JSON path (default: results/train_throughput.json)")
    p.add_argument("--pipeline", action="store_true", help="train() vs its own step")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pipeline-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("train", "prebuilt"), help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.pipeline_child:
        return pipeline_child(args)
    if args.pipeline:
        return pipeline_main(args, argv)

    from tqdm import tqdm

    kinds = (args.kinds or (QUICK_KINDS if args.quick else ",".join(KINDS))).split(",")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; known: {list(KINDS)}")
    args.reps = args.reps or (1 if args.quick else 5)
    out = output_path("train_throughput", args.quick, args.out)
    from recsys.config import load_config

    base = load_config(ROOT / CONFIGS[args.dataset])
    exdir = ensure_examples(ROOT / CONFIGS[args.dataset], {}, ROOT / base.out / "examples")
    manifest = json.loads((exdir / "manifest.json").read_text())
    print(f"# machine: {describe_host()}; {args.threads} torch thread(s) per child")
    print(
        f"# data: {args.dataset} train split, {manifest['counts']['train']:,} rows; "
        f"{args.epochs} epochs per child, last epoch timed (trainer's examples/s); "
        f"{args.reps} repetitions, kinds interleaved (order alternates)"
    )
    print("# model: configs DCN-v2 ranker; fused row-wise Adagrad (DMP, CPU) + AdamW")
    sys.stdout.flush()
    samples: dict[str, list[dict]] = {k: [] for k in kinds}
    bar = tqdm(total=args.reps * len(kinds), desc="children", unit="run", file=sys.stderr)
    for rep in range(args.reps):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        for k in order:
            samples[k].append(run_child(args, k))
            bar.update(1)
    bar.close()

    rows = []
    ref = samples.get("collisionless")
    ref_eps = np.median([s["examples_per_s"] for s in ref]) if ref else float("nan")
    ref_rss = np.median([s["peak_rss_mib"] for s in ref]) if ref else float("nan")
    for k in kinds:
        eps = np.array([s["examples_per_s"] for s in samples[k]])
        rss = np.array([s["peak_rss_mib"] for s in samples[k]])
        base = np.array([s["rss_after_imports_mib"] for s in samples[k]])
        rows.append(
            {
                "kind": k,
                "embedding_params": samples[k][0]["embedding_params"],
                "examples_per_s_median": float(np.median(eps)),
                "examples_per_s_min": float(eps.min()),
                "examples_per_s_max": float(eps.max()),
                "ratio_vs_collisionless": float(np.median(eps) / ref_eps),
                "peak_rss_mib_median": float(np.median(rss)),
                "peak_rss_above_imports_mib_median": float(np.median(rss - base)),
                "rss_ratio_vs_collisionless": float(np.median(rss) / ref_rss),
            }
        )
    print()
    print(
        "| tables | emb. params | examples/s (median) | min–max | × collisionless "
        "| peak RSS MiB | above imports | × collisionless |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['embedding_params']:,} | {r['examples_per_s_median']:,.0f} "
            f"| {r['examples_per_s_min']:,.0f}–{r['examples_per_s_max']:,.0f} "
            f"| {r['ratio_vs_collisionless']:.2f} | {r['peak_rss_mib_median']:.0f} "
            f"| {r['peak_rss_above_imports_mib_median']:.0f} "
            f"| {r['rss_ratio_vs_collisionless']:.2f} |"
        )
    payload: dict[str, Any] = {
        "setup": {
            "machine": describe_host(),
            "dataset": args.dataset,
            "examples": shown(exdir),
            "train_rows": manifest["counts"]["train"],
            "epochs": args.epochs,
            "reps": args.reps,
            "threads": args.threads,
        },
        "summary": rows,
        "samples": samples,
        "command": command_line("train_throughput.py", argv),
    }
    if args.profile:
        payload["profile"] = {}
        print("\n# phase profile (ms per batch of", manifest and "1024 rows)")
        print("| tables | featurise | remap | DMP step | EBC lookup+fused update | AdamW |")
        print("|---|---:|---:|---:|---:|---:|")
        for k in kinds:
            ph = phase_profile(args.dataset, k, args.threads)
            payload["profile"][k] = ph
            print(
                f"| {k} | {ph['featurise_ms']:.2f} | {ph['remap_ms']:.2f} | {ph['step_ms']:.2f} "
                f"| {ph['ebc_lookup_and_fused_update_ms']:.2f} | {ph['dense_optimizer_ms']:.2f} |"
            )
            print(f"#   top ops: {ph['top_ops_ms']}")
        with tempfile.TemporaryDirectory() as tmp:
            for k in kinds[:2]:
                path = str(Path(tmp) / (re.sub(r"[^A-Za-z0-9]+", "_", k) + ".prof"))
                run_child(args, k, profile_out=path)
                text = cprofile_summary(path)
                payload["profile"][f"cprofile_{k}"] = text
                print(f"\n# cProfile of one training child ({k}), main thread, by own time")
                print(text)
    write_result(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
