"""Offline metrics of scored examples, with user-level bootstrap confidence intervals.

Inputs are aligned arrays over ``N`` scored rows: ``labels`` ``(N,)`` in {0, 1}, ``scores``
``(N,)`` predicted probabilities, ``users`` ``(N,)`` integer user codes in ``[0, U)``
(``user_codes``). AUC and log loss come from scikit-learn; what it lacks is written here:

- GAUC: the impression-weighted mean of per-user AUC over users who have both classes
  (``sum_u n_u * auc_u / sum_u n_u``, ``n_u`` the user's rows);
- NE (normalised entropy): log loss divided by the entropy of the base rate
  ``-(r log r + (1 - r) log(1 - r))``, ``r = sum(y) / N`` (1.0 = no better than the base rate);
- calibration: ``sum(p) / sum(y)`` (1.0 = as many predicted as observed positives);
- the bootstrap: ``B`` replicates, each drawing ``U`` users with replacement (a user's rows
  travel together, since rows of one user are not independent); a replicate weights each row
  by how often its user was drawn. Log loss, NE, calibration and GAUC are sums of per-user
  statistics, so all replicates of them are one matrix product; a replicate's AUC is the
  weighted AUC over the scores sorted once (``TiedScores``, equal to scikit-learn's weighted
  AUC). Intervals are percentile intervals.

Paired comparison (``compare_metrics``): two score arrays on the same rows, the same
replicates for both, so each replicate gives one delta and the interval of the deltas decides
the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

# Probabilities are clipped into [EPS, 1 - EPS] before any log (the same clip for sklearn's
# log loss and the per-user sums, so they agree to rounding).
EPS = 1e-7
BINARY_METRICS = ("auc", "gauc", "logloss", "ne", "calibration")
# +1: higher is better; -1: lower is better; 0: closer to 1.0 is better (calibration).
DIRECTION = {
    "auc": 1,
    "gauc": 1,
    "logloss": -1,
    "ne": -1,
    "calibration": 0,
    "lt7_mae": -1,
    "lt7_spearman": 1,
    "active5_auc": 1,
}


def user_codes(user_ids: Sequence[object] | np.ndarray) -> tuple[np.ndarray, int]:
    """``(codes (N,) int64 in [0, U), U)``: each distinct user id numbered by first appearance."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(user_ids, dtype=object)), sort=False)
    if (codes < 0).any():
        raise ValueError(f"user_codes: {int((codes < 0).sum())} rows have a null user id")
    return codes.astype(np.int64), len(uniques)


def _clip(scores: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC (scikit-learn); NaN when one class is absent (or has zero weight)."""
    y = np.asarray(labels)
    if weights is not None:
        keep = weights > 0
        y, scores, weights = y[keep], np.asarray(scores)[keep], weights[keep]
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, scores, sample_weight=weights))


def logloss(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (scikit-learn) of probabilities clipped to [EPS, 1 - EPS]."""
    if len(labels) == 0:
        return float("nan")
    return float(log_loss(labels, _clip(scores), sample_weight=weights, labels=[0, 1]))


def entropy(rate: float) -> float:
    """Binary entropy (nats) of a base rate; NaN for a rate of 0 or 1 (nothing to predict)."""
    if not 0.0 < rate < 1.0:
        return float("nan")
    return float(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))


