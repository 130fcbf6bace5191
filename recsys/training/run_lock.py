"""An exclusive lock on a training run directory, so two runs never write into one.

``RunLock(out_dir)`` holds ``out_dir/run.lock`` with ``fcntl.flock`` for the whole run and
writes the holder (``pid``, ``host``, start time) into it. A second run into the same
directory is refused with a ``RunLockError`` naming that holder. The kernel drops the flock
when its process dies however it dies (SIGKILL too), so a lock file left by a killed run is
free: the next run takes it over and logs the dead holder. The file keeps a holder record
only while a run holds it; a clean release empties it.

A record that names a holder on *another* host while the flock is free cannot be told apart
from a filesystem that does not carry locks between hosts, so it is refused too; the message
names the file to delete once that run is known to be gone.

Under ``torchrun`` only rank 0 takes the lock (see ``trainer.train``); the other ranks learn
the outcome through a broadcast.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from recsys.atomic import pid_alive

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockError(ValueError):
    """The run directory is held by another run; the message names its PID, host and file.

    A ``ValueError`` so that the ``recsys`` command reports it as one line, like bad input.
    """


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder record in the lock file, or ``None`` when it is empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


class RunLock:
    """Exclusive ownership of a run directory, held from :meth:`acquire` to :meth:`release`.

    Example::

        with RunLock(out_dir):      # RunLockError if another live run holds out_dir
            ...                     # write checkpoints, metrics.json
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the dead holder's record, if any

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockError`` naming the live holder."""
        if self._fd is not None:
            raise RunLockError(f"{self.path}: already held by this RunLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockError(
                    f"{self.directory}: another training run is writing here "
                    f"({_describe(_read_holder(fd))}; lock file {self.path}); "
                    "wait for it or train into another directory"
                ) from None
            self._check_previous_holder(fd)
            self._write_holder(fd)
        except BaseException:
            os.close(fd)  # closing drops the flock if we took it
            raise
        self._fd = fd
        return self

    def _check_previous_holder(self, fd: int) -> None:
        """The flock is ours: a record left in the file is a run that died holding it."""
        previous = _read_holder(fd)
        if previous is None:
            return
        host, pid = previous.get("host"), previous.get("pid")
        if host != socket.gethostname():
            raise RunLockError(
                f"{self.directory}: lock file {self.path} names a run on another host "
                f"({_describe(previous)}); if that run is gone, delete {self.path}"
            )
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            # PID reuse: the flock is free, so the process now holding that PID is not the run
            log.warning(
                "%s: pid %d is alive but does not hold the lock; taking over", self.path, pid
            )
        log.warning(
            "%s: taking over the stale lock of a run that died (%s)", self.path, _describe(previous)
        )
        self.took_over = previous

    def _write_holder(self, fd: int) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Empty the holder record and drop the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
