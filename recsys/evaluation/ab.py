"""Simulated A/B: a bundle's ranking policy against baselines in the world, measured by LT.

The world's users are split at random into one arm per policy (balanced, seeded); one run of
the simulator (``recsys.sources.day_loop.run_days``, one seed) serves every arm, each user's
feed ranked by their arm's policy. Arms see the same days, the same day-0 draw and the same
catalogue; users do not interact, so arms do not contaminate each other. Per arm: LT7 (active
days in days 0..6 of the users active on day 0, 1..7), LT14 when the run lasts 14 days, CTR;
per non-control arm: the lift over the control arm (the logging policy) with a bootstrap
interval (users resampled within each arm).

The offline counterpart: every policy also scores the test rows of the logs (oracle: the hidden
affinity; popularity; random; logging; the bundle: its predictions), giving an offline AUC per
policy; the Spearman correlation between the offline-AUC ordering and the LT7 ordering says
whether offline metrics predict the long-term outcome.

A bundle ranking policy (``bundle_policy``) builds, for each (user, candidate) pair, the raw
feature columns the ranker was trained on from the world's ``users``/``items`` tables through
the feature rule (``recsys.features.sparse_rule``), featurises them like the examples
(``table_to_batch``) and scores them. What the policy cannot see at serving time is left empty:
``s_history`` (the policy does not observe clicks) and dense features (nulls, i.e. the
training mean after standardisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from scipy.stats import kendalltau, spearmanr
from tqdm import tqdm

from recsys.bundle import Bundle
from recsys.config import PipelineConfig
from recsys.contract import TS_TYPE
from recsys.evaluation import offline
from recsys.evaluation.scoring import bundle_spec
from recsys.features.batcher import table_to_batch
from recsys.features.sparse_rule import sparse_feature_columns
from recsys.sources.day_loop import run_days
from recsys.sources.policies import (
    Policy,
    logging_policy,
    oracle_policy,
    popularity_policy,
    random_policy,
)
from recsys.sources.world import DAY_MS, World

CONTROL = "logging"
RANDOM = "random"
PAIRS_PER_CALL = 131_072  # pairs featurised and scored at once (memory bound)
REPLICATES = 500
NOON_MS = 12 * 3_600_000


class BundlePolicy:
    """``policy(users (U,), candidates (C,), day) -> (U, C)`` logits of a ranker bundle."""

    def __init__(self, world: World, bundle: Bundle) -> None:
        self.world, self.bundle = world, bundle
        self.spec = bundle_spec(bundle)
        user_feats = [f for f in self.spec.sparse if f in self.spec.user]
        item_feats = [f for f in self.spec.sparse if f in self.spec.item]
        self.context_feats = [
            f for f in self.spec.sparse if f not in self.spec.user and f not in self.spec.item
        ]
        users = world.users_table()
        users = users.append_column(
            "history", pa.array([[]] * users.num_rows, pa.list_(pa.string()))
        )
        self.users = pa.table(sparse_feature_columns(users, user_feats))
        self.items = pa.table(sparse_feature_columns(world.items_table(), item_feats))
        self._context: dict[int, dict[str, pa.Array]] = {}

    def context(self, day: int) -> dict[str, pa.Array]:
        """Context features (hour, weekday) of a feed served at noon on ``day``."""
        if day not in self._context:
            ts = pa.array([self.world.start_ms + day * DAY_MS + NOON_MS], TS_TYPE)
            frame = pa.table({"ts": ts, "history": pa.array([[]], pa.list_(pa.string()))})
            self._context[day] = sparse_feature_columns(frame, self.context_feats)
        return self._context[day]

    def pairs(self, user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> pa.Table:
        """The raw feature table of every (user, candidate) pair, user-major."""
        n_u, n_c = len(user_idx), len(candidate_idx)
        cols: dict[str, pa.Array] = {}
        users = self.users.take(pa.array(np.repeat(user_idx, n_c)))
        items = self.items.take(pa.array(np.tile(candidate_idx, n_u)))
        for name in self.spec.sparse:
            if name in users.column_names:
                cols[name] = users.column(name)
            elif name in items.column_names:
                cols[name] = items.column(name)
            else:
                cols[name] = self.context(day)[name].take(pa.array(np.zeros(n_u * n_c, np.int64)))
        for name in self.spec.dense:
            cols[name] = pa.nulls(n_u * n_c, pa.float32())
        return pa.table(cols)

    @torch.inference_mode()
    def __call__(self, user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        out = np.empty((len(user_idx), len(candidate_idx)), dtype=np.float64)
        step = max(1, PAIRS_PER_CALL // max(len(candidate_idx), 1))
        for lo in range(0, len(user_idx), step):
            block = user_idx[lo : lo + step]
            batch = table_to_batch(self.pairs(block, candidate_idx, day), self.spec)
            logits = self.bundle.model(batch.sparse, batch.dense).logits
            out[lo : lo + step] = logits.double().numpy().reshape(len(block), -1)
        return out


def baseline_policies(world: World, seed: int) -> dict[str, Policy]:
    return {
        "logging": logging_policy(world),
        "random": random_policy(world, seed),
        "popularity": popularity_policy(world),
        "oracle": oracle_policy(world),
    }


def assign_arms(num_users: int, arms: int, seed: int) -> np.ndarray:
    """``(U,)`` arm index per user: a seeded permutation cut into balanced arms."""
    order = np.random.default_rng(seed).permutation(num_users)
    arm = np.empty(num_users, dtype=np.int64)
    arm[order] = np.arange(num_users) % arms
    return arm


def routed_policy(policies: list[Policy], arm_of_user: np.ndarray) -> Policy:
    """One policy that ranks each user's feed with the policy of the user's arm."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        out = np.empty((len(user_idx), len(candidate_idx)), dtype=np.float64)
        arms = arm_of_user[user_idx]
        for a, p in enumerate(policies):
            rows = np.flatnonzero(arms == a)
            if len(rows):
                out[rows] = p(user_idx[rows], candidate_idx, day)
        return out

    return policy


