"""``OnlineFeatures``: the latest feature rows of users and items, as materialised.

Rows come from ``spark_jobs/materialize_features.py`` (layout in ``recsys.online_features``):
from Redis when the server has a Redis tier and a complete materialised version there, else
from the on-disk release (``<output_dir>/online/features``), which every materialisation
writes. The disk release is resolved once per ``refresh()`` (the server's reload loop), so
one answer never mixes two releases; a missing directory means no online features (the
catalogues then answer alone).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.online_features import FEATURES, TABLES
from serving.cache import RedisTier
from serving.features import Catalogue

log = logging.getLogger(__name__)

Row = dict[str, Any]


class OnlineFeatures:
    """Rows by id from Redis (``namespace``) first, else from the release under ``root``."""

    def __init__(self, root: str | None, redis: RedisTier | None, namespace: str) -> None:
        self.root, self.redis, self.namespace = root, redis, namespace
        self._disk: tuple[str, dict[str, Catalogue]] | None = None

    @property
    def disk_version(self) -> str | None:
        return None if self._disk is None else self._disk[0]

    def refresh(self) -> bool:
        """Load the current on-disk release if it changed (blocking); True when it did."""
        if not self.root:
            return False
        current = Path(self.root) / "current"
        if not current.exists():
            return False
        release = Path(os.path.realpath(current))
        version = release.name
        if self._disk is not None and self._disk[0] == version:
            return False
        try:
            tables = {
                kind: Catalogue.load(release / FEATURES / table, kind)
                for kind, table in TABLES.items()
            }
        except (OSError, ValueError) as e:  # a release swept while loading: keep the old one
            log.error("online features %s not loaded (%s); keeping %s", release, e, self._disk)
            return False
        self._disk = (version, tables)
        log.info("online features: release %s", version)
        return True

    async def version(self) -> str | None:
        """The version ``rows`` reads now: Redis's pointer, else the disk release's."""
        if self.redis is not None:
            version = await self.redis.feature_version(self.namespace)
            if version is not None:
                return version
        return self.disk_version

    async def redis_rows(
        self, kind: str, ids: Sequence[str]
    ) -> tuple[list[Row | None], str] | None:
        """Rows from Redis and their version; None when Redis cannot answer (read the disk)."""
        if self.redis is None:
            return None
        got = await self.redis.read_rows(self.namespace, kind, ids)
        if got is None:
            return None
        version, rows = got
        return rows, version

    def disk_rows(self, kind: str, ids: Sequence[str]) -> tuple[list[Row | None], str | None]:
        """Rows from the on-disk release (blocking: call it off the event loop) and its
        version; all None and no version while there is no release."""
        disk = self._disk
        if disk is None:
            return [None] * len(ids), None
        version, tables = disk
        return catalogue_rows(tables[kind], ids), version


def catalogue_rows(catalogue: Catalogue, ids: Sequence[str]) -> list[Row | None]:
    """``catalogue``'s rows of ``ids`` as dicts (None for an unknown id)."""
    frame, found = catalogue.rows(ids)
    records = iter(frame.to_dict("records"))
    return [next(records) if f else None for f in found]


def rows_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Row dicts (from Redis JSON or a catalogue) -> one frame, list columns kept as lists."""
    return pd.DataFrame.from_records(list(rows))
