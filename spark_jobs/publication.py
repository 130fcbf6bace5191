"""``Publication``: a job's outputs as versioned releases behind one pointer switched atomically.

Layout of an output directory on a local (or NFS) disk::

    <out>/releases/<id>/examples/      examples (Parquet) + manifest.json, written last
    <out>/releases/<id>/quarantine/    the rows this release rejected, with their reasons
    <out>/current  -> releases/<id>    THE pointer: one symlink, replaced with os.replace
    <out>/previous -> releases/<id0>   the release before it, kept for readers still reading it
    <out>/examples   -> current/examples      stable paths for readers, created once
    <out>/quarantine -> current/quarantine
    <out>/.lock                         held (flock) by the one job writing <out>

A job writes everything into ``releases/.staging-<id>``, the manifest last; ``publish`` renames
it to ``releases/<id>`` and then replaces ``current`` in one rename. A reader of
``<out>/examples/manifest.json`` therefore always finds a complete release, the old one or the
new one, never none and never a half-written one; and ``<out>/quarantine`` always belongs to the
examples beside it, because both are reached through the same pointer. A reader that must not
see the release change mid-read resolves the pointer once (``os.path.realpath(<out>/examples)``)
and reads from there; the previous release stays until the next publish.

A SIGKILL at any point leaves the pointer at a complete release. The next run, holding the lock,
sweeps what a killed run left: staging directories, releases no pointer names, temporary
symlinks (``.current.tmp-*``). Releases other than ``current`` and ``previous`` are swept after
each publish too.

HDFS and object stores (S3, GCS) have no symlinks through ``pyarrow.fs``: there the pointer is a
small file, ``<out>/_CURRENT``, holding the release id, and readers open
``<out>/releases/<id>/examples`` (``Publication.current_path``). On S3/GCS writing that object is
one PUT, atomic: a reader gets the old or the new id. On HDFS it is written in one small write
and close; a reader that finds it missing or empty retries. No lock is taken there: run one job
per output directory at a time (the scheduler's job is to guarantee it).

An output directory written by the earlier layout (a real ``examples/`` directory) is converted
on its first publish: each stable path is swapped for its symlink with one atomic exchange
(``recsys.atomic.replace_dir``), so readers still never find it missing.

Tests pause a publish between its steps by setting ``RECSYS_PUBLISH_PAUSE=<step>:<file>``
(steps ``staged``, ``released``, ``switched``): the job writes ``<file>`` and sleeps, to be
killed there. Nothing else reads that variable.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from recsys.atomic import replace_dir
from spark_jobs.storage import Storage

RELEASES = "releases"
STAGING_PREFIX = ".staging-"
POINTER_FILE = "_CURRENT"
PREVIOUS_FILE = "_PREVIOUS"
PAUSE_ENV = "RECSYS_PUBLISH_PAUSE"
# Names a killed run of this or of the earlier layout can leave directly under <out>.
_LEFTOVER_MARKERS = ("-staging-", ".tmp-", ".old-")


class OutputBusyError(RuntimeError):
    """Another job holds the output directory's lock; the message names its pid and host."""


