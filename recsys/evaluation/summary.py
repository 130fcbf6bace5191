"""From a score table to the metrics of ``metrics.json``: overall, per slice, LT, retrieval.

Slices (each a boolean mask over the score table's rows):

- ``user=new`` / ``user=returning``: the user has no row in the train split / has some;
- ``item=cold`` / ``item=warm``: the item has fewer than ``COLD_ITEM_ROWS`` train rows / more;
- ``concept=<c>``: the item carries concept ``c``, for the ``TOP_CONCEPTS`` most frequent
  concepts of the scored rows (when the examples carry ``s_item_concepts``).

Every number here has a user-level bootstrap interval (``recsys.evaluation.offline``); the
same replicates serve the whole table and every slice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from recsys.evaluation import offline

COLD_ITEM_ROWS = 5
TOP_CONCEPTS = 5
ACTIVE_DAYS = 5  # "active on >= 5 of the next 7 days"
MIN_SLICE_ROWS = 20


def slice_masks(
    scores: pd.DataFrame,
    train_users: pd.Series,
    train_items: pd.Series,
    *,
    cold_item_rows: int = COLD_ITEM_ROWS,
    top_concepts: int = TOP_CONCEPTS,
) -> dict[str, np.ndarray]:
    """``{slice name: (N,) bool}``; ``train_users`` / ``train_items``: rows per id in train."""
    seen_user = scores["user_id"].isin(train_users.index).to_numpy()
    item_rows = scores["item_id"].map(train_items).fillna(0).to_numpy()
    masks = {
        "user=new": ~seen_user,
        "user=returning": seen_user,
        "item=cold": item_rows < cold_item_rows,
        "item=warm": item_rows >= cold_item_rows,
    }
    if "concepts" in scores:
        lists = [[str(v) for v in c] if c is not None else [] for c in scores["concepts"]]
        counts = Counter(c for row in lists for c in set(row))
        # most rows first, ties by name (the Spark job orders alike)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_concepts]
        for concept, _ in top:
            masks[f"concept={concept}"] = np.array([concept in row for row in lists])
    return {name: mask for name, mask in masks.items() if mask.any()}


def binary_summary(
    scores: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    replicates: int,
    seed: int,
    level: float = 0.95,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(overall, slices)``: binary metrics with intervals for the table and each slice
    (a slice with fewer than ``MIN_SLICE_ROWS`` rows gets its point metrics only)."""
    users, num_users = offline.user_codes(scores["user_id"].to_numpy())
    y = scores["label"].to_numpy(dtype=np.float64)
    p = scores["score"].to_numpy(dtype=np.float64)
    weights = offline.bootstrap_user_weights(num_users, replicates, seed)
    overall = offline.with_intervals(
        offline.binary_metrics(y, p, users, num_users),
        offline.bootstrap_binary(y, p, users, weights),
        level,
    )
    slices: dict[str, Any] = {}
    for name, mask in masks.items():
        point = offline.binary_metrics(y[mask], p[mask], users[mask], num_users)
        if mask.sum() >= MIN_SLICE_ROWS:
            reps = offline.bootstrap_binary(y[mask], p[mask], users[mask], weights)
            slices[name] = offline.with_intervals(point, reps, level)
        else:
            slices[name] = point
    return overall, slices


