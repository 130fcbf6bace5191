"""The ``evaluate`` stage: a bundle on the test split -> ``metrics.json`` + ``report.html``.

``evaluate_bundle(cfg, bundle_dir, examples_dir, out_dir)`` scores the test split with the
bundle (a ranker: click probabilities; a two-tower: ranks of each positive's item among every
item of the examples), computes every metric with user-level bootstrap intervals
(``recsys.evaluation.summary``), for a simulated source replays the bundle against baselines in
the world (``recsys.evaluation.ab``), writes ``metrics.json`` atomically and renders the report
(``recsys.evaluation.report``). ``compare_bundles`` scores two rankers on the same rows and
writes per-metric deltas with paired-bootstrap intervals and a verdict line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.atomic import write_json
from recsys.bundle import Bundle, load_bundle
from recsys.config import PipelineConfig
from recsys.evaluation import offline, summary
from recsys.evaluation.scoring import (
    bundle_kind,
    last_log_day,
    retrieval_table,
    score_split,
    seen_counts,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPLICATES = 200
SEED = 0
LEVEL = 0.95
RETRIEVAL_KS = (10, 50, 100)


class EvaluationError(ValueError):
    """Nothing to evaluate (no bundle, no test rows); the message names the path."""


def _train_counts(examples_dir: Path) -> tuple[pd.Series, pd.Series]:
    return seen_counts(examples_dir, "train", "user_id"), seen_counts(
        examples_dir, "train", "item_id"
    )


def ranker_metrics(
    scores: pd.DataFrame,
    examples_dir: Path,
    *,
    replicates: int = REPLICATES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Overall + per-slice binary metrics, LT from logs and plot data of a score table."""
    if scores.empty:
        raise EvaluationError(f"{examples_dir}: the test split has no rows")
    train_users, train_items = _train_counts(examples_dir)
    masks = summary.slice_masks(scores, train_users, train_items)
    overall, slices = summary.binary_summary(scores, masks, replicates, seed, level)
    return {
        "overall": overall,
        "slices": slices,
        "lt": summary.lt_summary(scores, replicates, seed, level, last_log_day(examples_dir)),
        "curves": {"roc": summary.roc_points(scores), "reliability": summary.reliability(scores)},
    }


def evaluate_bundle(
    cfg: PipelineConfig,
    bundle_dir: str | Path,
    examples_dir: str | Path,
    out_dir: str | Path,
    *,
    replicates: int = REPLICATES,
    seed: int = SEED,
    ab_days: int | None = None,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one bundle on the test split; write ``out_dir/metrics.json`` (and the report).

    ``ab_days``: days of the simulated A/B (``recsys.evaluation.ab``); ``None`` runs 7 days
    when the source is the simulator and the bundle a ranker, ``0`` skips it.
    Returns what ``metrics.json`` holds.
    """
    t0 = time.perf_counter()
    bundle_dir, examples_dir, out = Path(bundle_dir), Path(examples_dir), Path(out_dir)
    bundle = load_bundle(bundle_dir)
    kind = bundle_kind(bundle)
    result: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "version": bundle.version,
        "kind": kind,
        "examples_dir": str(examples_dir),
        "split": "test",
        "bootstrap": {"unit": "user", "replicates": replicates, "seed": seed, "level": LEVEL},
    }
    if kind == "ranker":
        scores = score_split(bundle, examples_dir, "test", progress=progress)
        result |= ranker_metrics(scores, examples_dir, replicates=replicates, seed=seed)
        days = _ab_days(cfg, ab_days)
        if days:
            from recsys.evaluation.ab import simulated_ab

            result["ab"] = simulated_ab(cfg, bundle, days=days, scores=scores, progress=progress)
    else:
        ks = tuple(sorted({*RETRIEVAL_KS, cfg.train.recall_k}))
        ranks = retrieval_table(bundle, examples_dir, "test", progress=progress)
        result["retrieval"] = summary.retrieval_summary(ranks, ks, replicates, seed, LEVEL)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    if report:
        from recsys.evaluation.report import write_report

        result["report"] = str(write_report(result, out))
    write_json(out / METRICS_FILE, result)
    return result


def _ab_days(cfg: PipelineConfig, ab_days: int | None) -> int:
    if ab_days is not None:
        return ab_days
    return 7 if cfg.source.kind == "simulator" else 0


def compare_bundles(
    baseline_dir: str | Path,
    candidate_dir: str | Path,
    examples_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    replicates: int = REPLICATES,
    seed: int = SEED,
    level: float = LEVEL,
    progress: bool = True,
) -> dict[str, Any]:
    """Score two ranker bundles on the same test rows; per-metric deltas (candidate minus
    baseline) with paired user-bootstrap intervals, verdicts and one verdict line. Writes
    ``out_dir/compare.json`` when ``out_dir`` is given."""
    a, b = load_bundle(baseline_dir), load_bundle(candidate_dir)
    sa = score_split(a, examples_dir, "test", progress=progress)
    sb = score_split(b, examples_dir, "test", progress=progress)
    return compare_scores(sa, sb, a, b, out_dir, replicates=replicates, seed=seed, level=level)


def compare_scores(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    a: Bundle | None = None,
    b: Bundle | None = None,
    out_dir: str | Path | None = None,
    *,
    replicates: int = REPLICATES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The comparison of two score tables of the same rows in the same order."""
    same = len(baseline) == len(candidate) and np.array_equal(
        baseline[["user_id", "item_id"]].to_numpy(), candidate[["user_id", "item_id"]].to_numpy()
    )
    if not same:
        raise EvaluationError("compare: the two score tables do not hold the same rows")
    users, num_users = offline.user_codes(baseline["user_id"].to_numpy())
    weights = offline.bootstrap_user_weights(num_users, replicates, seed)
    metrics = offline.compare_metrics(
        baseline["label"].to_numpy(np.float64),
        baseline["score"].to_numpy(np.float64),
        candidate["score"].to_numpy(np.float64),
        users,
        weights,
        level,
    )
    result = {
        "baseline": str(a.path) if a else None,
        "candidate": str(b.path) if b else None,
        "rows": len(baseline),
        "users": num_users,
        "bootstrap": {"unit": "user", "paired": True, "replicates": replicates, "seed": seed},
        "metrics": metrics,
        "verdict": offline.verdict_line(metrics),
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "compare.json", result)
    return result


def console_table(result: dict[str, Any]) -> str:
    """A short plain-text table of the headline numbers (for the CLI)."""
    lines = [f"bundle {result['version']} ({result['kind']})"]
    if "overall" in result:
        o = result["overall"]
        for name in offline.BINARY_METRICS:
            lo, hi = o.get(f"{name}_ci", [float("nan")] * 2)
            lines.append(f"  {name:<12} {o[name]:.4f}  [{lo:.4f}, {hi:.4f}]")
    if "retrieval" in result:
        r = result["retrieval"]
        for key in sorted(k for k in r if "@" in k and not k.endswith("_ci")):
            lo, hi = r[f"{key}_ci"]
            lines.append(f"  {key:<12} {r[key]:.4f}  [{lo:.4f}, {hi:.4f}]")
    if "ab" in result:
        for arm in result["ab"]["arms"]:
            lo, hi = arm.get("lift_ci", [float("nan")] * 2)
            lines.append(
                f"  LT7 {arm['policy']:<10} {arm['lt7']:.3f}  lift {arm.get('lift', 0):+.3f} "
                f"[{lo:+.3f}, {hi:+.3f}]"
            )
    if "report" in result:
        lines.append(f"report: {result['report']}")
    return "\n".join(lines)
