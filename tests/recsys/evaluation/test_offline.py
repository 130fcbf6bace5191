"""Offline metrics: scikit-learn as the reference, hand-computed GAUC / NE / calibration,
bootstrap intervals that cover the truth, and paired-comparison verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from recsys.evaluation import offline, summary


def _random_case(seed: int, rows: int = 3000, users: int = 150, signal: float = 1.0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, rows)
    y = (rng.uniform(size=rows) < 0.3).astype(np.float64)
    p = 1 / (1 + np.exp(-(rng.normal(size=rows) + signal * y - 1)))
    return u, y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_logloss_agree_with_sklearn_on_random_inputs(seed: int) -> None:
    u, y, p = _random_case(seed)
    m = offline.binary_metrics(y, p, u, 150)
    assert abs(m["auc"] - roc_auc_score(y, p)) <= 1e-9
    assert abs(m["logloss"] - log_loss(y, p)) <= 1e-9


def test_bootstrap_sums_reproduce_the_point_metrics_when_every_user_is_drawn_once() -> None:
    u, y, p = _random_case(3)
    point = offline.binary_metrics(y, p, u, 150)
    reps = offline.bootstrap_binary(y, p, u, np.ones((1, 150)))
    for name in offline.BINARY_METRICS:
        assert reps[name][0] == pytest.approx(point[name], abs=1e-9), name


def test_the_bootstrap_weighted_auc_equals_sklearns_weighted_auc_with_ties() -> None:
    u, y, p = _random_case(6)
    p = np.round(p, 2)  # ties
    w = np.random.default_rng(0).integers(0, 4, len(y)).astype(np.float64)
    got = offline.TiedScores(p).weighted_auc(y, w)
    assert abs(got - roc_auc_score(y, p, sample_weight=w)) <= 1e-9


def test_gauc_of_a_hand_computed_case() -> None:
    # user 0 (4 rows): pairs 0.9>0.1, 0.9>0.6, 0.4>0.1, 0.4<0.6 -> AUC 3/4
    # user 1: pos 0.2 < neg 0.3 -> 0/1, 2 rows
    # user 2: only positives -> excluded
    users = np.array([0, 0, 0, 0, 1, 1, 2])
    y = np.array([1, 0, 1, 0, 1, 0, 1], dtype=float)
    p = np.array([0.9, 0.1, 0.4, 0.6, 0.2, 0.3, 0.5])
    assert offline.gauc(users, y, p, 3) == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)


def test_gauc_counts_ties_within_a_user_as_one_half() -> None:
    users = np.zeros(4, dtype=np.int64)
    y = np.array([1, 0, 1, 0], dtype=float)
    p = np.array([0.5, 0.5, 0.7, 0.2])  # pairs: tie, 0.5>0.2, 0.7>0.5, 0.7>0.2 -> 3.5/4
    assert offline.gauc(users, y, p, 1) == pytest.approx(0.875)


def test_per_user_auc_equals_sklearn_for_each_user() -> None:
    u, y, p = _random_case(4, rows=2000, users=20)
    got, rows = offline.per_user_auc(u, y, np.round(p, 2), 20)  # rounding makes ties
    for user in range(20):
        mine = u == user
        assert rows[user] == mine.sum()
        assert got[user] == pytest.approx(roc_auc_score(y[mine], np.round(p, 2)[mine]), abs=1e-12)


def test_normalized_entropy_of_a_hand_computed_case() -> None:
    y = np.array([1.0, 0.0, 0.0, 0.0])
    p = np.array([0.25, 0.25, 0.25, 0.25])  # predicting the base rate: NE = 1
    assert offline.normalized_entropy(y, p) == pytest.approx(1.0)
    p2 = np.array([0.5, 0.1, 0.1, 0.1])
    ll = -(math.log(0.5) + 3 * math.log(0.9)) / 4
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert offline.normalized_entropy(y, p2) == pytest.approx(ll / h)


def test_calibration_is_predicted_over_observed_positives() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    assert offline.calibration(y, np.array([0.9, 0.3, 0.6, 0.2])) == pytest.approx(2.0 / 2.0)
    assert offline.calibration(y, np.array([0.2, 0.1, 0.2, 0.1])) == pytest.approx(0.6 / 2.0)
    assert math.isnan(offline.calibration(np.zeros(3), np.full(3, 0.5)))


def test_bootstrap_weights_draw_as_many_users_as_there_are() -> None:
    w = offline.bootstrap_user_weights(50, 7, seed=0)
    assert w.shape == (7, 50) and (w.sum(axis=1) == 50).all()
    assert np.array_equal(w, offline.bootstrap_user_weights(50, 7, seed=0))


def test_bootstrap_intervals_cover_the_population_value() -> None:
    """Draw 24 independent samples of 120 users from a population with known AUC and
    calibration; the 90 % intervals must cover the population values in most of them."""
    rng = np.random.default_rng(11)

    def sample(n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        per_user = rng.integers(2, 9, n_users)
        u = np.repeat(np.arange(n_users), per_user)
        bias = rng.normal(0, 0.7, n_users)[u]  # user effect: rows of a user are correlated
        p = 1 / (1 + np.exp(-(rng.normal(size=len(u)) + bias - 0.5)))
        y = (rng.uniform(size=len(u)) < p).astype(np.float64)
        return u, y, p

    u, y, p = sample(60_000)
    truth = {"auc": roc_auc_score(y, p), "calibration": p.sum() / y.sum()}
    covered = {"auc": 0, "calibration": 0}
    trials = 24
    for t in range(trials):
        u, y, p = sample(120)
        w = offline.bootstrap_user_weights(120, 150, seed=t)
        reps = offline.bootstrap_binary(y, p, u, w)
        for name in covered:
            lo, hi = offline.interval(reps[name], level=0.9)
            covered[name] += lo <= truth[name] <= hi
    for name, n in covered.items():
        assert n >= 0.7 * trials, (name, n)
    # and the intervals are not trivially wide
    assert np.diff(offline.interval(reps["auc"], 0.9))[0] < 0.2


def _comparison(candidate_signal: float, seed: int = 5):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 300, 6000)
    y = (rng.uniform(size=6000) < 0.3).astype(np.float64)
    noise = rng.normal(size=6000)
    base = 1 / (1 + np.exp(-(noise + 1.0 * y - 1)))
    cand = 1 / (1 + np.exp(-(noise + candidate_signal * y - 1)))
    w = offline.bootstrap_user_weights(300, 100, seed=0)
    return offline.compare_metrics(y, base, cand, users, w)


def test_a_model_with_more_signal_is_better_on_auc_and_the_weaker_one_worse() -> None:
    better = _comparison(2.0)
    assert better["auc"]["verdict"] == "better" and better["auc"]["delta"] > 0
    assert better["auc"]["delta_ci"][0] > 0
    worse = _comparison(0.3)
    assert worse["auc"]["verdict"] == "worse" and worse["auc"]["delta_ci"][1] < 0
    line = offline.verdict_line(better)
    assert line.startswith("candidate vs baseline: better on auc")


def test_the_same_model_gives_no_significant_difference() -> None:
    same = _comparison(1.0)
    for name, c in same.items():
        assert c["delta"] == 0.0 and c["verdict"] == "no significant difference", name


def test_verdict_reads_the_direction_of_each_metric() -> None:
    assert offline.verdict("logloss", [-0.02, -0.01]) == "better"
    assert offline.verdict("logloss", [0.01, 0.02]) == "worse"
    assert offline.verdict("auc", [-0.01, 0.02]) == "no significant difference"
    assert offline.verdict("calibration", [-0.2, -0.1]) == "better"  # |log calib| went down


def test_slices_split_new_and_returning_users_cold_and_warm_items_and_top_concepts() -> None:
    scores = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "c"],
            "item_id": ["x", "x", "y", "z"],
            "label": [1, 0, 1, 0],
            "score": [0.5] * 4,
            "concepts": [["jazz"], ["jazz", "rock"], [], None],
        }
    )
    train_users = pd.Series({"a": 3})
    train_items = pd.Series({"x": 10, "y": 2})
    masks = summary.slice_masks(scores, train_users, train_items, top_concepts=1)
    assert masks["user=returning"].tolist() == [True, False, True, False]
    assert masks["user=new"].tolist() == [False, True, False, True]
    assert masks["item=warm"].tolist() == [True, True, False, False]
    assert masks["item=cold"].tolist() == [False, False, True, True]
    assert masks["concept=jazz"].tolist() == [True, True, False, False]
    assert "concept=rock" not in masks  # only the top one


def test_retrieval_recall_and_ndcg_of_a_hand_computed_case() -> None:
    ranks = pd.DataFrame(
        {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "z"], "rank": [0, 3, 12]}
    )
    got = summary.retrieval_summary(ranks, (1, 10), replicates=20, seed=0)
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@10"] == pytest.approx(2 / 3)
    assert got["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    lo, hi = got["recall@10_ci"]
    assert 0 <= lo <= hi <= 1


def test_lt_summary_measures_the_head_against_logged_lt7_per_user_day() -> None:
    ts = pd.to_datetime(
        ["2024-01-01T10:00Z", "2024-01-01T11:00Z", "2024-01-02T10:00Z", "2024-01-01T09:00Z"]
    )
    scores = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "ts": ts,
            "lt7": [6, 6, 2, 5],
            "lt14": [10, 10, 3, 9],
            "lt7_pred": [5.0, 7.0, 3.0, 4.0],  # user-day means: 6, 3, 4
            "label": [1, 0, 1, 0],
            "score": [0.5] * 4,
        }
    )
    got = summary.lt_summary(scores, replicates=10, seed=0)
    assert got["lt7"]["user_days"] == 3 and got["head"]["user_days"] == 3
    assert got["lt7"]["histogram"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1, "6": 1, "7": 0}
    assert got["head"]["lt7_mae"] == pytest.approx((0 + 1 + 1) / 3)
    assert got["head"]["lt7_spearman"] == pytest.approx(1.0)  # same order: 2<5<6 vs 3<4<6
    # active >= 5 days: (6, pred 6) and (5, pred 4) positive, (2, pred 3) negative -> AUC 1
    assert got["head"]["active5_auc"] == pytest.approx(1.0)


def test_lt_metrics_leave_out_user_days_whose_window_runs_past_the_end_of_the_logs() -> None:
    days = pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-08", "2024-01-10"], utc=True)
    scores = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "ts": days + pd.Timedelta(hours=9),
            "lt7": [5, 4, 2, 1],  # the last two are cut off by the end of the logs
            "lt14": [9, 6, 2, 1],
            "label": [1, 0, 1, 0],
            "score": [0.5] * 4,
        }
    )
    last_day = pd.Timestamp("2024-01-11", tz="UTC")
    got = summary.lt_summary(scores, replicates=10, seed=0, last_day=last_day)
    # lt7 window [day, day + 7) inside the logs: day <= Jan 5
    assert got["lt7"]["user_days"] == 2 and got["lt7"]["censored_user_days"] == 2
    assert got["lt7"]["mean"] == pytest.approx(4.5)
    assert got["lt14"]["user_days"] == 0 and "mean" not in got["lt14"]


def test_clustered_auc_variance_with_one_row_per_user_is_delongs() -> None:
    rng = np.random.default_rng(8)
    y = (rng.uniform(size=400) < 0.4).astype(np.float64)
    p = np.round(rng.normal(size=400) + y, 1)
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = wins.mean(axis=1), wins.mean(axis=0)
    delong = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    got = offline.clustered_auc_variance(np.arange(400), y, p, 400)
    assert got == pytest.approx(delong, rel=0.01)  # K/(K-1) over all rows vs per class


def test_clustered_auc_interval_is_about_as_wide_as_the_user_bootstrap() -> None:
    u, y, p = _random_case(9, rows=4000, users=200)
    bias = np.random.default_rng(9).normal(0, 1, 200)[u]  # correlated rows within users
    p = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + bias)))
    reps = offline.bootstrap_binary(y, p, u, offline.bootstrap_user_weights(200, 400, seed=1))
    boot = np.diff(offline.interval(reps["auc"]))[0]
    a = offline.auc(y, p)
    closed = np.diff(offline.normal_interval(a, offline.clustered_auc_variance(u, y, p, 200)))[0]
    assert 0.75 < closed / boot < 1.33
