"""The bundle registry: which version of a model the server answers with right now.

Versions are the directories of one bundle root (``<output_dir>/bundles/<version>``); their
names sort by UTC export time, and hidden (``.``-prefixed) directories are exports still in
progress. ``refresh()`` loads any version newer than the current one *beside* it (the old
keeps serving meanwhile) and then swaps one reference: a request that took ``current`` before
the swap finishes on the old version, one that takes it after runs on the new. A version that
fails to load (bad checksum, missing file) is refused with a log line and not tried again;
the previous version keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from recsys.bundle import Bundle, BundleError, load_bundle, version_dirs

log = logging.getLogger(__name__)


class NoBundleError(LookupError):
    """No loadable bundle of the wanted kind under a root."""


class BundleRegistry:
    """The newest valid bundle of model ``kind`` under ``root``.

    Args:
        root: directory of version directories.
        kind: model kind the bundles must hold (``"two_tower"``, ``"ranker"``).
    """

    def __init__(self, root: str | Path, kind: str) -> None:
        self.root, self.kind = Path(root), kind
        self._current: Bundle | None = None
        self._refused: set[str] = set()
        self._lock = threading.Lock()  # one refresh at a time; readers never take it

    @property
    def current(self) -> Bundle:
        """The bundle to answer with (take it once per request)."""
        bundle = self._current
        if bundle is None:
            raise NoBundleError(f"{self.root}: no valid {self.kind} bundle loaded")
        return bundle

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def refresh(self) -> bool:
        """Load the newest valid version newer than the current one and swap to it.

        Returns True when the current version changed. Refused versions are logged once.
        """
        with self._lock:
            current = self._current.version if self._current is not None else ""
            for path in version_dirs(self.root):
                if path.name <= current:
                    break
                if path.name in self._refused:
                    continue
                bundle = self._try_load(path)
                if bundle is not None:
                    self._current = bundle  # the atomic swap: one reference assignment
                    log.info("serving %s bundle %s (was %s)", self.kind, path.name, current)
                    return True
            return False

    def _try_load(self, path: Path) -> Bundle | None:
        try:
            bundle = load_bundle(path)
        except BundleError as e:
            self._refused.add(path.name)
            log.error("bundle %s refused, keeping %s: %s", path, self._version_or_none(), e)
            return None
        kind = bundle.meta["model"]["kind"]
        if kind != self.kind:
            self._refused.add(path.name)
            log.error("bundle %s refused: holds a %r model, expected %r", path, kind, self.kind)
            return None
        return bundle

    def _version_or_none(self) -> str:
        return self._current.version if self._current is not None else "nothing"