def new_release_id() -> str:
    """``YYYYmmddTHHMMSSffffffZ-<8 hex>``: unique, and sorts by creation time."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{uuid.uuid4().hex[:8]}"


class Publication:
    """Releases of one output directory ``out``: stage, publish (switch the pointer), sweep.

    Use as a context manager around a whole job run: entering takes the directory's lock and
    sweeps leftovers of killed runs; leaving releases the lock::

        with Publication(storage, out) as pub:
            staging = pub.stage()
            ... write staging/examples, staging/quarantine ...
            storage.write_json(f"{staging}/examples/manifest.json", manifest)
            pub.publish(staging)
    """

    def __init__(
        self,
        storage: Storage,
        out: str,
        stable: tuple[str, ...] = ("examples", "quarantine"),
        pointer: str | None = None,
    ) -> None:
        """``stable``: entries of a release reachable as ``<out>/<name>``; ``pointer``:
        ``"symlink"`` or ``"file"`` (default: symlink on local disks, file elsewhere)."""
        self.storage = storage
        self.out = str(out).rstrip("/")
        self.stable = stable
        local = storage.is_local(self.out)
        self.pointer = pointer or ("symlink" if local else "file")
        if self.pointer == "symlink" and not local:
            raise ValueError(f"{out}: symlink pointers need a local file system")
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Publication:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create ``out``, take its lock (local disks) and sweep leftovers of killed runs."""
        self.storage.mkdirs(f"{self.out}/{RELEASES}")
        if self.storage.is_local(self.out):
            self._lock()
        try:
            self.sweep()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        path = f"{self.storage.local_path(self.out)}/.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"{self.out}: another job is writing this output directory ({holder}; lock {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    # ----------------------------------------------------------------- releases

    def stage(self) -> str:
        """A fresh staging directory for one release (``releases/.staging-<id>``)."""
        path = f"{self.out}/{RELEASES}/{STAGING_PREFIX}{new_release_id()}"
        self.storage.mkdirs(path)
        return path

    def publish(self, staging: str) -> str:
        """Make the complete ``staging`` directory the current release; return its path.

        ``staging`` must hold every entry of ``stable`` and its manifest already (a release is
        read as soon as the pointer names it).
        """
        for name in self.stable:
            if not self.storage.exists(f"{staging}/{name}"):
                raise FileNotFoundError(f"{staging}/{name}: missing from the release")
        _pause("staged")
        release_id = staging.rstrip("/").rsplit("/", 1)[-1].removeprefix(STAGING_PREFIX)
        release = f"{self.out}/{RELEASES}/{release_id}"
        self.storage.rename(staging, release)
        _pause("released")
        old = self.current_id()
        if old is not None and old != release_id:
            self._point("previous", old)
        self._point("current", release_id)
        _pause("switched")
        if self.pointer == "symlink":
            self._link_stable_paths()
        self._sweep_releases()
        return release

    def current_id(self) -> str | None:
        """The id of the release the pointer names, or None before the first publish."""
        return self._read_pointer("current")

    def current_path(self) -> str | None:
        """The current release's directory (what a reader on any file system opens)."""
        rid = self.current_id()
        return None if rid is None else f"{self.out}/{RELEASES}/{rid}"

    def _read_pointer(self, name: str) -> str | None:
        if self.pointer == "symlink":
            link = f"{self.storage.local_path(self.out)}/{name}"
            if not os.path.islink(link):
                return None
            return os.readlink(link).rstrip("/").rsplit("/", 1)[-1]
        path = f"{self.out}/{POINTER_FILE if name == 'current' else PREVIOUS_FILE}"
        if not self.storage.exists(path):
            return None
        return self.storage.read_text(path).strip() or None

    def _point(self, name: str, release_id: str) -> None:
        """Switch pointer ``name`` to ``release_id`` in one atomic step."""
        if self.pointer == "file":
            file = POINTER_FILE if name == "current" else PREVIOUS_FILE
            self.storage.write_text(f"{self.out}/{file}", release_id + "\n")
            return
        _replace_symlink(f"{self.storage.local_path(self.out)}/{name}", f"{RELEASES}/{release_id}")

    def _link_stable_paths(self) -> None:
        """``<out>/<name> -> current/<name>`` for each stable name (a no-op once they exist)."""
        base = self.storage.local_path(self.out)
        for name in self.stable:
            path, target = f"{base}/{name}", f"current/{name}"
            if os.path.islink(path) and os.readlink(path) == target:
                continue
            if os.path.lexists(path):  # the earlier layout's directory: swap, never a gap
                tmp = _tmp_name(path)
                os.symlink(target, tmp)
                replace_dir(Path(tmp), Path(path))
            else:
                _replace_symlink(path, target)

    # ----------------------------------------------------------------- sweeping

    def sweep(self) -> list[str]:
        """Delete what killed runs left; return the paths removed. Call only under the lock."""
        removed = []
        for entry in self._entries(self.out):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") and any(m in name for m in _LEFTOVER_MARKERS):
                self.storage.delete(entry)
                removed.append(entry)
        return removed + self._sweep_releases()

    def _sweep_releases(self) -> list[str]:
        keep = {self._read_pointer("current"), self._read_pointer("previous")}
        removed = []
        for entry in self._entries(f"{self.out}/{RELEASES}"):
            if entry.rstrip("/").rsplit("/", 1)[-1] not in keep:
                self.storage.delete(entry)
                removed.append(entry)
        return removed

    def _entries(self, directory: str) -> list[str]:
        """Every entry of ``directory``, hidden ones and dangling symlinks included."""
        if self.storage.is_local(directory):
            base = self.storage.local_path(directory)
            return sorted(f"{base}/{n}" for n in os.listdir(base)) if os.path.isdir(base) else []
        return self.storage.list(directory, hidden=True) if self.storage.exists(directory) else []


def _tmp_name(path: str) -> str:
    head, name = os.path.split(path)
    return f"{head}/.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _replace_symlink(path: str, target: str) -> None:
    """Point the symlink ``path`` at ``target``: a new link under a temporary name, renamed
    over the old one (``rename(2)`` replaces a symlink atomically)."""
    tmp = _tmp_name(path)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _pause(step: str) -> None:
    """Test hook: with ``RECSYS_PUBLISH_PAUSE=<step>:<file>`` write ``<file>`` and sleep at
    ``step`` so that a test can kill the job exactly there."""
    spec = os.environ.get(PAUSE_ENV, "")
    want, _, signal_file = spec.partition(":")
    if want != step or not signal_file:
        return
    Path(signal_file).write_text(f"{os.getpid()}\n")
    time.sleep(600)
