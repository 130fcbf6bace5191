"""SESA vs ESA vs a latent twin: relevance, concept prediction, explanations, ranker match feature.

On MovieLens (bundled ml-latest-small, ``configs/movielens.yaml``) and on a simulated world
(``configs/simulated.yaml`` resized, no media), both through the real pipeline
(``recsys pipeline --stages source,prepare``), for each seed:

1. SESA (``model.kind: sesa``), the latent baseline (same encoder and parameter count, unnamed
   dense dimensions) and ESA (TF-IDF over concept documents, cosine; unsupervised, one fit):
   test AUC, per-user NDCG@10, concept precision@5 / recall@5 on the items whose concept labels
   were held back from training (30 %);
2. simulated world only: explanation accuracy over clicked test pairs: how often the top
   explained concept is the true reason, the item concept with the largest share of the hidden
   match term ``interest_u[c] * concept_i[c]``; baselines: the item's most popular concept and
   the item concept most frequent in the user's click history;
3. the DCN-v2 ranker without and with the SESA score as a match feature (same seed): test AUC.
   The match feature is ``ConceptSpace.match_feature()``: concept terms + content bias, without
   SESA's id biases (which memorise the training labels the ranker trains on too).

Prints the setup and a table per dataset; writes JSON.

    .venv/bin/python benchmarks/sesa.py --quick      # 1 seed, small world, < 5 min on 2 cores
    .venv/bin/python benchmarks/sesa.py --out benchmarks/results/sesa.json
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

import numpy as np
from host import describe_host
from match_ranker import ranker_test_auc
from result_file import command_line, ensure_examples, output_path, shown, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from recsys.concepts.data import Examples, read_examples  # noqa: E402
from recsys.concepts.esa import build_esa  # noqa: E402
from recsys.concepts.metrics import (  # noqa: E402
    auc,
    concept_precision,
    history_concept,
    per_user_ndcg,
    popular_concept,
)
from recsys.concepts.space import ConceptSpace  # noqa: E402
from recsys.concepts.train import ConceptData, load_concept_data, train_sesa  # noqa: E402
from recsys.concepts.vocabulary import normalise_concept  # noqa: E402
from recsys.config import PipelineConfig, load_config  # noqa: E402
from recsys.models.sesa import parameter_count  # noqa: E402

SIZES: dict[bool, dict[str, Any]] = {
    True: {
        "seeds": [0],
        "world": {"num_users": 800, "num_items": 250, "days": 8, "test_day": 6},
        "sesa_epochs": 4,
        "max_train_rows": {"movielens": 15_000, "simulated": None},
        "max_test_rows": 60_000,
        "ranker_epochs": 1,
        "explain_pairs": 1500,
    },
    False: {
        "seeds": [0, 1, 2],
        "world": {"num_users": 2000, "num_items": 400, "days": 12, "test_day": 9},
        "sesa_epochs": 4,
        "max_train_rows": {"movielens": None, "simulated": 200_000},
        "max_test_rows": 200_000,
        "ranker_epochs": 2,
        "explain_pairs": 3000,
    },
}
MODELS = ("sesa", "latent", "esa")


def simulated_sets(quick: bool) -> dict[str, Any]:
    w = SIZES[quick]["world"]
    start = date(2024, 1, 1)  # SimulatorConfig.start_date
    return {
        "prepare.split.valid_from": str(start + timedelta(days=w["test_day"] - 1)),
        "prepare.split.test_from": str(start + timedelta(days=w["test_day"])),
        "output_dir": f"runs/sesa_bench{'_quick' if quick else ''}",
        "simulator.num_users": w["num_users"],
        "simulator.num_items": w["num_items"],
        "simulator.days": w["days"],
        "simulator.with_media": False,
        "spark.master": "local[2]",
        "spark.shuffle_partitions": 4,
    }


def datasets(quick: bool) -> dict[str, tuple[Path, dict[str, Any]]]:
    return {
        "movielens": (ROOT / "configs" / "movielens.yaml", {}),
        "simulated": (ROOT / "configs" / "simulated.yaml", simulated_sets(quick)),
    }


def with_seed(cfg: PipelineConfig, seed: int, **train: Any) -> PipelineConfig:
    return cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"seed": seed, "progress": False, **train})}
    )


def sesa_config(
    cfg: PipelineConfig, variant: str, seed: int, size: dict[str, Any], name: str
) -> PipelineConfig:
    cfg = cfg.model_copy(
        update={
            "sesa": cfg.sesa.model_copy(
                update={"variant": variant, "max_train_rows": size["max_train_rows"][name]}
            )
        }
    )
    return with_seed(cfg, seed, epochs=size["sesa_epochs"], patience=2)


def relevance(space: ConceptSpace, test: Examples, data: ConceptData) -> dict[str, float]:
    scores = space.score_numpy(test.user_ids, test.histories, test.item_ids)
    concepts = concept_precision(space, data.items, data.holdout, k=5)
    return {
        "auc": auc(test.labels, scores),
        "ndcg@10": per_user_ndcg(test.user_ids, test.labels, scores, k=10),
        "concept_precision@5": concepts["precision@5"],
        "concept_recall@5": concepts["recall@5"],
        "concept_items": concepts["items"],
    }


# ---- explanations (simulated world) ------------------------------------------------------


def true_reasons(cfg: PipelineConfig, pairs: Examples) -> tuple[list[str], np.ndarray]:
    """Per clicked pair: the item concept with the largest ``interest_u[c] * weight_i[c]``
    (normalised name), and whether the item has more than one concept."""
    from recsys.sources.world import World

    world = World.build(cfg.simulator)
    reasons, multi = [], []
    for user, item in zip(pairs.user_ids, pairs.item_ids, strict=True):
        u, i = int(str(user)[1:]), int(str(item)[1:])
        weights = world.item_weights[i]
        concepts = world.item_concepts[i][weights > 0]
        share = world.user_interest[u, concepts] * weights[weights > 0]
        reasons.append(normalise_concept(world.concept_names[int(concepts[np.argmax(share)])]))
        multi.append(len(concepts) > 1)
    return reasons, np.array(multi)


def clicked_pairs(test: Examples, count: int, seed: int = 0) -> Examples:
    clicked = np.flatnonzero(test.labels > 0.5)
    rng = np.random.default_rng(seed)
    return test.take(np.sort(rng.choice(clicked, min(count, len(clicked)), replace=False)))


def explanation_accuracy(
    predicted: list[str | None], reasons: list[str], multi: np.ndarray, held: np.ndarray
) -> dict[str, float]:
    """Share of pairs whose predicted concept is the true reason, overall, on items with more
    than one concept, and on items whose concept labels were held back from training or not."""
    hits = np.array([p == r for p, r in zip(predicted, reasons, strict=True)])

    def part(mask: np.ndarray) -> float:
        return float(hits[mask].mean()) if mask.any() else float("nan")

    return {
        "explanation_accuracy": float(hits.mean()),
        "explanation_accuracy_held_back_items": part(held),
        "explanation_accuracy_labelled_items": part(~held),
        "held_back_pairs": int(held.sum()),
        "explanation_accuracy_multi_concept": part(multi),
        "pairs": int(len(hits)),
        "multi_concept_pairs": int(multi.sum()),
    }


def explain_top(space: ConceptSpace, pairs: Examples) -> list[str | None]:
    return [
        space.explain(u, i, history=h).top_concept
        for u, i, h in zip(pairs.user_ids, pairs.item_ids, pairs.histories, strict=True)
    ]


def baseline_explanations(data: ConceptData, pairs: Examples) -> dict[str, list[str | None]]:
    names, counts = data.vocab.names, data.vocab.counts

    def name(c: int | None) -> str | None:
        return None if c is None else names[c]

    return {
        "popular_concept": [name(popular_concept(data.items, counts, i)) for i in pairs.item_ids],
        "history_concept": [
            name(history_concept(data.items, counts, i, h))
            for i, h in zip(pairs.item_ids, pairs.histories, strict=True)
        ],
    }


# ---- ranker with / without the SESA match feature ------------------------------------------


# ---- summary ------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(np.nanmean(arr)) if len(arr) else float("nan"),
        "std": float(np.nanstd(arr, ddof=1)) if len(arr) > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in per_seed[0].items() if isinstance(v, int | float)]
    return {k: spread([run[k] for run in per_seed]) for k in keys}


def run_dataset(name: str, config: Path, sets: dict[str, Any], quick: bool) -> dict[str, Any]:
    size = SIZES[quick]
    base = load_config(config, sets)
    exdir = ensure_examples(config, sets, ROOT / base.out / "examples")
    base = base.model_copy(update={"output_dir": str(ROOT / base.out)})
    data = load_concept_data(base, exdir)
    test = read_examples(exdir, "test")
    if len(test) > size["max_test_rows"]:
        rng = np.random.default_rng(0)
        test = test.take(np.sort(rng.choice(len(test), size["max_test_rows"], replace=False)))
    print(
        f"\n## {name}: {len(data.items)} items, {len(data.users.ids)} users, "
        f"{len(data.vocab)} concepts (min count {data.vocab.min_count}), "
        f"{int(data.holdout.sum())} items' labels held back; test rows scored {len(test)}",
        flush=True,
    )
    pairs = reasons = multi = held = None
    if name == "simulated":
        pairs = clicked_pairs(test, size["explain_pairs"])
        reasons, multi = true_reasons(base, pairs)
        held = data.holdout[data.items.positions(pairs.item_ids)]
    t0 = time.perf_counter()
    esa = build_esa(data, top_k=base.sesa.top_k, history_length=base.sesa.history_length)
    esa_row = {**relevance(esa, test, data), "train_seconds": time.perf_counter() - t0, "params": 0}
    if pairs is not None:
        esa_row.update(explanation_accuracy(explain_top(esa, pairs), reasons, multi, held))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
    ranker: dict[str, list[dict[str, Any]]] = {"without_sesa": [], "with_sesa": []}
    for seed in size["seeds"]:
        spaces = {}
        for variant in ("sesa", "latent"):
            run = train_sesa(sesa_config(base, variant, seed, size, name), exdir, data=data)
            spaces[variant] = run.space
            row = {
                **relevance(run.space, test, data),
                "train_seconds": run.seconds,
                "params": parameter_count(run.model),
                "best_epoch": run.best_epoch,
                "valid_auc": run.best_auc,
            }
            if pairs is not None and variant == "sesa":
                row.update(
                    explanation_accuracy(explain_top(run.space, pairs), reasons, multi, held)
                )
            runs[variant].append(row)
            print(f"# {name} seed {seed} {variant}: {fmt_row(row)}", flush=True)
        runs["esa"].append(esa_row)
        rcfg = with_seed(base, seed, epochs=size["ranker_epochs"])
        for arm, match in (("without_sesa", []), ("with_sesa", [spaces["sesa"].match_feature()])):
            ranker[arm].append(ranker_test_auc(rcfg, exdir, match))
            print(
                f"# {name} seed {seed} ranker {arm}: test AUC {ranker[arm][-1]['auc']:.4f}",
                flush=True,
            )
    out: dict[str, Any] = {
        "items": len(data.items),
        "users": len(data.users.ids),
        "concepts": len(data.vocab),
        "held_back_items": int(data.holdout.sum()),
        "test_rows": len(test),
        "models": {m: summarise(runs[m]) for m in MODELS},
        "ranker": {arm: summarise(rows) for arm, rows in ranker.items()},
    }
    if pairs is not None:
        out["explanation_baselines"] = {
            k: explanation_accuracy(v, reasons, multi, held)
            for k, v in baseline_explanations(data, pairs).items()
        }
    return out


def fmt_row(row: dict[str, Any]) -> str:
    keys = ("auc", "ndcg@10", "concept_precision@5", "explanation_accuracy", "train_seconds")
    return ", ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)


def checks(results: dict[str, Any]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for name, r in results.items():
        m = r["models"]
        s, e, lat = m["sesa"], m["esa"], m["latent"]
        out[f"{name}: sesa beats esa on auc"] = s["auc"]["mean"] > e["auc"]["mean"]
        out[f"{name}: sesa beats esa on ndcg@10"] = s["ndcg@10"]["mean"] > e["ndcg@10"]["mean"]
        out[f"{name}: sesa within 1% relative auc of latent or better"] = (
            s["auc"]["mean"] >= 0.99 * lat["auc"]["mean"]
        )
        rk = r["ranker"]
        noise = max(rk["with_sesa"]["auc"]["std"], rk["without_sesa"]["auc"]["std"])
        out[f"{name}: ranker with sesa not lower beyond the spread"] = (
            rk["with_sesa"]["auc"]["mean"] >= rk["without_sesa"]["auc"]["mean"] - noise
        )
        if "explanation_baselines" in r:
            acc = s["explanation_accuracy"]
            out[f"{name}: sesa explanation accuracy >= 0.70"] = acc["mean"] >= 0.70
            for b, v in r["explanation_baselines"].items():
                out[f"{name}: sesa explanations not below {b} beyond the spread"] = (
                    acc["mean"] >= v["explanation_accuracy"] - acc["std"]
                )
    return out


def print_tables(results: dict[str, Any]) -> None:
    for name, r in results.items():
        print(f"\n# {name}: mean ± std over seeds")
        print(
            f"{'model':<8} {'AUC':>15} {'NDCG@10':>15} {'concept P@5':>15} {'R@5':>7} {'expl acc':>15} {'params':>9}"
        )
        for m, v in r["models"].items():

            def cell(key: str, v: dict[str, Any] = v) -> str:
                if key not in v:
                    return "—"
                return f"{v[key]['mean']:.4f}±{v[key]['std']:.4f}"

            print(
                f"{m:<8} {cell('auc'):>15} {cell('ndcg@10'):>15} {cell('concept_precision@5'):>15} "
                f"{v['concept_recall@5']['mean']:>7.3f} {cell('explanation_accuracy'):>15} "
                f"{int(v['params']['mean']):>9}"
            )
        if "explanation_baselines" in r:
            print("explanation accuracy   all    multi-concept  held-back items  labelled items")
            rows = {m: {k: v[k]["mean"] for k in v} for m, v in r["models"].items()}
            rows.update(r["explanation_baselines"])
            for m, v in rows.items():
                if "explanation_accuracy" not in v:
                    continue
                print(
                    f"{m:<20} {v['explanation_accuracy']:>6.4f} "
                    f"{v['explanation_accuracy_multi_concept']:>14.4f} "
                    f"{v['explanation_accuracy_held_back_items']:>16.4f} "
                    f"{v['explanation_accuracy_labelled_items']:>15.4f}"
                )
        rk = r["ranker"]
        w, wo = rk["with_sesa"]["auc"], rk["without_sesa"]["auc"]
        print(
            f"ranker test AUC: without SESA {wo['mean']:.4f}±{wo['std']:.4f}, with SESA "
            f"{w['mean']:.4f}±{w['std']:.4f} (delta {w['mean'] - wo['mean']:+.4f})"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, small world (< 5 min)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/sesa[_quick].json)")
    p.add_argument("--datasets", default="movielens,simulated", help="comma-separated subset")
    args = p.parse_args(argv)
    out_path = output_path("sesa", args.quick, args.out)
    size = SIZES[args.quick]
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    for chatty in ("torchrec", "torch", "fbgemm_gpu"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"# host: {describe_host()}")
    print(
        f"# seeds {size['seeds']}; SESA/latent {size['sesa_epochs']} epochs (train rows capped at "
        f"{size['max_train_rows']}), ranker {size['ranker_epochs']} epochs; simulated world "
        f"{size['world']}; test rows capped at {size['max_test_rows']}; explanations over "
        f"{size['explain_pairs']} clicked test pairs"
    )
    t0 = time.perf_counter()
    chosen = args.datasets.split(",")
    results = {
        name: run_dataset(name, config, sets, args.quick)
        for name, (config, sets) in datasets(args.quick).items()
        if name in chosen
    }
    print_tables(results)
    verdict = checks(results)
    for k, v in verdict.items():
        print(f"check {'PASS' if v else 'FAIL'}: {k}")
    write_result(
        out_path,
        {
            "setup": {
                "host": describe_host(),
                "sizes": size,
                "datasets": {
                    n: {"config": shown(c), "sets": s} for n, (c, s) in datasets(args.quick).items()
                },
            },
            "seconds": round(time.perf_counter() - t0, 1),
            "results": results,
            "checks": verdict,
            "command": command_line("sesa.py", argv),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
