"""Test AUC vs embedding parameters: collisionless vs per-feature hashing vs unified embedding.

For each dataset (examples built by the real pipeline, ``recsys pipeline --stages
source,prepare``) and each seed, trains the same DCN-v2 ranker with the same training settings
(``recsys.training.train``: fused row-wise Adagrad on the tables, AdamW on the rest, the epoch
with the best validation AUC kept) and only the embedding changed:

- ``collisionless``: one row per training value of every feature (+ one OOV row);
- ``hashing`` / ``unified`` at budgets 1, 1/4, 1/16, 1/64 of that collisionless model's
  parameter count (``EmbeddingConfig.param_budget = round(b * count)``, the same for both).

Every other setting (model, dim, probes, init, pooling, optimizers, epochs, ``--set``
overrides) is shared by all methods, except the unified table shape that ``--unified-dim``,
``--unified-probes`` and ``--unified-tables`` set for the unified method only (the paper's
mechanism: a feature of width ``k * d`` takes ``k`` probes of ``d``-dim chunks; ``k * d`` must
equal the shared width, so every method feeds the ranker the same 16 columns per feature).
Datasets (``DATASETS``): ``movielens`` is ``configs/movielens.yaml`` as is; ``simulated`` is
``configs/simulated.yaml`` with hidden collaborative taste turned on (``SIM_WORLD``; its train
split may be subsampled with ``--sim-train-rows``); the ``-categorical`` variants drop the
dense features for every method, as in the paper's DCN-v2 setup. ``--config PATH`` runs one
dataset from any pipeline config instead (named after the config's ``name``), and ``--set``
keys outside ``embedding.*`` / ``train.*`` (``source.path``, ``output_dir``, ...) change the
pipeline config of every dataset. Budgets below 1 also get a ``gain_grows`` verdict: is
unified - hashing larger than at the next larger budget?

The best-validation checkpoint is then scored on the test split (sklearn ``roc_auc_score``).
Prints the setup and a table (mean, std, min-max over seeds), writes JSON and a Pareto plot.

    .venv/bin/python benchmarks/unified_pareto.py --out benchmarks/results/unified_pareto.json
    .venv/bin/python benchmarks/unified_pareto.py --quick    # movielens, 1/4, seed 0
    .venv/bin/python benchmarks/unified_pareto.py --quick --config configs/movielens.yaml \
        --set source.path=/data/ml-1m --set output_dir=/tmp/ml-1m --out /tmp/ml-1m/pareto.json

A full run without ``--out`` refuses to replace ``benchmarks/results/unified_pareto.json``;
``--quick`` writes ``unified_pareto_quick.json`` (``benchmarks/result_file.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from host import describe_host
from result_file import command_line, ensure_examples, output_path, shown, write_result
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import EmbeddingConfig, PipelineConfig, load_config  # noqa: E402
from recsys.embeddings import feature_widths  # noqa: E402
from recsys.features.batcher import ExampleBatcher  # noqa: E402
from recsys.features.vocabulary import build_vocabulary  # noqa: E402
from recsys.training import train  # noqa: E402
from recsys.training.checkpoint import BEST, load_model_weights  # noqa: E402
from recsys.training.model_factory import build_model, read_spec  # noqa: E402

BUDGETS = (1.0, 1 / 4, 1 / 16, 1 / 64)
# In the world of configs/simulated.yaml every click effect is reachable through dense priors
# and small-vocabulary features, so no embedding budget matters (even in a 20,000-user version).
# The benchmark's world (written beside the default one) turns on the hidden collaborative
# taste (``simulator.taste_dim``): a user x item term that no feature shows, learnable only from
# user/item ids and click histories, with ~400 impressions per user so that it can be learned.
SIM_WORLD: dict[str, Any] = {
    "output_dir": "runs/simulated_taste",
    "simulator.num_users": 1_000,
    "simulator.num_items": 500,
    "simulator.days": 14,
    "simulator.with_media": False,
    "simulator.taste_dim": 4,
    "simulator.taste_weight": 2.0,
}

# Shared by every method on the simulated world. From U(±0.05) rows the taste term (a product
# of two id embeddings) sits on a plateau for ~2 epochs at the default row-wise Adagrad lr 0.05,
# long enough for early stopping to end every run before ids are learned; lr 0.2 leaves the
# plateau within the first epoch.
SIM_TRAIN: dict[str, Any] = {"lr_embedding": 0.2, "epochs": 8}


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset: a pipeline config (+ ``--set`` overrides) and what every method
    leaves out of its examples."""

    config: str
    sets: dict[str, Any]
    without_dense: bool = False  # the paper's DCN-v2 setup: categorical features only
    subsample: bool = False  # train split sampled to --sim-train-rows rows
    train: dict[str, Any] = field(default_factory=dict)  # train.* for every method (--set wins)


