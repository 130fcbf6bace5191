"""The day loop of the simulated world: who is active, what they are shown, what they do.

Each day: users return with the retention model's probability; the active users, in blocks of
``BLOCK_USERS`` by index, get the policy's ranking of the live items as their feed, consumed
slate by slate across the day's sessions (a session continues where the previous one stopped);
the response model (``recsys.sources.response``) decides clicks, dwell and when each session
ends; the day's satisfaction feeds tomorrow's return probability.

Everything is vectorised with numpy over a block of users (loops are per day, per user block
and per session index only). Every random draw comes from ``stream_rng(seed, stream, day,
block)``, so a block's events depend only on the seed, the day and the block, and the order
of draws below is part of the output's definition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recsys.sources import response
from recsys.sources.policies import Policy
from recsys.sources.world import (
    DAY_MS,
    STREAM_ACTIVE,
    STREAM_FEEDBACK,
    STREAM_SESSIONS,
    World,
    stream_rng,
)

BLOCK_USERS = 2048  # users per block; part of the output's definition (random streams per block)
SECONDS_PER_IMPRESSION = 3.0
SESSION_START_WINDOW_S = 18 * 3600  # sessions start in the first 18 h of the day


@dataclass
class BlockEvents:
    """Events of one user block on one day (aligned arrays), sorted by (ts, user, item, kind)."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    ts_ms: np.ndarray  # int64 epoch milliseconds
    click: np.ndarray  # bool: False = impression, True = click
    dwell: np.ndarray  # float64 seconds (NaN for impressions)


@dataclass
class DayStats:
    """Totals of one simulated day (complete once the day's last block is done)."""

    day: int
    active: np.ndarray  # (U,) bool
    impressions: int = 0
    clicks: int = 0
    dwell_s: float = 0.0


@dataclass
class BlockOutcome:
    """What one block of active users did on one day."""

    satisfaction: np.ndarray  # (B,) float64
    impressions: int
    clicks: int
    dwell_s: float
    events: BlockEvents | None  # None unless events were asked for (or nothing was shown)


def ranked_feed(scores: np.ndarray, candidates: np.ndarray, length: int) -> np.ndarray:
    """Top ``length`` candidates per row by score, best first: ``(B, C) -> (B, length)``."""
    if length < scores.shape[1]:
        top = np.argpartition(-scores, length - 1, axis=1)[:, :length]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    return candidates[np.take_along_axis(top, order, 1)]


def simulate_block(
    world: World,
    policy: Policy,
    users: np.ndarray,
    candidates: np.ndarray,
    day: int,
    seed: int,
    block: int,
    emit: bool,
) -> BlockOutcome:
    """One day of sessions for the active ``users (B,)`` of one block (events only if ``emit``)."""
    cfg = world.cfg
    num_users, slate_size = len(users), cfg.slate_size
    session_rng = stream_rng(seed, STREAM_SESSIONS, day, block)
    feedback_rng = stream_rng(seed, STREAM_FEEDBACK, day, block)
    sessions_per_user = np.minimum(
        1 + session_rng.poisson(max(cfg.sessions_per_active_day - 1, 0), num_users),
        cfg.max_sessions_per_day,
    )
    num_slates = min(
        int(sessions_per_user.max()) * cfg.max_slates_per_session, len(candidates) // slate_size
    )
    if num_slates == 0:
        return BlockOutcome(np.zeros(num_users), 0, 0, 0.0, None)
    feed_length = num_slates * slate_size
    scores = np.asarray(policy(users, candidates, day), dtype=np.float64)
    if scores.shape != (num_users, len(candidates)):
        raise ValueError(
            f"policy returned scores of shape {scores.shape}, expected "
            f"{(num_users, len(candidates))} (users, candidates) on day {day}"
        )
    feed = ranked_feed(scores, candidates, feed_length)  # (B, F)

    # Immediate feedback.
    logit = world.pair_affinity(users[:, None], feed)
    position_in_slate = np.arange(feed_length) % slate_size
    click = feedback_rng.random((num_users, feed_length)) < response.click_probability(
        logit, position_in_slate, cfg.position_bias
    )
    dwell = response.dwell_seconds(logit, feedback_rng.standard_normal((num_users, feed_length)))

    # Leaving: which session (if any) shows each slate.
    slate_clicked = click.reshape(num_users, num_slates, slate_size).any(2)
    leaves_at_random = feedback_rng.random((num_users, num_slates)) < cfg.leave_prob_per_slate
    session_of_slate, session_first_slate = response.session_of_each_slate(
        slate_clicked,
        leaves_at_random,
        sessions_per_user,
        cfg.max_sessions_per_day,
        cfg.max_slates_per_session,
        cfg.leave_after_bad_slates,
    )
    session = np.repeat(session_of_slate, slate_size, axis=1)  # (B, F)
    shown = session >= 0
    click &= shown
    dwell = np.where(click, dwell, 0.0)

    satisfaction = response.satisfaction(dwell)
    impressions, clicks, dwell_s = int(shown.sum()), int(click.sum()), float(dwell.sum())
    if not emit:
        return BlockOutcome(satisfaction, impressions, clicks, dwell_s, None)
    ts_ms = _timestamps(
        world, day, session_rng, session, session_first_slate, shown, dwell, slate_size
    )
    events = _block_events(users, feed, ts_ms, click, dwell, shown)
    return BlockOutcome(satisfaction, impressions, clicks, dwell_s, events)


