"""Ranking policies for the simulated world: ``policy(users, candidates, day) -> scores``.

A policy sees candidate item indices and returns scores; its ranking is the user's feed for the
day (``recsys.sources.day_loop``). ``logging_policy`` produced the logs; ``oracle_policy`` ranks
by the hidden affinity (an upper bound); ``random_policy`` and ``popularity_policy`` are baselines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.sources.world import STREAM_POLICY, World, stream_rng

Policy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""``policy(user_idx (U,) int64, candidate_idx (C,) int64, day) -> scores (U, C) float``."""


def random_policy(world: World, seed: int = 0) -> Policy:
    """Uniformly random rankings (fresh scores per call, deterministic in the call)."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        first = int(user_idx[0]) if len(user_idx) else 0
        rng = stream_rng(seed, STREAM_POLICY, day, first, len(user_idx))
        return rng.random((len(user_idx), len(candidate_idx)))

    return policy


def popularity_policy(world: World) -> Policy:
    """Most popular items first, the same ranking for every user."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        score = np.log(world.item_popularity[candidate_idx])
        return np.broadcast_to(score, (len(user_idx), len(candidate_idx)))

    return policy


def oracle_policy(world: World) -> Policy:
    """Ranks by the hidden true affinity (an upper bound no learned model reaches)."""

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        return world.affinity(user_idx, candidate_idx)

    return policy


def logging_policy(world: World, seed: int | None = None) -> Policy:
    """The policy that produced the logs: Plackett-Luce sampling (Gumbel top-k) with item
    probability ``(1 - exploration) * pop ** power / Z + exploration / C``."""
    cfg = world.cfg
    seed = cfg.seed if seed is None else seed

    def policy(user_idx: np.ndarray, candidate_idx: np.ndarray, day: int) -> np.ndarray:
        weight = world.item_popularity[candidate_idx] ** cfg.logging_popularity_power
        probability = (1 - cfg.exploration) * weight / weight.sum() + cfg.exploration / len(
            candidate_idx
        )
        first = int(user_idx[0]) if len(user_idx) else 0
        rng = stream_rng(seed, STREAM_POLICY, day, first, len(user_idx))
        return np.log(probability)[None, :] + rng.gumbel(size=(len(user_idx), len(candidate_idx)))

    return policy