DATASETS: dict[str, Dataset] = {
    "movielens": Dataset("configs/movielens.yaml", {}),
    # Coleman et al. train DCN-v2 on MovieLens from categorical features alone. Our ranker also
    # reads dense per-user and per-item priors, which carry much of what the id rows would
    # learn; this variant drops them for every method, as in the paper.
    "movielens-categorical": Dataset("configs/movielens.yaml", {}, without_dense=True),
    "simulated": Dataset("configs/simulated.yaml", SIM_WORLD, subsample=True, train=SIM_TRAIN),
    "simulated-categorical": Dataset(
        "configs/simulated.yaml", SIM_WORLD, without_dense=True, subsample=True, train=SIM_TRAIN
    ),
}


@dataclass
class Run:
    """One trained model and its scores."""

    dataset: str
    method: str
    budget: float
    seed: int
    params: int
    test_auc: float
    valid_auc: float
    best_epoch: int
    epochs_run: int
    seconds: float


# --quick: every method at budget 1/4 (collisionless at 1), seed 0, on MovieLens: under a
# minute on 2 cores once the examples exist (building them with Spark adds about one more).
QUICK: dict[str, str] = {"datasets": "movielens", "budgets": "1/4", "seeds": "0"}


def dataset_registry(config: str | None) -> dict[str, Dataset]:
    """``DATASETS``, or with ``config`` (``--config``) that one config, named after its
    ``name``: a dataset the registry does not know."""
    if config is None:
        return DATASETS
    path = Path(config).expanduser().resolve()
    return {load_config(path).name: Dataset(str(path), {})}


def split_sets(sets: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``--set KEY=VALUE`` items as (``embedding``/``train`` overrides shared by every method,
    pipeline-config overrides for every dataset such as ``source.path`` or ``output_dir``)."""
    import yaml

    methods: dict[str, dict[str, Any]] = {"embedding": {}, "train": {}}
    pipeline: dict[str, Any] = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {s!r}: expected SECTION.KEY=VALUE")
        section, _, name = key.partition(".")
        if section in methods and name:
            methods[section][name] = yaml.safe_load(value)
        else:
            pipeline[key] = yaml.safe_load(value)
    return methods, pipeline


def examples_dir(cfg: PipelineConfig, config_path: str, sets: dict[str, Any]) -> Path:
    """The cached examples of ``cfg``, produced with the real pipeline when missing (a relative
    ``output_dir`` is relative to the repository, like the configs' own)."""
    return ensure_examples(ROOT / config_path, sets, ROOT / cfg.out / "examples")


def derived_examples(exdir: Path, rows: int, seed: int = 0, without_dense: bool = False) -> Path:
    """``exdir`` with its train split cut to ``rows`` uniformly sampled rows (valid and test
    are the original files, linked) and, with ``without_dense``, no dense features in the
    manifest (so no model reads them); cached beside it. The sampling keeps the benchmark
    within minutes on large simulated worlds; the manifest records what was changed."""
    manifest = json.loads((exdir / "manifest.json").read_text())
    n = int(manifest["counts"]["train"])
    if rows >= n and not without_dense:
        return exdir
    rows = min(rows, n)
    out = (
        exdir.parent / f"{exdir.name}_train{rows}_seed{seed}{'_no_dense' if without_dense else ''}"
    )
    if (out / "manifest.json").exists():
        return out
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.features.batcher import read_split

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    linked = ["valid", "test"]
    if rows < n:
        (tmp / "split=train").mkdir()
        table = read_split(exdir, "train")
        keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False))
        pq.write_table(
            table.take(pa.array(keep)),
            tmp / "split=train" / "part-0.parquet",
            row_group_size=16384,
        )
        manifest["counts"] = {**manifest["counts"], "train": rows, "train_before_subsample": n}
        manifest["subsample"] = {"train_rows": rows, "of": n, "seed": seed, "source": str(exdir)}
    else:
        linked.append("train")
    for split in linked:
        (tmp / f"split={split}").symlink_to((exdir / f"split={split}").resolve())
    feats = manifest["features"]
    if without_dense:
        manifest["dropped_features"] = feats.get("dense") or []
        feats["dense"], feats["dense_stats"] = [], {}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    tmp.rename(out)
    return out