def _timestamps(
    world: World,
    day: int,
    session_rng: np.random.Generator,
    session: np.ndarray,
    session_first_slate: np.ndarray,
    shown: np.ndarray,
    dwell: np.ndarray,
    slate_size: int,
) -> np.ndarray:
    """Epoch ms of every feed position ``(B, F)``: sessions start at sorted random offsets in
    the first ``SESSION_START_WINDOW_S`` of the day; within a session each impression takes
    ``SECONDS_PER_IMPRESSION`` and a click adds its dwell before the next impression."""
    num_users = session.shape[0]
    session_start_s = np.sort(
        session_rng.random((num_users, world.cfg.max_sessions_per_day)) * SESSION_START_WINDOW_S,
        1,
    )
    cost_s = np.where(shown, SECONDS_PER_IMPRESSION + dwell, 0.0)
    elapsed_s = np.cumsum(cost_s, 1) - cost_s  # exclusive
    session_index = np.maximum(session, 0)
    first_position = np.take_along_axis(session_first_slate, session_index, 1) * slate_size
    within_session_s = elapsed_s - np.take_along_axis(elapsed_s, first_position, 1)
    seconds_into_day = np.take_along_axis(session_start_s, session_index, 1) + within_session_s
    day_start_ms = world.start_ms + day * DAY_MS
    return np.minimum(
        day_start_ms + np.round(seconds_into_day * 1000).astype(np.int64),
        day_start_ms + DAY_MS - 1,
    )


def _block_events(
    users: np.ndarray,
    feed: np.ndarray,
    ts_ms: np.ndarray,
    click: np.ndarray,
    dwell: np.ndarray,
    shown: np.ndarray,
) -> BlockEvents:
    """Impressions of the shown positions plus one click event per click, sorted."""
    num_users, feed_length = feed.shape
    user = np.broadcast_to(users[:, None], (num_users, feed_length))[shown]
    item, ts, clicked, dwell_shown = feed[shown], ts_ms[shown], click[shown], dwell[shown]
    all_user = np.concatenate([user, user[clicked]])
    all_item = np.concatenate([item, item[clicked]])
    all_ts = np.concatenate([ts, ts[clicked]])
    is_click = np.concatenate([np.zeros(len(user), bool), np.ones(int(clicked.sum()), bool)])
    value = np.concatenate([np.full(len(user), np.nan), dwell_shown[clicked]])
    order = np.lexsort((is_click, all_item, all_user, all_ts))
    return BlockEvents(
        all_user[order], all_item[order], all_ts[order], is_click[order], value[order]
    )


def run_days(
    world: World, policy: Policy, days: int, seed: int, emit: bool
) -> Iterator[tuple[DayStats, BlockEvents | None]]:
    """Simulate ``days`` days. Yields ``(stats, events)`` per user block as soon as it is
    simulated (only if ``emit``), then ``(stats, None)`` once the day is complete; so at most
    one block of events is alive at a time."""
    cfg = world.cfg
    num_users = world.num_users
    memory = np.ones(num_users)  # satisfaction memory; 1.0 = neutral
    for day in range(days):
        draw = stream_rng(seed, STREAM_ACTIVE, day).random(num_users)
        returns = response.return_probability(
            world.user_base_return, memory if day > 0 else None, cfg.return_satisfaction_weight
        )
        active = draw < returns
        stats = DayStats(day, active)
        candidates = world.live_items(day)
        satisfaction_today = np.zeros(num_users)
        for block, first_user in enumerate(range(0, num_users, BLOCK_USERS)):
            users = first_user + np.flatnonzero(active[first_user : first_user + BLOCK_USERS])
            if len(users) == 0:
                continue
            outcome = simulate_block(world, policy, users, candidates, day, seed, block, emit)
            satisfaction_today[users] = outcome.satisfaction
            stats.impressions += outcome.impressions
            stats.clicks += outcome.clicks
            stats.dwell_s += outcome.dwell_s
            if outcome.events is not None:
                yield stats, outcome.events
        keep = cfg.satisfaction_memory
        memory = keep * memory + (1 - keep) * satisfaction_today
        yield stats, None
