"""Atomic file and directory writes: write to a temporary name beside the target, then rename.

A crash or exception mid-write never leaves a half-written file or directory in place of a good
one, and a reader never finds the target missing:

- a file is replaced by ``os.replace`` (one atomic rename);
- a directory is replaced by ``exchange`` (Linux ``renameat2(RENAME_EXCHANGE)``: the new and
  the old directory swap names in one step), after which the old one, now under the temporary
  name, is deleted. Where the kernel or file system cannot exchange (not Linux, some network
  file systems) it falls back to two renames (old aside, new in); a reader looking in the
  microseconds between them finds nothing, and a kill between them leaves the old directory
  under its ``.<name>.old-*`` name, which ``sweep_temporaries`` removes on the next write.

What stays open: a reader that listed the old directory and has not opened its files yet
loses them when the old directory is deleted. Outputs read for minutes while being replaced
(Spark examples) keep versioned releases behind a pointer instead
(``spark_jobs/publication.py``); directories written here are written once per version
(bundles) or read only by the next stage after the writer has finished (raw logs).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path, tag: str) -> Path:
    """``.<name>.<tag>-<pid>-<random>``: the pid tells a later sweep whether its writer lives."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_alive(leftover: Path) -> bool:
    """True when the process named in ``leftover``'s name is still running on this machine."""
    try:
        pid = int(leftover.name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return False  # no pid in the name: not written by a live writer of this module
    return pid == os.getpid() or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    tmp = _tmp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errnos meaning "this kernel or file system cannot exchange": fall back to two renames.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class ExchangeUnsupported(OSError):
    """The platform or file system has no atomic exchange of two paths."""


def exchange(a: str | Path, b: str | Path) -> None:
    """Swap the names ``a`` and ``b`` (both must exist) in one atomic step (Linux only).

    Raises ``ExchangeUnsupported`` where the kernel, C library or file system cannot, and
    ``OSError`` naming both paths for any other failure.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        raise ExchangeUnsupported(errno.ENOSYS, f"no renameat2 on {sys.platform}")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in _NO_EXCHANGE:
            raise ExchangeUnsupported(err, f"exchange {a} <-> {b}: {os.strerror(err)}")
        raise OSError(err, f"exchange {a} <-> {b}: {os.strerror(err)}")


def _renameat2():  # noqa: ANN202 - a ctypes function or None
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing any old ``dst``.

    ``dst`` always names a complete directory, the old or the new one (see the module
    docstring for the fallback where the file system cannot exchange).
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists() and not dst.is_symlink():
        os.replace(src, dst)
        return
    try:
        exchange(src, dst)
    except ExchangeUnsupported:
        _replace_by_two_renames(src, dst)
        return
    _remove(src)  # the old directory, now under the temporary name


def _replace_by_two_renames(src: Path, dst: Path) -> None:
    old = _tmp_sibling(dst, "old")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the old directory back rather than leave nothing
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def sweep_temporaries(path: str | Path) -> list[Path]:
    """Delete what killed writes of ``path`` left beside it (``.<name>.tmp-*``/``.old-*``).

    Leftovers whose writer process is still running on this machine are kept (a concurrent
    write in progress). Returns the paths removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tag in ("tmp", "old"):
        for leftover in path.parent.glob(f".{path.name}.{tag}-*"):
            if not _writer_alive(leftover):
                _remove(leftover)
                removed.append(leftover)
    return removed


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file for writing; on success it is fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)
    tmp = _tmp_sibling(path, "tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically (``sort_keys=False`` keeps insertion order)."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys, default=str)
        f.write("\n")