def split_rule(manifest: dict[str, Any]) -> str:
    """The train/valid/test split in words (from the manifest's ``split``)."""
    split = manifest.get("split") or {}
    if split.get("by") == "user_time":
        return "per user, chronological: each user's last examples are valid, then test"
    if split.get("valid_from"):
        return f"global time: valid from {split['valid_from']}, test from {split.get('test_from')}"
    return json.dumps(split)


def label_rule(manifest: dict[str, Any]) -> str:
    """The label rule in words (from the manifest's ``label_rule``)."""
    rule = manifest.get("label_rule") or {}
    if rule.get("kind") == "rating":
        t, lo = rule.get("threshold"), rule.get("drop_between")
        dropped = f"ratings in [{lo}, {t}) dropped, " if lo is not None else ""
        return f"rating >= {t} positive, {dropped}lower ratings negative"
    if rule.get("kind") == "click":
        return "click = positive, impression without click = negative"
    return json.dumps(rule)


@torch.no_grad()
def test_auc(cfg: PipelineConfig, run_dir: Path, exdir: Path) -> float:
    """AUC on the test split of the best-validation checkpoint in ``run_dir``."""
    spec = read_spec(exdir)
    model = build_model(cfg, spec, exdir)
    model.load_state_dict(load_model_weights(run_dir / BEST))
    model.eval()
    probs, labels = [], []
    for batch in ExampleBatcher(exdir, "test", spec, 4096, shuffle=False, prefetch=0):
        probs.append(torch.sigmoid(model(batch.sparse, batch.dense).logits).numpy())
        labels.append(batch.labels.numpy())
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(probs)))


def run_one(
    base: PipelineConfig,
    exdir: Path,
    dataset: str,
    method: str,
    budget: float,
    seed: int,
    overrides: dict[str, Any],
    full: int,
) -> Run:
    """Train and test one model; hashing/unified get ``round(budget * full)`` parameters,
    ``full`` being the collisionless model's table size (training vocabulary). The unified
    method also takes ``overrides["unified"]`` (dim, probes, num_tables)."""
    emb = {**overrides.get("embedding", {}), "kind": method, "budget_fraction": None}
    if method == "unified":
        emb.update(overrides.get("unified", {}))
    emb["param_budget"] = None if method == "collisionless" else round(budget * full)
    cfg = base.model_copy(
        update={
            "embedding": base.embedding.model_copy(update=emb),
            "train": base.train.model_copy(
                update={"seed": seed, "progress": False, **overrides.get("train", {})}
            ),
        }
    )
    quiet()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pareto-") as tmp:
        result = train(cfg, exdir, tmp, resume=False)
        auc = test_auc(cfg, Path(tmp), exdir)
        spec = read_spec(exdir)
        params = build_model(cfg, spec, exdir).embedding.num_embedding_parameters()
    return Run(
        dataset=dataset,
        method=method,
        budget=budget,
        seed=seed,
        params=params,
        test_auc=auc,
        valid_auc=float(result.best_metric or float("nan")),
        best_epoch=result.best_epoch,
        epochs_run=len(result.metrics),
        seconds=time.perf_counter() - t0,
    )


