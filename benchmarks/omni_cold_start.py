"""Cold-start retrieval with omni-modal item embeddings: ID-only vs content vs distilled.

For each dataset and seed, one process trains and compares, on the same time split:

- ``id_only``: an ID two-tower (``recsys.models.two_tower.TwoTower``: user tower over the user
  id and the ids of the last 10 positives, item tower over the item id only);
- ``content_only``: the omni-modal encoder after stage 1 (cross-modal InfoNCE + Matryoshka);
- ``distilled``: stage 1 + stage 2 (sequence-to-item with log-Q, ID-to-item from the
  ``id_only`` model's item vectors, item-to-item kept on);
- ``no_seq2item`` / ``no_id2item`` / ``no_item2item``: ``distilled`` with one stage-2 loss off.

Omni queries are the normalised mean of the last 10 history items' embeddings (the
sequence-to-item query); ID-only queries are its user tower. Every test positive whose user
has an earlier positive is a case; its target is ranked against the whole catalogue (cold and
warm items alike). A target is *cold* when no training positive has it. ``cold|cold`` ranks a
cold target among the cold catalogue items only (how well new items are ordered among
themselves, whatever the warm items do). Stage 1 and 2 see only items created before the test
period (MovieLens has no creation time: its whole catalogue).

Datasets: ``simulated`` (``recsys.sources.simulator``, the world reseeded per seed, text +
image + audio + categorical; test = the last days) and ``movielens``
(``data/ml-latest-small``, text + categorical only, positive = rating >= 4, test = the last
20 % of positives by time). A linear probe (scikit-learn logistic regression, 3-fold CV) from
the simulated images / audio to the item's main concept checks that the media carry signal.

    .venv/bin/python benchmarks/omni_cold_start.py --quick     # 1 seed, small world, < 5 min
    .venv/bin/python benchmarks/omni_cold_start.py --out benchmarks/results/omni_cold_start.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from host import describe_host
from match_ranker import ranker_test_auc
from result_file import command_line, ensure_examples, output_path, shown, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import SimulatorConfig, load_config  # noqa: E402
from recsys.omni.config import MODALITIES, OmniConfig  # noqa: E402
from recsys.omni.id_tower import id_item_vectors, id_user_queries, train_id_tower  # noqa: E402
from recsys.omni.item_media import item_inputs  # noqa: E402
from recsys.omni.match_feature import (  # noqa: E402
    OmniMatchFeature,
    UserFoldMatchFeature,
    user_fold,
)
from recsys.omni.next_item import (  # noqa: E402
    NextItemCases,
    NextItemData,
    history_queries,
    next_item_data,
    recall_at_k,
    target_ranks,
)
from recsys.omni.pipeline import (  # noqa: E402
    items_before,
    train_omni,
    train_omni_stage2,
    train_split_cases,
)
from recsys.omni.training import NextItemPairs, train_stage1, train_stage2  # noqa: E402
from recsys.sources.movielens import read_movielens  # noqa: E402
from recsys.sources.simulator import simulate  # noqa: E402
from recsys.sources.world import World  # noqa: E402

HISTORY = 10
KS = (10, 50)
ABLATIONS = {
    "distilled": {},
    "no_seq2item": {"seq2item": False},
    "no_id2item": {"id2item": False},
    "no_item2item": {"item2item": False},
}
SIZES: dict[bool, dict[str, Any]] = {
    True: {
        "seeds": [0],
        "sim": {"num_users": 1000, "num_items": 400, "days": 12, "test_day": 9},
        "movielens": True,
        "omni": {"stage1_epochs": 15, "stage2_epochs": 1},
        "movielens_omni": {"stage1_epochs": 2, "stage2_epochs": 1},
        "movielens_ablations": False,
        "id_epochs": 10,
        "ranker_epochs": 2,
    },
    False: {
        "seeds": [0, 1, 2],
        "sim": {"num_users": 1500, "num_items": 800, "days": 18, "test_day": 13},
        "movielens": True,
        "omni": {"stage1_epochs": 25, "stage2_epochs": 1},
        "movielens_omni": {"stage1_epochs": 4, "stage2_epochs": 1},
        "movielens_ablations": True,
        "id_epochs": 10,
        "ranker_epochs": 3,
    },
}
# The ranker comparison runs on examples built by the real pipeline (Spark); its simulated
# world is the quick one in both modes, so the ranker trains in minutes on 2 cores.
RANKER_SIM = SIZES[True]["sim"]


def simulated_data(size: dict[str, Any], seed: int) -> tuple[NextItemData, pa.Table, np.ndarray]:
    """The simulated world of ``seed``: next-item data, items, catalogue rows for training."""
    sim = {k: v for k, v in size.items() if k != "test_day"}
    cfg = SimulatorConfig(seed=7 + seed, with_media=True, **sim)
    logs = simulate(cfg)
    start = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=UTC)
    split = int((start + timedelta(days=size["test_day"])).timestamp() * 1000)
    events = logs.events
    positive = pc.equal(events["event"], "click").to_numpy(zero_copy_only=False)
    data = next_item_data(events, logs.items, positive, split, HISTORY)
    created = logs.items.column("created_ts").cast(pa.int64()).to_numpy()
    return data, logs.items, np.flatnonzero(created < split)


def movielens_data() -> tuple[NextItemData, pa.Table, np.ndarray]:
    logs = read_movielens(ROOT / "data" / "ml-latest-small")
    events = logs.events
    rated = pc.and_(pc.equal(events["event"], "rating"), pc.greater_equal(events["value"], 4.0))
    positive = pc.fill_null(rated, False).to_numpy(zero_copy_only=False)
    ts = events["ts"].cast(pa.int64()).to_numpy()[positive]
    split = int(np.quantile(ts, 0.8))
    data = next_item_data(events, logs.items, positive, split, HISTORY)
    return data, logs.items, np.arange(logs.items.num_rows)


def media_probe(items: pa.Table, world: World) -> dict[str, float]:
    """3-fold CV accuracy of a logistic regression from image pixels (4x4 average-pooled) and
    from audio vectors to each item's main concept, with the majority-class rate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    inputs = item_inputs(items, OmniConfig())
    pooled = torch.nn.functional.avg_pool2d(inputs.image, 4).flatten(1).numpy()
    audio = inputs.audio.numpy()
    label = world.item_concepts[:, 0]
    out = {"majority": float(np.bincount(label).max() / len(label)), "items": len(label)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, x in (("image", pooled), ("audio", audio)):
            model = LogisticRegression(max_iter=300)
            out[name] = float(cross_val_score(model, x, label, cv=3).mean())
    return out


def evaluate(vectors: np.ndarray, queries: np.ndarray, data: NextItemData) -> dict[str, Any]:
    """Recall@K of ``queries`` against the catalogue ``vectors``, cold/warm, and cold|cold."""
    ranks = target_ranks(queries, vectors, data.test.target)
    out = recall_at_k(ranks, data.test_cold, KS)
    cold_items = np.flatnonzero(~data.warm)
    cold_cases = data.test_cold
    if cold_cases.any():
        position = np.full(len(data.warm), -1)
        position[cold_items] = np.arange(len(cold_items))
        sub = target_ranks(
            queries[cold_cases], vectors[cold_items], position[data.test.target[cold_cases]]
        )
        out["cold|cold"] = {f"recall@{k}": float((sub < k).mean()) for k in KS}
        out["cold|cold"]["candidates"] = int(len(cold_items))
    return out


def run_dataset(
    name: str, data: NextItemData, items: pa.Table, rows: np.ndarray, omni: OmniConfig,
    seed: int, id_epochs: int, ablations: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Every method on one dataset and seed; ``{method: metrics}`` plus seconds."""
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    tower = train_id_tower(data.train, data.item_ids, seed=seed, epochs=id_epochs)
    id_vectors = id_item_vectors(tower, data.item_ids)
    results["id_only"] = evaluate(
        id_vectors, id_user_queries(tower, data.test, data.item_ids), data
    )
    seconds["id_only"] = time.perf_counter() - t
    inputs = item_inputs(items, omni)
    t = time.perf_counter()
    stage1, _ = train_stage1(omni, inputs, rows)
    seconds["content_only"] = time.perf_counter() - t

    def scored(model: Any) -> dict[str, Any]:
        vectors = model.encode(inputs)
        return evaluate(vectors, history_queries(vectors, data.test.history), data)

    results["content_only"] = scored(stage1)
    has_history = (data.train.history >= 0).any(1)
    pairs = NextItemPairs(data.train.history[has_history], data.train.target[has_history])
    for variant, overrides in ABLATIONS.items():
        if overrides and not ablations:
            continue
        t = time.perf_counter()
        model, _ = train_stage2(
            stage1, omni.model_copy(update=overrides), inputs, pairs, id_vectors, data.warm
        )
        seconds[variant] = time.perf_counter() - t
        results[variant] = scored(model)
        print(f"#   {name} seed {seed}: {variant} done ({seconds[variant]:.0f} s)", flush=True)
    return {"methods": results, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every method's metrics (``{method: {group: {metric: ..}}}``)."""
    out: dict[str, Any] = {}
    for method in runs[0]["methods"]:
        out[method] = {}
        for group, metrics in runs[0]["methods"][method].items():
            out[method][group] = {}
            for metric in metrics:
                values = [r["methods"][method][group][metric] for r in runs]
                out[method][group][metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "values": values,
                }
    return out


def checks(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's bars on one dataset's summary."""

    def mean(method: str, group: str, metric: str = "recall@50") -> float:
        return summary[method][group][metric]["mean"]

    def std(method: str, group: str, metric: str = "recall@50") -> float:
        return summary[method][group][metric]["std"]

    spread = max(std("distilled", "cold"), std("content_only", "cold"))
    return {
        "distilled_beats_content_on_cold_r50_beyond_spread": mean("distilled", "cold")
        - mean("content_only", "cold")
        > spread,
        "distilled_at_least_2x_id_only_on_cold_r50": mean("distilled", "cold")
        >= 2 * mean("id_only", "cold"),
        "distilled_within_10pct_of_id_only_on_warm_r50": mean("distilled", "warm")
        >= 0.9 * mean("id_only", "warm"),
    }


def print_table(name: str, summary: dict[str, Any]) -> None:
    cols = [("cold", "recall@10"), ("cold", "recall@50"), ("cold|cold", "recall@10"),
            ("warm", "recall@10"), ("warm", "recall@50"), ("all", "recall@50")]  # fmt: skip
    first = summary["id_only"]
    print(
        f"\n# {name}: {first['cold']['cases']['mean']:.0f} cold / "
        f"{first['warm']['cases']['mean']:.0f} warm test cases (mean over seeds); "
        f"mean ± std over seeds"
    )
    print(f"{'method':<13}" + "".join(f"{g + ' ' + m.replace('recall', 'R'):>17}" for g, m in cols))
    for method, groups in summary.items():
        cells = []
        for g, m in cols:
            v = groups.get(g, {}).get(m)
            cells.append(f"{v['mean']:.4f}±{v['std']:.4f}" if v else "-")
        print(f"{method:<13}" + "".join(f"{c:>17}" for c in cells))


# ---- ranker with / without the omni match feature ------------------------------------------


def ranker_datasets() -> dict[str, tuple[Path, dict[str, Any]]]:
    """Pipeline configs and ``--set`` overrides of the ranker comparison's datasets."""
    start = SimulatorConfig().start_date
    sim = {
        "prepare.split.valid_from": str(start + timedelta(days=RANKER_SIM["test_day"] - 1)),
        "prepare.split.test_from": str(start + timedelta(days=RANKER_SIM["test_day"])),
        "output_dir": "runs/omni_bench_ranker",
        "simulator.num_users": RANKER_SIM["num_users"],
        "simulator.num_items": RANKER_SIM["num_items"],
        "simulator.days": RANKER_SIM["days"],
        "simulator.with_media": True,
        "spark.master": "local[2]",
        "spark.shuffle_partitions": 4,
    }
    return {
        "simulated": (ROOT / "configs" / "simulated.yaml", sim),
        "movielens": (ROOT / "configs" / "movielens.yaml", {}),
    }


def omni_match_features(
    items: pa.Table, rows: np.ndarray, cases: NextItemCases, omni: OmniConfig, id_epochs: int,
    exdir: Path,
) -> dict[str, OmniMatchFeature | UserFoldMatchFeature]:  # fmt: skip
    """Distilled omni models trained on the training split only, as match features:

    - ``with_omni``: one model on every training positive, its cosine standardised with the
      mean and std over the training examples (what the pipeline's bundle serves);
    - ``with_omni_raw``: the same model's raw cosine (the diagnosis: unstandardised input);
    - ``with_omni_oof``: 2-fold out-of-fold, standardised (each user scored by a stage 2
      that never saw that user's positives)."""
    inputs = item_inputs(items, omni)
    run = train_omni(omni, items, cases, rows, id_epochs=id_epochs)
    raw = OmniMatchFeature(inputs.item_ids, run.model.encode(inputs), HISTORY)
    folds = user_fold(cases.user_ids, 2)
    per_fold = []
    for f in range(2):
        keep = folds != f
        other = NextItemCases(cases.user_ids[keep], cases.history[keep], cases.target[keep])
        model, _ = train_omni_stage2(run.stage1, omni, items, other, id_epochs, inputs=inputs)
        fold = OmniMatchFeature(inputs.item_ids, model.encode(inputs), HISTORY)
        per_fold.append(fold.standardised_on(exdir))
    return {
        "with_omni": raw.standardised_on(exdir),
        "with_omni_raw": raw,
        "with_omni_oof": UserFoldMatchFeature(per_fold),
    }


def feature_auc(feature: OmniMatchFeature, exdir: Path) -> dict[str, float]:
    """Test-set style AUC of the match score alone on each split's rows (no ranker)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for split in ("train", "valid", "test"):
        table = pq.read_table(exdir / f"split={split}", columns=["item_id", "history", "label"])
        histories = [list(h or []) for h in table["history"].to_pylist()]
        items = np.asarray(table["item_id"].to_pylist(), dtype=object)
        score = feature.score(items, histories, items).numpy()  # user ids are unused
        out[split] = float(roc_auc_score(table["label"].to_numpy(), score))
    return out


def run_ranker(name: str, config: Path, sets: dict[str, Any], size: dict[str, Any]) -> dict:
    """Ranker without / with the omni match feature on one dataset, every seed."""
    base = load_config(config, sets)
    exdir = ensure_examples(config, sets, ROOT / base.out / "examples")
    items = pq.read_table(ROOT / base.out / "raw" / "items.parquet")
    test_from = None
    if "prepare.split.test_from" in sets:  # simulated: items that exist before the test days
        test_from = datetime.fromisoformat(sets["prepare.split.test_from"]).replace(tzinfo=UTC)
    rows = items_before(items, test_from)
    item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
    cases = train_split_cases(exdir, item_ids, HISTORY)
    modalities = ["text", "categorical"] if name == "movielens" else list(MODALITIES)
    omni_size = size["movielens_omni"] if name == "movielens" else size["omni"]
    arms: dict[str, list[dict[str, float]]] = {
        "without_omni": [], "with_omni": [], "with_omni_raw": [], "with_omni_oof": []
    }  # fmt: skip
    scales: list[dict[str, float]] = []
    for seed in size["seeds"]:
        omni = OmniConfig(seed=seed, modalities=modalities, **omni_size)
        features = omni_match_features(items, rows, cases, omni, size["id_epochs"], exdir)
        scale = features["with_omni"].scale  # type: ignore[union-attr]
        auc_alone = feature_auc(features["with_omni"], exdir)  # type: ignore[arg-type]
        scales.append({"mean": scale.mean, "std": scale.std, "feature_auc": auc_alone})
        print(f"#   {name} seed {seed}: omni score alone, AUC per split {auc_alone}", flush=True)
        cfg = base.model_copy(
            update={"train": base.train.model_copy(
                update={"seed": seed, "progress": False, "epochs": size["ranker_epochs"]}
            )}
        )  # fmt: skip
        for arm in arms:
            match = [features[arm]] if arm in features else []
            arms[arm].append(ranker_test_auc(cfg, exdir, match))
            print(f"#   ranker {name} seed {seed} {arm}: {arms[arm][-1]}", flush=True)
    aucs = {arm: [r["auc"] for r in runs] for arm, runs in arms.items()}
    gains, checks = {}, {}
    for arm in ("with_omni", "with_omni_raw", "with_omni_oof"):
        diff = np.subtract(aucs[arm], aucs["without_omni"])
        spread = max(float(np.std(aucs[arm])), float(np.std(aucs["without_omni"])))
        gains[arm] = {"mean": float(diff.mean()), "std": float(diff.std()), "values": diff.tolist()}
        checks[f"{arm}_not_lower_beyond_spread"] = bool(diff.mean() >= -spread)
    return {
        "examples": shown(exdir),
        "omni_feature": scales,  # raw cosine mean / std on train rows; AUC of the score alone
        "runs": arms,
        "auc": {
            arm: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
            for arm, v in aucs.items()
        },
        "auc_gain": gains,
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, small world (< 5 min)")
    p.add_argument(
        "--out", help="JSON path (default benchmarks/results/omni_cold_start[_quick].json)"
    )
    p.add_argument("--no-movielens", action="store_true", help="simulated world only")
    p.add_argument("--ranker-only", action="store_true", help="skip the retrieval comparison")
    p.add_argument(
        "--ranker", choices=["auto", "on", "off"], default="auto",
        help="ranker with/without the omni match feature (auto: full runs only)",
    )  # fmt: skip
    args = p.parse_args(argv)
    out_path = output_path("omni_cold_start", args.quick, args.out)
    size = SIZES[args.quick]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"# host: {describe_host()}")
    print(
        f"# seeds {size['seeds']}; simulated world {size['sim']} (world seed 7 + seed); "
        f"omni {size['omni']} (movielens {size['movielens_omni']}); ID two-tower "
        f"{size['id_epochs']} epochs; history {HISTORY}; recall@{KS} over the whole catalogue"
    )
    t0 = time.perf_counter()
    payload: dict[str, Any] = {"setup": {"host": describe_host(), "sizes": size}, "datasets": {}}
    sim_runs = []
    for seed in [] if args.ranker_only else size["seeds"]:
        data, items, rows = simulated_data(size["sim"], seed)
        if seed == size["seeds"][0]:
            world_cfg = {k: v for k, v in size["sim"].items() if k != "test_day"}
            probe = media_probe(items, World.build(SimulatorConfig(seed=7 + seed, **world_cfg)))
            payload["media_probe"] = probe
            print(
                f"# media probe (main concept, 3-fold CV): image {probe['image']:.3f}, audio "
                f"{probe['audio']:.3f}, majority class {probe['majority']:.3f}", flush=True
            )  # fmt: skip
        omni = OmniConfig(seed=seed, **size["omni"])
        sim_runs.append(run_dataset("simulated", data, items, rows, omni, seed, size["id_epochs"]))
    datasets = {"simulated": sim_runs} if sim_runs else {}
    if size["movielens"] and not args.no_movielens and not args.ranker_only:
        ml_runs = []
        data, items, rows = movielens_data()
        for seed in size["seeds"]:
            omni = OmniConfig(
                seed=seed, modalities=["text", "categorical"], **size["movielens_omni"]
            )
            ml_runs.append(
                run_dataset(
                    "movielens",
                    data,
                    items,
                    rows,
                    omni,
                    seed,
                    size["id_epochs"],
                    size["movielens_ablations"],
                )  # fmt: skip
            )
        datasets["movielens"] = ml_runs
    for name, runs in datasets.items():
        summary = summarise(runs)
        print_table(name, summary)
        verdicts = checks(summary)
        print(f"checks: {verdicts}")
        payload["datasets"][name] = {"runs": runs, "summary": summary, "checks": verdicts}
    if args.ranker == "on" or (args.ranker == "auto" and not args.quick):
        payload["ranker"] = {}
        for name, (config, sets) in ranker_datasets().items():
            if name == "movielens" and args.no_movielens:
                continue
            result = run_ranker(name, config, sets, size)
            payload["ranker"][name] = result
            a, g = result["auc"], result["auc_gain"]
            print(f"\n# ranker {name}: test AUC (mean ± std over seeds), gain over without_omni")
            for arm, v in a.items():
                gain = f"{g[arm]['mean']:+.4f}±{g[arm]['std']:.4f}" if arm in g else "-"
                print(f"{arm:<15} {v['mean']:.4f}±{v['std']:.4f}  {gain}")
            print(f"checks: {result['checks']}", flush=True)
    payload["seconds"] = round(time.perf_counter() - t0, 1)
    payload["command"] = command_line("omni_cold_start.py", argv)
    print(f"# total {payload['seconds']} s")
    write_result(out_path, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