def normalized_entropy(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Log loss ÷ entropy of the (weighted) base rate."""
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    rate = float((w * y).sum() / w.sum()) if w.sum() else float("nan")
    return logloss(labels, scores, weights) / entropy(rate)


def calibration(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Σ predictions ÷ Σ labels (NaN without positives)."""
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    positives = float((w * y).sum())
    return (
        float((w * np.asarray(scores, dtype=np.float64)).sum() / positives)
        if positives
        else float("nan")
    )


def per_user_auc(
    users: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(auc_u (U,), rows_u (U,))``: each user's AUC (NaN without both classes), rows per user.

    Mann-Whitney with average ranks for ties, all users at once: rank scores within each user
    (pandas grouped rank), then ``auc_u = (R+ - n+(n+ + 1)/2) / (n+ n-)`` with ``R+`` the sum of
    the positives' ranks.
    """
    y = np.asarray(labels, dtype=np.float64)
    ranks = (
        pd.Series(np.asarray(scores, dtype=np.float64))
        .groupby(np.asarray(users))
        .rank(method="average")
        .to_numpy()
    )
    rows = np.bincount(users, minlength=num_users).astype(np.float64)
    pos = np.bincount(users, weights=y, minlength=num_users)
    neg = rows - pos
    pos_rank_sum = np.bincount(users, weights=ranks * y, minlength=num_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc_u = (pos_rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    auc_u[(pos == 0) | (neg == 0)] = np.nan
    return auc_u, rows


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_users: int) -> float:
    """Impression-weighted mean per-user AUC over users with both classes (NaN if none)."""
    auc_u, rows = per_user_auc(users, labels, scores, num_users)
    valid = np.isfinite(auc_u)
    if not valid.any():
        return float("nan")
    return float((rows[valid] * auc_u[valid]).sum() / rows[valid].sum())


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, users: np.ndarray, num_users: int
) -> dict[str, float]:
    """AUC, GAUC, log loss, NE, calibration, plus rows, users and base rate."""
    y = np.asarray(labels, dtype=np.float64)
    return {
        "auc": auc(y, scores),
        "gauc": gauc(users, y, scores, num_users),
        "logloss": logloss(y, scores),
        "ne": normalized_entropy(y, scores),
        "calibration": calibration(y, scores),
        "rows": float(len(y)),
        "users": float(len(np.unique(users))),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# bootstrap


def bootstrap_user_weights(num_users: int, replicates: int, seed: int) -> np.ndarray:
    """``(B, U)`` float64: how many times each user is drawn in each replicate (``U`` draws
    with replacement per replicate; each row sums to ``U``)."""
    rng = np.random.default_rng(seed)
    if num_users == 0:
        return np.zeros((replicates, 0))
    return rng.multinomial(num_users, np.full(num_users, 1.0 / num_users), size=replicates).astype(
        np.float64
    )


@dataclass
class UserSums:
    """Per-user sufficient statistics of one score array (each ``(U,)``)."""

    rows: np.ndarray
    positives: np.ndarray
    predicted: np.ndarray
    logloss: np.ndarray
    auc: np.ndarray  # per-user AUC, NaN without both classes

    @classmethod
    def of(
        cls, users: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_users: int
    ) -> UserSums:
        y = np.asarray(labels, dtype=np.float64)
        p = _clip(scores)
        ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        auc_u, rows = per_user_auc(users, y, scores, num_users)
        return cls(
            rows=rows,
            positives=np.bincount(users, weights=y, minlength=num_users),
            predicted=np.bincount(
                users, weights=np.asarray(scores, np.float64), minlength=num_users
            ),
            logloss=np.bincount(users, weights=ll, minlength=num_users),
            auc=auc_u,
        )


def bootstrap_binary(
    labels: np.ndarray,
    scores: np.ndarray,
    users: np.ndarray,
    weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each binary metric over each replicate: ``{name: (B,)}``.

    ``weights``: ``(B, U)`` from ``bootstrap_user_weights`` (users coded over the full table,
    so a slice of rows uses the same replicates as the whole).
    """
    num_users = weights.shape[1]
    y = np.asarray(labels, dtype=np.float64)
    s = UserSums.of(users, y, scores, num_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = weights @ s.rows
        pos = weights @ s.positives
        ll = (weights @ s.logloss) / n
        rate = pos / n
        ent = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
        valid = np.isfinite(s.auc)
        gauc_num = weights[:, valid] @ (s.rows[valid] * s.auc[valid])
        gauc_den = weights[:, valid] @ s.rows[valid]
        out = {
            "logloss": ll,
            "ne": ll / ent,
            "calibration": (weights @ s.predicted) / pos,
            "gauc": gauc_num / gauc_den,
        }
    tied = TiedScores(scores)
    out["auc"] = np.array([tied.weighted_auc(y, w[users]) for w in weights])
    return out


class TiedScores:
    """Scores grouped into distinct values once, for many weighted AUCs of the same rows.

    ``weighted_auc`` is the AUC with row weights (a bootstrap replicate): a positive beats the
    weight of every negative with a lower score and half of those with the same score, the
    definition scikit-learn's ``roc_auc_score(..., sample_weight=w)`` computes (tested equal),
    at O(N) per call after one sort instead of a sort per replicate.
    """

    def __init__(self, scores: np.ndarray) -> None:
        values, self.group = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
        self.groups = len(values)

    def weighted_auc(self, labels: np.ndarray, weights: np.ndarray) -> float:
        y = np.asarray(labels, dtype=np.float64)
        pos = np.bincount(self.group, weights=weights * y, minlength=self.groups)
        neg = np.bincount(self.group, weights=weights * (1 - y), minlength=self.groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return float("nan")
        neg_below = np.cumsum(neg) - neg
        return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def clustered_auc_variance(
    users: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_users: int
) -> float:
    """Variance of the AUC with rows clustered by user (Obuchowski 1997), the closed form that
    the Spark job uses where re-sorting for every bootstrap replicate is too costly.

    Placements: a positive's ``V10`` is the share of negatives below it (ties one half), a
    negative's ``V01`` the share of positives above it. Per user ``k``: ``V10_k``, ``V01_k``
    their sums, ``m_k``, ``n_k`` the user's positives and negatives; ``K`` users, ``M``, ``N``
    positives and negatives in all::

        S10 = K / ((K - 1) M) * sum_k (V10_k - m_k A)^2
        S01 = K / ((K - 1) N) * sum_k (V01_k - n_k A)^2
        S11 = K / (K - 1) * sum_k (V10_k - m_k A) (V01_k - n_k A)
        var(A) = S10 / M + S01 / N + 2 S11 / (M N)

    With one row per user this is DeLong's variance.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    values, group = np.unique(p, return_inverse=True)
    pos = np.bincount(group, weights=y, minlength=len(values))
    neg = np.bincount(group, weights=1 - y, minlength=len(values))
    m_all, n_all = pos.sum(), neg.sum()
    present = np.bincount(users, minlength=num_users) > 0
    k = int(present.sum())
    if m_all == 0 or n_all == 0 or k < 2:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    pos_above = m_all - np.cumsum(pos)
    a = float((pos * (neg_below + 0.5 * neg)).sum() / (m_all * n_all))
    v10 = (neg_below + 0.5 * neg)[group] / n_all * y
    v01 = (pos_above + 0.5 * pos)[group] / m_all * (1 - y)
    d10 = np.bincount(users, weights=v10, minlength=num_users) - a * np.bincount(
        users, weights=y, minlength=num_users
    )
    d01 = np.bincount(users, weights=v01, minlength=num_users) - a * np.bincount(
        users, weights=1 - y, minlength=num_users
    )
    scale = k / (k - 1)
    s10 = scale / m_all * (d10**2).sum()
    s01 = scale / n_all * (d01**2).sum()
    s11 = scale * (d10 * d01).sum()
    return float(s10 / m_all + s01 / n_all + 2 * s11 / (m_all * n_all))


def normal_interval(point: float, variance: float, level: float = 0.95) -> list[float]:
    """``point ± z * sqrt(variance)`` (NaNs when the variance is undefined)."""
    from scipy.stats import norm

    if not (math.isfinite(point) and math.isfinite(variance)) or variance < 0:
        return [float("nan"), float("nan")]
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(variance)
    return [point - half, point + half]


def interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval ``[lo, hi]`` of the finite replicates (NaNs when none)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(r, [tail, 100 - tail])
    return [float(lo), float(hi)]


def with_intervals(
    point: Mapping[str, float], replicates: Mapping[str, np.ndarray], level: float = 0.95
) -> dict[str, float | list[float]]:
    """``point`` plus ``<name>_ci: [lo, hi]`` for every metric that has replicates."""
    out: dict[str, float | list[float]] = dict(point)
    for name, reps in replicates.items():
        out[f"{name}_ci"] = interval(reps, level)
    return out


# ---------------------------------------------------------------------------------------------
# paired comparison


def verdict(metric: str, delta_ci: Sequence[float], calib_delta: float | None = None) -> str:
    """``better`` / ``worse`` / ``no significant difference`` for candidate minus baseline.

    The interval must exclude zero. For calibration the delta is of ``|log(calibration)|``
    (distance from perfect), so lower is better.
    """
    lo, hi = delta_ci
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return "no significant difference"
    direction = DIRECTION.get(metric, 1)
    if direction == 0:
        direction = -1
    improved = lo > 0 if direction > 0 else hi < 0
    return "better" if improved else "worse"


def _miscalibration(values: np.ndarray | float) -> np.ndarray:
    return np.abs(np.log(np.asarray(values, dtype=np.float64)))


def compare_metrics(
    labels: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    users: np.ndarray,
    weights: np.ndarray,
    level: float = 0.95,
) -> dict[str, dict[str, object]]:
    """Per binary metric: baseline, candidate, delta (candidate - baseline), paired-bootstrap
    interval of the delta, and a verdict. Calibration compares ``|log(calibration)|``."""
    num_users = weights.shape[1]
    a = binary_metrics(labels, baseline, users, num_users)
    b = binary_metrics(labels, candidate, users, num_users)
    ra = bootstrap_binary(labels, baseline, users, weights)
    rb = bootstrap_binary(labels, candidate, users, weights)
    out: dict[str, dict[str, object]] = {}
    for name in BINARY_METRICS:
        if name == "calibration":
            delta = float(_miscalibration(b[name]) - _miscalibration(a[name]))
            reps = _miscalibration(rb[name]) - _miscalibration(ra[name])
            what = "|log calibration|"
        else:
            delta = b[name] - a[name]
            reps = rb[name] - ra[name]
            what = name
        ci = interval(reps, level)
        out[name] = {
            "baseline": a[name],
            "candidate": b[name],
            "compared": what,
            "delta": delta,
            "delta_ci": ci,
            "verdict": verdict(name, ci),
        }
    return out


def verdict_line(comparison: Mapping[str, Mapping[str, object]], primary: str = "auc") -> str:
    """One line: the primary metric's verdict, then each metric's delta and interval."""
    head = comparison[primary]
    parts = [
        f"{name} {float(c['delta']):+.4f} [{float(c['delta_ci'][0]):+.4f}, "  # type: ignore[index]
        f"{float(c['delta_ci'][1]):+.4f}] {c['verdict']}"  # type: ignore[index]
        for name, c in comparison.items()
    ]
    return f"candidate vs baseline: {head['verdict']} on {primary}; " + "; ".join(parts)