def quiet() -> None:
    """Silence TorchRec/torch deprecation chatter so the progress bar stays readable."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (dataset, method, budget): AUC mean/std/min/max over seeds, params."""
    rows = []
    keys = sorted(
        {(r.dataset, r.method, r.budget) for r in runs},
        key=lambda k: (k[0], -k[2], ["collisionless", "hashing", "unified"].index(k[1])),
    )
    for ds, m, b in keys:
        rs = [r for r in runs if (r.dataset, r.method, r.budget) == (ds, m, b)]
        auc = np.array([r.test_auc for r in rs])
        rows.append(
            {
                "dataset": ds,
                "method": m,
                "budget": b,
                "params": int(np.median([r.params for r in rs])),
                "seeds": len(rs),
                "auc_mean": float(auc.mean()),
                "auc_std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                "auc_min": float(auc.min()),
                "auc_max": float(auc.max()),
                "valid_auc_mean": float(np.mean([r.valid_auc for r in rs])),
                "best_epoch_mean": float(np.mean([r.best_epoch for r in rs])),
                "seconds_mean": float(np.mean([r.seconds for r in rs])),
            }
        )
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and budget: unified - hashing (and its spread), whether that gain is larger
    than at the next larger budget below 1 (``gain_grows``), and unified and hashing relative
    to collisionless; a method that was not run leaves its fields ``None``."""
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        by = {(r["method"], r["budget"]): r for r in rows if r["dataset"] == ds}
        cl = by.get(("collisionless", 1.0))
        previous: float | None = None  # the gain at the next larger budget below 1
        for b in sorted({r["budget"] for r in rows if r["dataset"] == ds}, reverse=True):
            u, h = by.get(("unified", b)), by.get(("hashing", b))
            if u is None and h is None:
                continue
            row: dict[str, Any] = {"dataset": ds, "budget": b}
            row.update(gain_fields(u, h, previous))
            if b < 1 and row["unified_minus_hashing"] is not None:
                previous = row["unified_minus_hashing"]
            for name, r in (("unified", u), ("hashing", h)):
                rel = None if r is None or cl is None else r["auc_mean"] / cl["auc_mean"] - 1.0
                row[f"{name}_vs_collisionless_rel"] = rel
            out.append(row)
    return out


def gain_fields(
    u: dict[str, Any] | None, h: dict[str, Any] | None, previous: float | None
) -> dict[str, Any]:
    """unified - hashing at one budget, its seed spread and verdicts (``None`` without both)."""
    if u is None or h is None:
        keys = ("unified_minus_hashing", "seed_spread", "beats_hashing", "ranges_disjoint")
        return {**dict.fromkeys(keys), "gain_grows": None}
    spread = max(u["auc_std"], h["auc_std"])
    gain = u["auc_mean"] - h["auc_mean"]
    return {
        "unified_minus_hashing": gain,
        "seed_spread": spread,
        "beats_hashing": bool(gain > spread) if u["seeds"] > 1 else None,
        "ranges_disjoint": bool(u["auc_min"] > h["auc_max"]),
        "gain_grows": None if previous is None else bool(gain > previous),
    }


def budget_label(b: float) -> str:
    return "1" if b == 1 else f"1/{round(1 / b)}"


def print_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print()
    print("| data | method | budget | emb. params | seeds | test AUC mean | std | min–max |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['method']} | {budget_label(r['budget'])} | {r['params']:,} "
            f"| {r['seeds']} | {r['auc_mean']:.4f} | {r['auc_std']:.4f} "
            f"| {r['auc_min']:.4f}–{r['auc_max']:.4f} |"
        )
    print()
    print(
        "| data | budget | unified − hashing | seed spread (max std) | > spread | gain grows "
        "| unified vs collisionless | hashing vs collisionless |"
    )
    print("|---|---|---:|---:|---|---|---:|---:|")
    for c in checks:
        print(
            f"| {c['dataset']} | {budget_label(c['budget'])} "
            f"| {fmt(c['unified_minus_hashing'], '+.4f')} | {fmt(c['seed_spread'], '.4f')} "
            f"| {fmt(c['beats_hashing'])} | {fmt(c['gain_grows'])} "
            f"| {fmt(c['unified_vs_collisionless_rel'], '+.2%')} "
            f"| {fmt(c['hashing_vs_collisionless_rel'], '+.2%')} |"
        )


def fmt(value: float | bool | None, spec: str = "") -> str:
    """A table cell: ``—`` for a value that was not measured."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    cols = min(2, len(datasets))
    grid = -(-len(datasets) // cols)
    fig, axes = plt.subplots(grid, cols, figsize=(6 * cols, 4.5 * grid), squeeze=False)
    style = {
        "collisionless": ("k", "s"),
        "hashing": ("tab:orange", "o"),
        "unified": ("tab:blue", "^"),
    }
    for ax in axes.flat[len(datasets) :]:
        ax.set_visible(False)
    for ax, ds in zip(axes.flat, datasets, strict=False):
        for m, (color, marker) in style.items():
            rs = sorted(
                (r for r in rows if r["dataset"] == ds and r["method"] == m),
                key=lambda r: r["params"],
            )
            if not rs:
                continue
            x = [r["params"] for r in rs]
            y = [r["auc_mean"] for r in rs]
            lo = [r["auc_mean"] - r["auc_min"] for r in rs]
            hi = [r["auc_max"] - r["auc_mean"] for r in rs]
            ax.errorbar(
                x, y, yerr=[lo, hi], color=color, marker=marker, capsize=3, label=m,
                linestyle="-" if len(rs) > 1 else "none",
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("embedding parameters (log)")
        ax.set_ylabel("test AUC (mean, bars = min–max over seeds)")
        ax.set_title(ds)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unified_overrides(
    args: argparse.Namespace, emb: EmbeddingConfig, sparse: list[str]
) -> dict[str, Any]:
    """The unified-only embedding settings of ``--unified-*`` for these sparse features.

    Refuses a shape whose per-feature width differs from the shared one (``emb``), so the
    ranker sees the same input width whatever the method."""
    out: dict[str, Any] = {}
    if args.unified_dim is not None:
        out["dim"] = args.unified_dim
    if args.unified_probes is not None:
        out["probes"] = {f: args.unified_probes for f in sparse}
    if args.unified_tables is not None:
        out["num_tables"] = args.unified_tables
    if out:
        shared = feature_widths(emb, sparse)
        mine = feature_widths(emb.model_copy(update=out), sparse)
        bad = {f: (mine[f], shared[f]) for f in sparse if mine[f] != shared[f]}
        if bad:
            raise SystemExit(
                f"--unified-dim/--unified-probes: width (unified, shared) differs for {bad}; "
                "keep probes x dim equal to the shared width"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--datasets", default=None, help=f"comma-separated, of {','.join(DATASETS)} (all)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="a pipeline config to run instead of the registry (dataset = its name)",
    )
    p.add_argument("--seeds", default=None, help="comma-separated (0,1,2)")
    p.add_argument("--budgets", default=None, help="fractions of collisionless (1,1/4,1/16,1/64)")
    p.add_argument("--methods", default="collisionless,hashing,unified")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel processes")
    p.add_argument(
        "--sim-train-rows",
        type=int,
        default=0,
        help="uniform sample of the simulated train split (valid/test stay whole); 0 = all",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: movielens (or --config), budget 1/4, seed 0",
    )
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="YAML value; embedding.*/train.*: shared by every method; any other key "
        "(source.path, output_dir, ...): the pipeline config of every dataset",
    )
    p.add_argument(
        "--unified-dim", type=int, default=None, help="unified only: chunk dim d (default: dim)"
    )
    p.add_argument(
        "--unified-probes",
        type=int,
        default=None,
        metavar="K",
        help="unified only: K probes for every sparse feature (K x unified-dim = shared width)",
    )
    p.add_argument(
        "--unified-tables", type=int, default=None, help="unified only: num_tables (round-robin)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON path, anywhere (default: benchmarks/results/unified_pareto[_quick].json; "
        "a full run refuses to replace it unless --out names it)",
    )
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    p.add_argument("--no-plot", action="store_true", help="write the JSON only")
    args = p.parse_args(argv)

    registry = dataset_registry(args.config)
    quick = QUICK if args.quick else {}
    if args.config:
        quick = {k: v for k, v in quick.items() if k != "datasets"}
    names = (args.datasets or quick.get("datasets") or ",").split(",")
    names = [n for n in names if n] or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; known: {list(registry)}")
    seeds = [int(s) for s in (args.seeds or quick.get("seeds") or "0,1,2").split(",")]
    budgets_text = args.budgets or quick.get("budgets") or ",".join(str(b) for b in BUDGETS)
    budgets = [float(Fraction(b)) for b in budgets_text.split(",")]  # "1/4", "0.25", "1"
    methods = args.methods.split(",")
    out = output_path("unified_pareto", args.quick, args.out)
    plot_path = Path(args.plot).resolve() if args.plot else out.with_suffix(".png")
    overrides, pipeline_sets = split_sets(args.sets)
    if args.epochs is not None:
        overrides["train"]["epochs"] = args.epochs
    overrides["train"]["num_threads"] = args.threads
    torch.set_num_threads(args.threads)
    if args.quick:
        args.sim_train_rows = min(args.sim_train_rows or 10**9, 100_000)

    plan: list[tuple[str, PipelineConfig, Path, str, float, int, int, dict[str, Any]]] = []
    setup: dict[str, Any] = {
        "machine": describe_host(),
        "threads": args.threads,
        "jobs": args.jobs,
        "seeds": seeds,
        "budgets": budgets,
        "methods": methods,
        "overrides": overrides,
        "pipeline_overrides": pipeline_sets,
        "unified": {
            "dim": args.unified_dim,
            "probes": args.unified_probes,
            "num_tables": args.unified_tables,
        },
        "datasets": {},
    }
    print(
        f"# machine: {setup['machine']}; {args.jobs} runs in parallel, "
        f"{args.threads} torch thread(s) each"
    )
    print(f"# seeds {seeds}; budgets {[budget_label(b) for b in budgets]} of collisionless")
    for ds in names:
        data = registry[ds]
        sets = {**data.sets, **pipeline_sets}
        base = load_config(ROOT / data.config, sets)
        exdir = examples_dir(base, data.config, sets)
        rows = args.sim_train_rows if data.subsample and args.sim_train_rows else 10**12
        exdir = derived_examples(exdir, rows, without_dense=data.without_dense)
        manifest = json.loads((exdir / "manifest.json").read_text())
        spec = read_spec(exdir)
        counts = {k: manifest["counts"][k] for k in ("train", "valid", "test")}
        emb_cfg = base.embedding.model_copy(update=overrides["embedding"])
        # Budget 1 = exactly the collisionless model's size: one row per training value (its
        # vocabulary) + one OOV row per feature, times the feature's width.
        widths = feature_widths(emb_cfg, spec.sparse)
        vocab = build_vocabulary(exdir, list(spec.sparse), min_count=emb_cfg.vocab_min_count)
        full = sum((len(vocab[f]) + 1) * widths[f] for f in spec.sparse)
        train_overrides = {**data.train, **overrides["train"]}
        tc = base.train.model_copy(update=train_overrides)
        mc = base.model
        uni = unified_overrides(args, emb_cfg, list(spec.sparse))
        ds_overrides = {**overrides, "train": train_overrides, "unified": uni}
        uni_cfg = emb_cfg.model_copy(update=uni)
        setup["datasets"][ds] = {
            "config": shown(ROOT / data.config),
            "config_overrides": sets,
            "split": manifest.get("split"),
            "examples_dir": shown(exdir),
            "counts": counts,
            "label_rule": label_rule(manifest),
            "subsample": manifest.get("subsample"),
            "dropped_features": manifest.get("dropped_features", []),
            "sparse": list(spec.sparse),
            "dense": list(spec.dense),
            "cardinality": dict(spec.cardinality),
            "collisionless_params": full,
            "model": mc.model_dump(mode="json"),
            "embedding": emb_cfg.model_dump(mode="json"),
            "unified_embedding": uni_cfg.model_dump(mode="json"),
            "train": tc.model_dump(mode="json"),
        }
        print(
            f"# {ds}: {counts['train']:,} train / {counts['valid']:,} valid / "
            f"{counts['test']:,} test rows; label: {setup['datasets'][ds]['label_rule']}"
        )
        if sets:
            shown_sets = " ".join(f"{k}={v}" for k, v in sets.items())
            print(f"#   world: {shown(ROOT / data.config)} with {shown_sets}")
        print(f"#   split: {split_rule(manifest)}")
        if manifest.get("dropped_features"):
            print(f"#   left out for every method: {', '.join(manifest['dropped_features'])}")
        if manifest.get("subsample"):
            sub = manifest["subsample"]
            print(f"#   train = uniform sample of {sub['train_rows']:,} of {sub['of']:,} rows")
        print(
            f"#   {len(spec.sparse)} sparse features (training vocabulary "
            f"{ {f: len(vocab[f]) for f in spec.sparse} }), {len(spec.dense)} dense"
        )
        print(
            f"#   collisionless = {full:,} embedding params (vocabulary + 1 OOV row per "
            "feature); budget b gives hashing and unified round(b x that), the same for both"
        )
        print(
            f"#   model: DCN-v2 cross_layers={mc.cross_layers} mlp={mc.mlp} lt_head={mc.lt_head}; "
            f"emb dim={emb_cfg.dim} x {emb_cfg.default_probes} probe(s) num_tables={emb_cfg.num_tables} "
            f"init=U(±{emb_cfg.init_scale}) pooling={emb_cfg.pooling}; dense standardised by "
            f"manifest dense_stats; train: epochs={tc.epochs} "
            f"(best valid AUC, patience {tc.patience}) batch={tc.batch_size} "
            f"lr_emb={tc.lr_embedding} (row-wise Adagrad) lr_dense={tc.lr_dense} (AdamW)"
        )
        if uni:
            k = sorted(set(uni_cfg.probes.get(f, uni_cfg.default_probes) for f in spec.sparse))
            width = sorted(set(widths.values()))
            print(
                f"#   unified only: {'/'.join(map(str, k))} probe(s) x dim {uni_cfg.dim} per "
                f"feature (width {'/'.join(map(str, width))}, the same for every method), "
                f"num_tables={uni_cfg.num_tables} (probes round-robin)"
            )
        for seed in seeds:
            for m in methods:
                for b in [1.0] if m == "collisionless" else budgets:
                    plan.append((ds, base, exdir, m, b, seed, full, ds_overrides))
    sys.stdout.flush()

    runs: list[Run] = []
    t_start = time.perf_counter()
    bar = tqdm(total=len(plan), desc="runs", unit="run", file=sys.stderr)
    if args.jobs <= 1:
        for ds, base, exdir, m, b, seed, full, ovr in plan:
            bar.set_postfix_str(f"{ds} {m} {budget_label(b)} seed {seed}")
            runs.append(run_one(base, exdir, ds, m, b, seed, ovr, full))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=torch.set_num_threads, initargs=(args.threads,)
        ) as pool:
            futures = [
                pool.submit(run_one, base, exdir, ds, m, b, seed, ovr, full)
                for ds, base, exdir, m, b, seed, full, ovr in plan
            ]
            for fut in as_completed(futures):
                r = fut.result()
                runs.append(r)
                bar.set_postfix_str(f"{r.dataset} {r.method} {budget_label(r.budget)} {r.seed}")
                bar.update(1)
    bar.close()
    total = time.perf_counter() - t_start

    rows = summarise(runs)
    checks = verdicts(rows)
    print_tables(rows, checks)
    print(f"\n# {len(runs)} runs in {total / 60:.1f} min")
    payload = {
        "setup": setup,
        "summary": rows,
        "checks": checks,
        "runs": [asdict(r) for r in runs],
        "total_seconds": total,
        "command": command_line("unified_pareto.py", argv),
    }
    write_result(out, payload)
    if not args.no_plot:
        plot(rows, plot_path)
        print(f"# wrote {shown(plot_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
