"""Replay: run a policy in the simulated world without keeping events, and measure it.

Long-term value is the point: a policy that shows better-matched items raises satisfaction,
so users return more often (the retention part of ``recsys.sources.response``). ``replay``
measures LT7 (active days in the first week of the users active on day 0), daily active users,
CTR and mean dwell, for comparing policies on the same day-0 cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.sources.day_loop import run_days
from recsys.sources.policies import Policy
from recsys.sources.world import World


@dataclass
class ReplayResult:
    """What a policy achieved in the simulated world.

    ``lt7`` is the mean, over users active on day 0, of their active days in days 0..6 (1..7);
    ``lt7_per_user`` holds those values (for statistical tests between policies).
    """

    lt7: float
    lt7_per_user: np.ndarray
    daily_active_users: list[int]
    ctr: float
    mean_dwell_s: float
    impressions: int
    clicks: int


def replay(world: World, policy: Policy, days: int, seed: int) -> ReplayResult:
    """Run ``policy`` in ``world`` for ``days`` days (no events kept) and measure LT7, DAU,
    CTR and mean dwell. Day-0 activity depends only on ``seed``, so every policy is measured
    on the same day-0 cohort."""
    if days < 1:
        raise ValueError(f"replay: days must be >= 1, got {days}")
    active_days = np.zeros(world.num_users, np.int64)
    cohort = None
    daily_active: list[int] = []
    impressions, clicks, dwell_s = 0, 0, 0.0
    for stats, _ in run_days(world, policy, days, seed, emit=False):  # day ends only
        if stats.day == 0:
            cohort = stats.active.copy()
        if stats.day < 7:
            active_days += stats.active
        daily_active.append(int(stats.active.sum()))
        impressions += stats.impressions
        clicks += stats.clicks
        dwell_s += stats.dwell_s
    assert cohort is not None
    lt7 = active_days[cohort].astype(np.float64)
    return ReplayResult(
        lt7=float(lt7.mean()) if len(lt7) else 0.0,
        lt7_per_user=lt7,
        daily_active_users=daily_active,
        ctr=clicks / impressions if impressions else 0.0,
        mean_dwell_s=dwell_s / clicks if clicks else 0.0,
        impressions=impressions,
        clicks=clicks,
    )