def user_days(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, UTC day) with its ``lt7``/``lt14`` and the mean ``lt7_pred``."""
    have = [c for c in ("lt7", "lt14", "lt7_pred") if c in scores]
    frame = scores[["user_id", *have]].copy()
    if "ts" in scores:
        frame["day"] = pd.to_datetime(scores["ts"], utc=True).dt.floor("D")
    else:
        frame["day"] = 0
    agg = {c: "mean" if c == "lt7_pred" else "first" for c in have}
    out = frame.groupby(["user_id", "day"], sort=False).agg(agg).reset_index()
    if "ts" not in scores:
        out.attrs["ts_missing"] = True
    return out


def _user_mean_ci(
    values: np.ndarray, users: np.ndarray, weights: np.ndarray, level: float
) -> list[float]:
    num = weights @ np.bincount(users, weights=values, minlength=weights.shape[1])
    den = weights @ np.bincount(users, minlength=weights.shape[1]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return offline.interval(num / den, level)


def complete_windows(days: pd.DataFrame, last_day: pd.Timestamp | None, width: int) -> np.ndarray:
    """``(D,)`` bool: user-days whose ``width``-day LT window ends inside the logs.

    lt7 counts active days in ``[day, day + 7)``; for a day within 7 days of the end of the
    logs the future is cut off and lt7 is low for want of data, not of activity. Such
    user-days are left out (``last_day``: the last UTC day of the logs; ``None`` keeps all).
    """
    if last_day is None or "ts_missing" in days.attrs:
        return np.ones(len(days), dtype=bool)
    return (days["day"] <= last_day - pd.Timedelta(days=width - 1)).to_numpy()


def lt_summary(
    scores: pd.DataFrame,
    replicates: int,
    seed: int,
    level: float = 0.95,
    last_day: pd.Timestamp | None = None,
) -> dict[str, Any]:
    """LT from the logs: LT7/LT14 distributions over user-days with a complete window (see
    ``complete_windows``); with an LT head, its MAE and Spearman correlation against lt7 and
    the AUC of predicting "active on >= 5 of the next 7 days"."""
    if "lt7" not in scores or scores["lt7"].isna().all():
        return {"available": False, "reason": "the examples carry no lt7"}
    all_days = user_days(scores).dropna(subset=["lt7"])
    out: dict[str, Any] = {
        "available": True,
        "last_day": None if last_day is None else str(last_day),
    }
    for col, width in (("lt7", 7), ("lt14", 14)):
        if col not in all_days or all_days[col].isna().all():
            continue
        days = all_days[complete_windows(all_days, last_day, width)]
        v = days[col].to_numpy(dtype=np.float64)
        known = np.isfinite(v)
        entry: dict[str, Any] = {
            "user_days": int(known.sum()),
            "censored_user_days": int(len(all_days) - len(days)),
        }
        if known.any():
            users, num_users = offline.user_codes(days["user_id"].to_numpy()[known])
            weights = offline.bootstrap_user_weights(num_users, replicates, seed + 1)
            hist = np.bincount(v[known].astype(np.int64), minlength=width + 1)[1 : width + 1]
            entry |= {
                "mean": float(v[known].mean()),
                "mean_ci": _user_mean_ci(v[known], users, weights, level),
                "histogram": {str(d + 1): int(n) for d, n in enumerate(hist)},
            }
        out[col] = entry
    days = all_days[complete_windows(all_days, last_day, 7)]
    if "lt7_pred" not in days:
        out["head"] = {"available": False, "reason": "the bundle has no LT head"}
    elif len(days) < 3:
        out["head"] = {
            "available": False,
            "reason": "fewer than 3 user-days with a complete 7-day window in this split",
        }
    else:
        out["head"] = _head_summary(days, replicates, seed, level)
    return out


def _head_summary(days: pd.DataFrame, replicates: int, seed: int, level: float) -> dict[str, Any]:
    """The LT head against logged lt7 on user-days (MAE, Spearman, active-5 AUC)."""
    users, num_users = offline.user_codes(days["user_id"].to_numpy())
    weights = offline.bootstrap_user_weights(num_users, replicates, seed + 1)
    truth = days["lt7"].to_numpy(dtype=np.float64)
    pred = days["lt7_pred"].to_numpy(dtype=np.float64)
    active = (truth >= ACTIVE_DAYS).astype(np.float64)
    reps_rho = []
    for w in weights:
        rw = w[users]
        keep = rw > 0
        idx = np.repeat(np.flatnonzero(keep), rw[keep].astype(np.int64))
        reps_rho.append(_spearman(truth[idx], pred[idx]))
    tied = offline.TiedScores(pred)
    return {
        "available": True,
        "user_days": len(days),
        "lt7_mae": float(np.abs(pred - truth).mean()),
        "lt7_mae_ci": _user_mean_ci(np.abs(pred - truth), users, weights, level),
        "lt7_spearman": _spearman(truth, pred),
        "lt7_spearman_ci": offline.interval(np.array(reps_rho, dtype=np.float64), level),
        "active5_auc": offline.auc(active, pred),
        "active5_auc_ci": offline.interval(
            np.array([tied.weighted_auc(active, w[users]) for w in weights]), level
        ),
        "active5_base_rate": float(active.mean()),
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation; NaN when either side is constant (no order to compare)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def retrieval_summary(
    ranks: pd.DataFrame, ks: tuple[int, ...], replicates: int, seed: int, level: float = 0.95
) -> dict[str, Any]:
    """Recall@K and NDCG@K (one relevant item per positive pair) with user intervals."""
    users, num_users = offline.user_codes(ranks["user_id"].to_numpy())
    weights = offline.bootstrap_user_weights(num_users, replicates, seed)
    r = ranks["rank"].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {
        "pairs": len(ranks),
        "users": num_users,
        "corpus_items": int(ranks.attrs.get("corpus_items", 0)),
    }
    for k in ks:
        hit = (r < k).astype(np.float64)
        gain = np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
        out[f"recall@{k}"] = float(hit.mean()) if len(r) else float("nan")
        out[f"recall@{k}_ci"] = _user_mean_ci(hit, users, weights, level)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(r) else float("nan")
        out[f"ndcg@{k}_ci"] = _user_mean_ci(gain, users, weights, level)
    return out


def roc_points(scores: pd.DataFrame, max_points: int = 400) -> dict[str, list[float]]:
    """A thinned ROC curve (false/true positive rates) for the report's plot."""
    from sklearn.metrics import roc_curve

    y = scores["label"].to_numpy()
    if y.min() == y.max():
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(y, scores["score"].to_numpy())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def reliability(scores: pd.DataFrame, bins: int = 10) -> dict[str, list[float]]:
    """Reliability diagram: per equal-width score bin, mean prediction, observed rate, rows."""
    p = scores["score"].to_numpy(dtype=np.float64)
    y = scores["label"].to_numpy(dtype=np.float64)
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=bins) / rows
        rate = np.bincount(b, weights=y, minlength=bins) / rows
    keep = rows > 0
    return {
        "predicted": mean_p[keep].tolist(),
        "observed": rate[keep].tolist(),
        "rows": rows[keep].tolist(),
    }