def run_arms(
    world: World, policies: Mapping[str, Policy], days: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Run all arms in one simulation; per-user active-day counts and the day-0 cohort."""
    names = list(policies)
    arm = assign_arms(world.num_users, len(names), seed)
    routed = routed_policy([policies[n] for n in names], arm)
    active7 = np.zeros(world.num_users, np.int64)
    active14 = np.zeros(world.num_users, np.int64)
    cohort = np.zeros(world.num_users, bool)
    bar = tqdm(total=days, desc="simulated A/B", unit="day", disable=not progress)
    for stats, _ in run_days(world, routed, days, seed, emit=False):
        if stats.day == 0:
            cohort = stats.active.copy()
        if stats.day < 7:
            active7 += stats.active
        if stats.day < 14:
            active14 += stats.active
        bar.update(1)
    bar.close()
    return {"names": names, "arm": arm, "cohort": cohort, "lt7": active7, "lt14": active14}


def _arm_replicates(values: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    if len(values) == 0:
        return np.full(replicates, np.nan)
    w = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=replicates)
    return (w @ values) / len(values)


def arm_table(
    run: Mapping[str, Any],
    days: int,
    replicates: int,
    seed: int,
    level: float = 0.95,
    control: str = CONTROL,
) -> list[dict[str, Any]]:
    """Per arm: users, LT7 (and LT14) means with intervals, lift over the ``control`` arm."""
    rng = np.random.default_rng(seed)
    names: list[str] = run["names"]
    metrics = ["lt7"] + (["lt14"] if days >= 14 else [])
    reps: dict[tuple[str, str], np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for a, name in enumerate(names):
        members = (run["arm"] == a) & run["cohort"]
        row: dict[str, Any] = {"policy": name, "users": int(members.sum())}
        for m in metrics:
            v = run[m][members].astype(np.float64)
            row[m] = float(v.mean()) if len(v) else float("nan")
            reps[(name, m)] = _arm_replicates(v, replicates, rng)
            row[f"{m}_ci"] = offline.interval(reps[(name, m)], level)
        rows.append(row)
    control = control if control in names else names[0]
    base = next(r for r in rows if r["policy"] == control)
    for row in rows:
        for m in metrics:
            key = "lift" if m == "lt7" else f"{m}_lift"
            row[key] = row[m] - base[m]
            diff = reps[(row["policy"], m)] - reps[(control, m)]
            row[f"{key}_ci"] = (
                [0.0, 0.0] if row["policy"] == control else offline.interval(diff, level)
            )
        if RANDOM in names and control != RANDOM and row["policy"] != RANDOM:
            # the floor every policy should clear, whatever the control
            rand = next(r for r in rows if r["policy"] == RANDOM)
            row["lift_vs_random"] = row["lt7"] - rand["lt7"]
            diff = reps[(row["policy"], "lt7")] - reps[(RANDOM, "lt7")]
            row["lift_vs_random_ci"] = offline.interval(diff, level)
    return rows


def policy_offline_metrics(
    world: World, policies: Mapping[str, Policy], scores: pd.DataFrame
) -> dict[str, dict[str, float]]:
    """Offline AUC and GAUC of each policy's scores on the test rows whose ids the world knows
    (``u<idx>`` / ``i<idx>``). The bundle's own score column is used for ``"bundle"``."""
    u = pd.to_numeric(scores["user_id"].str.removeprefix("u"), errors="coerce")
    i = pd.to_numeric(scores["item_id"].str.removeprefix("i"), errors="coerce")
    ok = (u.notna() & i.notna() & (u < world.num_users) & (i < world.num_items)).to_numpy()
    if not ok.any():
        return {}
    y = scores["label"].to_numpy(np.float64)[ok]
    ui, ii = u[ok].to_numpy(np.int64), i[ok].to_numpy(np.int64)
    codes, num_users = offline.user_codes(ui)
    day = np.zeros(len(ui), np.int64)
    if "ts" in scores:
        ts = pd.to_datetime(scores["ts"], utc=True)[ok].astype("int64").to_numpy() // 1_000_000
        day = np.maximum((ts - world.start_ms) // DAY_MS, 0)
    out: dict[str, dict[str, float]] = {}
    for name, policy in policies.items():
        if name == "bundle":
            s = scores["score"].to_numpy(np.float64)[ok]
        else:
            s = np.empty(len(ui))
            for d in np.unique(day):
                rows = np.flatnonzero(day == d)
                s[rows] = _pair_scores(policy, ui[rows], ii[rows], int(d))
        out[name] = {"auc": offline.auc(y, s), "gauc": offline.gauc(codes, y, s, num_users)}
    return out


def _pair_scores(policy: Policy, users: np.ndarray, items: np.ndarray, day: int) -> np.ndarray:
    """Diagonal of the policy's (U, C) matrix for aligned pairs, in chunks."""
    out = np.empty(len(users))
    for lo in range(0, len(users), 512):
        u, i = users[lo : lo + 512], items[lo : lo + 512]
        out[lo : lo + 512] = np.diagonal(policy(u, i, day))
    return out


def simulated_ab(
    cfg: PipelineConfig,
    bundle: Bundle,
    *,
    days: int = 7,
    scores: pd.DataFrame | None = None,
    extra: Mapping[str, Policy] | None = None,
    replicates: int = REPLICATES,
    seed: int | None = None,
    world: World | None = None,
    control: str = CONTROL,
    progress: bool = True,
) -> dict[str, Any]:
    """Replay the bundle's ranking policy and the baselines (and ``extra`` policies, e.g.
    another bundle's) in arms of the configured world for ``days`` days; LT per arm, lift
    over the logging policy with intervals, and (given the test ``scores``) the agreement of
    offline AUC and LT orderings."""
    world = world or World.build(cfg.simulator)
    seed = cfg.simulator.seed if seed is None else seed
    policies: dict[str, Policy] = {
        **baseline_policies(world, seed),
        "bundle": BundlePolicy(world, bundle),
    }
    policies.update(extra or {})
    run = run_arms(world, policies, days, seed, progress)
    arms = arm_table(run, days, replicates, seed, control=control)
    result: dict[str, Any] = {
        "days": days,
        "seed": seed,
        "users": world.num_users,
        "control": control,
        "arms": arms,
    }
    if scores is not None:
        measured = policy_offline_metrics(world, policies, scores)
        for arm in arms:
            arm.update(measured.get(arm["policy"], {}))
        result["offline_vs_lt"] = ordering_agreement(
            {name: m["auc"] for name, m in measured.items()}, arms
        )
    return result


def ordering_agreement(aucs: Mapping[str, float], arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman and Kendall correlation of offline AUC and LT7 over the policies that have both."""
    lt = {a["policy"]: a["lt7"] for a in arms}
    names = [n for n in lt if n in aucs and np.isfinite(aucs[n])]
    x, y = [aucs[n] for n in names], [lt[n] for n in names]
    rho = float(spearmanr(x, y).statistic) if len(names) >= 3 else float("nan")
    tau = float(kendalltau(x, y).statistic) if len(names) >= 3 else float("nan")
    return {
        "policies": names,
        "offline_auc": dict(zip(names, x, strict=True)),
        "lt7": dict(zip(names, y, strict=True)),
        "spearman": rho,
        "kendall": tau,
        "agree": bool(rho > 0) if np.isfinite(rho) else None,
    }
