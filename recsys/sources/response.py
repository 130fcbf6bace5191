"""The user response model of the simulated world (KuaiSim's three parts), as pure functions.

- **affinity**: the hidden click logit of a (user, item) pair (``affinity_logit``, the one
  definition, used by the day loop, by ``World.affinity`` / ``World.pair_affinity`` and so by
  the oracle policy)::

      affinity(u, i) = AFFINITY_BIAS + W_MATCH * interest_u . concepts_i + W_POP * popularity_z_i
                       + creator_quality_i + user_bias_u [+ taste_u . taste_i]

  The taste term (``SimulatorConfig.taste_dim`` latent factors, off by default) is
  collaborative taste that no feature shows: only ids and co-clicks reveal it.
- **immediate feedback**: every shown item is an impression; the user clicks with probability
  ``sigmoid(affinity) * (1 + position) ** -position_bias`` (``click_probability``); a click's
  dwell time is lognormal with a median that grows with affinity (``dwell_seconds``);
- **leaving the session**: a session is a run of slates; the user leaves after
  ``leave_after_bad_slates`` slates in a row without a click, at random after any slate, or after
  ``max_slates_per_session`` slates (``session_of_each_slate``);
- **retention**: the satisfaction of a day (``log1p`` of the dwell minutes, ``satisfaction``)
  feeds a per-user memory; the chance of being active tomorrow is
  ``sigmoid(base + w * (memory - 1))`` (``return_probability``).

Random draws are made by the caller (``recsys.sources.day_loop``) and passed in, so these
functions are deterministic and the order of draws is visible in one place.
"""

from __future__ import annotations

import numpy as np

# Ground-truth affinity logit and response constants (see the module docstring).
AFFINITY_BIAS = -3.0
W_MATCH = 10.0
W_POP = 0.3
DWELL_MEDIAN_S = 20.0
DWELL_AFFINITY = 0.35
DWELL_SIGMA = 0.7
DWELL_MAX_S = 1800.0


def sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit))


def affinity_logit(
    concept_match: np.ndarray,
    item_popularity_z: np.ndarray,
    item_creator_quality: np.ndarray,
    user_bias: np.ndarray,
    taste_match: np.ndarray | None,
) -> np.ndarray:
    """The hidden click logit from its terms, all broadcast to one shape ``S``.

    ``concept_match``: ``interest_u . concepts_i``; ``item_popularity_z``: standardised log
    popularity of the item; ``item_creator_quality``: its creator's quality; ``user_bias``: the
    user's click bias; ``taste_match``: ``taste_u . taste_i`` or ``None`` when taste is off.
    """
    logit = (
        AFFINITY_BIAS
        + W_MATCH * concept_match
        + W_POP * item_popularity_z
        + item_creator_quality
        + user_bias
    )
    if taste_match is not None:
        logit = logit + taste_match
    return logit


def click_probability(
    logit: np.ndarray, position_in_slate: np.ndarray, position_bias: float
) -> np.ndarray:
    """``sigmoid(logit)`` times the chance of examining the slate position (0 = top)."""
    examine = (1.0 + position_in_slate) ** -position_bias
    return sigmoid(logit) * examine


def dwell_seconds(logit: np.ndarray, standard_normal: np.ndarray) -> np.ndarray:
    """Lognormal dwell of a click, median ``DWELL_MEDIAN_S * exp(DWELL_AFFINITY * logit)``,
    clipped to ``[1, DWELL_MAX_S]``; ``standard_normal`` has the shape of ``logit``."""
    log_dwell = np.log(DWELL_MEDIAN_S) + DWELL_AFFINITY * logit + DWELL_SIGMA * standard_normal
    return np.exp(log_dwell).clip(1.0, DWELL_MAX_S)


def session_of_each_slate(
    slate_clicked: np.ndarray,
    leaves_at_random: np.ndarray,
    sessions_per_user: np.ndarray,
    max_sessions_per_day: int,
    max_slates_per_session: int,
    leave_after_bad_slates: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Walk each user's feed slate by slate, one session at a time.

    ``slate_clicked``, ``leaves_at_random``: ``(B, N)`` bool per user and slate (the feed has
    ``N`` slates); ``sessions_per_user``: ``(B,)`` sessions the user starts today. A session
    starts where the previous one stopped and ends after ``leave_after_bad_slates`` slates in a
    row without a click, after a random leave, after ``max_slates_per_session`` slates, or at the
    end of the feed. Returns ``session_of_slate (B, N)`` (session index, -1 = not shown) and
    ``session_first_slate (B, max_sessions_per_day)``.
    """
    num_users, num_slates = slate_clicked.shape
    user_row = np.arange(num_users)[:, None]
    window = np.arange(max_slates_per_session)
    next_slate = np.zeros(num_users, np.int64)
    session_of_slate = np.full((num_users, num_slates), -1, np.int64)
    session_first_slate = np.zeros((num_users, max_sessions_per_day), np.int64)
    for session in range(int(sessions_per_user.max())):
        live = (session < sessions_per_user) & (next_slate < num_slates)
        slate = next_slate[:, None] + window
        in_feed = slate < num_slates
        slate = np.minimum(slate, num_slates - 1)
        unclicked = ~slate_clicked[user_row, slate]
        run = np.cumsum(unclicked, 1)
        unclicked_streak = run - np.maximum.accumulate(np.where(unclicked, 0, run), 1)
        leave = (
            (unclicked_streak >= leave_after_bad_slates)
            | leaves_at_random[user_row, slate]
            | ~in_feed
        )
        leave[:, -1] = True
        length = np.where(live, np.argmax(leave, 1) + 1, 0)
        length = np.minimum(length, num_slates - next_slate)
        in_session = live[:, None] & (window < length[:, None]) & in_feed
        session_of_slate[user_row.repeat(len(window), 1)[in_session], slate[in_session]] = session
        session_first_slate[:, session] = next_slate
        next_slate = next_slate + length
    return session_of_slate, session_first_slate


def satisfaction(dwell_s: np.ndarray) -> np.ndarray:
    """A day's satisfaction per user: ``log1p`` of the dwell minutes; ``(B, F) -> (B,)``."""
    return np.log1p(dwell_s.sum(1) / 60.0)


def return_probability(
    base_return_logit: np.ndarray, memory: np.ndarray | None, satisfaction_weight: float
) -> np.ndarray:
    """Chance of being active today: ``sigmoid(base + w * (memory - 1))`` (memory 1 = neutral;
    ``None`` on the first day, when nobody has a memory yet)."""
    logit = base_return_logit
    if memory is not None:
        logit = logit + satisfaction_weight * (memory - 1.0)
    return sigmoid(logit)
