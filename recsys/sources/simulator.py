"""The seeded synthetic world simulator: raw logs of a logging policy, in memory or as Parquet.

The simulator is five modules, each one job; this one writes their output and is the public
entry point (its names are the ones to import):

- ``recsys.sources.world``: users, creators and items (``World.build(cfg)``), hidden and
  visible, and the ``items`` / ``users`` tables;
- ``recsys.sources.response``: the KuaiSim-style response model: the affinity logit (one
  definition), clicks, dwell, leaving a session, returning tomorrow;
- ``recsys.sources.policies``: ``logging_policy`` (produced the logs), ``oracle_policy``,
  ``random_policy``, ``popularity_policy``;
- ``recsys.sources.day_loop``: the day loop over blocks of active users and their sessions;
- ``recsys.sources.replay``: ``replay(world, policy, days, seed)`` measures LT7, DAU, CTR.

``simulate`` returns ``RawLogs`` in memory; ``simulate_to_parquet`` streams the same events
block by block, so memory stays bounded for any number of events.

Worked example::

    cfg = SimulatorConfig(num_users=500, num_items=300, days=7, with_media=False)
    logs = simulate(cfg)        # RawLogs: ~86k impressions + ~5k clicks, 420 items, 500 users
    world = World.build(cfg)
    replay(world, oracle_policy(world), days=7, seed=0).lt7    # 4.40 active days of 7
    replay(world, random_policy(world), days=7, seed=0).lt7    # 3.92
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.atomic import atomic_dir
from recsys.config import PipelineConfig, SimulatorConfig
from recsys.contract import EVENTS, TS_TYPE
from recsys.sources.day_loop import BLOCK_USERS, BlockEvents, DayStats, run_days
from recsys.sources.policies import (
    Policy,
    logging_policy,
    oracle_policy,
    popularity_policy,
    random_policy,
)
from recsys.sources.raw_logs import RawLogs
from recsys.sources.replay import ReplayResult, replay
from recsys.sources.world import AGE_BUCKETS, COUNTRIES, DAY_MS, World

__all__ = [
    "AGE_BUCKETS",
    "BLOCK_USERS",
    "COUNTRIES",
    "DAY_MS",
    "Policy",
    "ReplayResult",
    "World",
    "logging_policy",
    "oracle_policy",
    "popularity_policy",
    "random_policy",
    "replay",
    "run_simulate",
    "scale_to_events",
    "simulate",
    "simulate_to_parquet",
]

EVENTS_SCHEMA = EVENTS.schema


def events_table(events: BlockEvents, user_ids: pa.Array, item_ids: pa.Array) -> pa.Table:
    """One block's events as an ``events`` table (contract schema); indices become ids."""
    return pa.table(
        {
            "user_id": pc.take(user_ids, pa.array(events.user)),
            "item_id": pc.take(item_ids, pa.array(events.item)),
            "ts": pa.array(events.ts_ms, TS_TYPE),
            "event": pc.take(
                pa.array(["impression", "click"]), pa.array(events.click.view(np.int8))
            ),
            "value": pa.array(events.dwell, pa.float64(), mask=~events.click),
        },
        schema=EVENTS_SCHEMA,
    )


def _logged_blocks(
    world: World, progress: bool = False
) -> Iterator[tuple[DayStats, pa.Table | None]]:
    """The logging policy's events, one table per user block, then ``(stats, None)`` per day."""
    user_ids, item_ids = world.user_ids(), world.item_ids()
    from tqdm import tqdm

    bar = tqdm(total=world.cfg.days, desc="simulate", unit="day", disable=not progress)
    days = run_days(world, logging_policy(world), world.cfg.days, world.cfg.seed, emit=True)
    with bar:
        for stats, events in days:
            if events is None:
                bar.set_postfix(active=int(stats.active.sum()), clicks=stats.clicks, refresh=False)
                bar.update(1)
                yield stats, None  # end of day
            else:
                yield stats, events_table(events, user_ids, item_ids)


def simulate(cfg: SimulatorConfig) -> RawLogs:
    """Simulate ``cfg.days`` days of the logging policy in memory; contract-valid raw logs.

    Events are ordered by day, then user block (``BLOCK_USERS`` users by index), then
    ``(ts, user, item)``, a click right after its impression. Users carry ``age_bucket`` and
    ``country``; items carry ``creator`` and ``created_ts`` (and media if ``cfg.with_media``).
    """
    world = World.build(cfg)
    tables = [table for _, table in _logged_blocks(world) if table is not None]
    events = pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()
    return RawLogs(events=events, items=world.items_table(), users=world.users_table())


def scale_to_events(cfg: SimulatorConfig, target_events: int) -> SimulatorConfig:
    """A copy of ``cfg`` whose number of users gives about ``target_events`` events.

    A pilot of up to 1,000 users over the configured days measures events per user (the
    logging policy's impressions + clicks), then users scale linearly. Days stay as configured.
    """
    pilot_users = min(cfg.num_users, 1000)
    pilot = World.build(cfg.model_copy(update={"num_users": pilot_users}))
    num_events = 0
    for stats, _ in run_days(pilot, logging_policy(pilot), cfg.days, cfg.seed, emit=False):
        num_events += stats.impressions + stats.clicks
    per_user = max(num_events / pilot_users, 1e-9)
    return cfg.model_copy(update={"num_users": max(1, int(round(target_events / per_user)))})


def simulate_to_parquet(
    cfg: SimulatorConfig,
    out_dir: str | Path,
    target_events: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Stream the simulation into ``out_dir`` (events/items/users ``.parquet``, atomically).

    Events are written block by block (one row group per user block and day), so memory is
    bounded by one block whatever the total. The event rows equal ``simulate(cfg).events``.
    ``target_events`` rescales the number of users first (``scale_to_events``). Returns a
    summary (counts, CTR, daily active users, seconds, the config used).
    """
    started = time.perf_counter()
    if target_events is not None:
        cfg = scale_to_events(cfg, target_events)
    world = World.build(cfg)
    num_events = num_clicks = 0
    daily_active: list[int] = []
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        with pq.ParquetWriter(tmp / "events.parquet", EVENTS_SCHEMA) as writer:
            for stats, table in _logged_blocks(world, progress=progress):
                if table is None:
                    daily_active.append(int(stats.active.sum()))
                    num_clicks += stats.clicks
                    continue
                writer.write_table(table)
                num_events += table.num_rows
        pq.write_table(world.items_table(), tmp / "items.parquet")
        pq.write_table(world.users_table(), tmp / "users.parquet")
    return {
        "path": str(out_dir),
        "events": num_events,
        "impressions": num_events - num_clicks,
        "clicks": num_clicks,
        "ctr": num_clicks / max(num_events - num_clicks, 1),
        "users": world.num_users,
        "items": world.num_items,
        "days": cfg.days,
        "daily_active_users": daily_active,
        "seconds": round(time.perf_counter() - started, 3),
        "config": cfg.model_dump(mode="json"),
    }


def run_simulate(cfg: PipelineConfig, out_dir: str | Path) -> dict[str, Any]:
    """CLI entry: write the simulator's raw logs to ``out_dir`` (streaming, progress bar)."""
    return simulate_to_parquet(cfg.simulator, out_dir, progress=True)
