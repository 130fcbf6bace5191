"""``Storage``: the few file-system operations jobs need, through ``pyarrow.fs``.

A path is a local path (absolute or relative, or ``file:`` URI) or a URI ``pyarrow.fs`` knows:
``hdfs://namenode:8020/...``, ``s3://bucket/...`` (``s3a://`` is read as ``s3://``),
``gs://...``. A path without a scheme is resolved against ``spark.hadoop.fs.defaultFS`` when
the session sets it, else it is local; on a cluster whose ``core-site.xml`` sets another default
file system, pass full URIs so that Spark and this class agree.

Only public APIs are used (``pyarrow.fs`` and ``spark.conf``), never the JVM behind the
session, so the jobs run unchanged under Spark Connect, where the driver program has no JVM.
On local disks directories are replaced with ``recsys.atomic.replace_dir`` (an atomic
exchange); whole outputs are published through ``spark_jobs.publication.Publication``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pyspark.sql import SparkSession

from recsys.atomic import replace_dir as replace_local_dir

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}


class Storage:
    """File operations on the file systems that ``path`` strings name."""

    def __init__(self, spark: SparkSession | None = None) -> None:
        default_fs = None
        if spark is not None:
            default_fs = spark.conf.get("spark.hadoop.fs.defaultFS", None)
        self._default_fs = None if not default_fs or default_fs.startswith("file:") else default_fs
        self._filesystems: dict[str, pafs.FileSystem] = {}

    # ----------------------------------------------------------------- resolution

    def is_local(self, path: str) -> bool:
        """True when ``path`` is on the local file system (symlinks and ``os`` calls apply)."""
        return self._split(path)[0] == ""

    def local_path(self, path: str) -> str:
        """The absolute local path of a local ``path`` (``file:`` prefix removed)."""
        root, rest = self._split(path)
        if root:
            raise ValueError(f"{path}: not a local path")
        return rest

    def _split(self, path: str) -> tuple[str, str]:
        """``(root, path inside it)``: root ``""`` for local paths, else ``scheme://netloc``."""
        text = str(path)
        if text.startswith("file:"):
            return "", os.path.abspath(urlparse(text).path)
        if "://" not in text:
            if self._default_fs is None:
                return "", os.path.abspath(text)
            text = f"{self._default_fs.rstrip('/')}/{text.lstrip('/')}"
        url = urlparse(text)
        scheme = _SCHEME_ALIASES.get(url.scheme, url.scheme)
        return f"{scheme}://{url.netloc}", url.path

    def _resolve(self, path: str) -> tuple[pafs.FileSystem, str]:
        """The ``pyarrow.fs`` file system of ``path`` and the path as that file system names it."""
        root, rest = self._split(path)
        fs = self._filesystems.get(root)
        if fs is None:
            fs = pafs.LocalFileSystem() if root == "" else pafs.FileSystem.from_uri(root + "/")[0]
            self._filesystems[root] = fs
        if root.startswith(("s3://", "gs://")):  # object stores name paths bucket/key
            return fs, f"{urlparse(root).netloc}{rest}"
        return fs, rest

    def _uri(self, path: str, inner: str) -> str:
        """The full URI of ``inner`` (as ``_resolve(path)``'s file system names it)."""
        root, _ = self._split(path)
        if root == "":
            return inner
        if root.startswith(("s3://", "gs://")):
            return f"{root.split('://')[0]}://{inner}"
        return f"{root}{inner}"

    def _info(self, path: str) -> pafs.FileInfo:
        fs, p = self._resolve(path)
        return fs.get_file_info(p)

    # ----------------------------------------------------------------- queries

    def exists(self, path: str) -> bool:
        return self._info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self._info(path).type == pafs.FileType.Directory

    def list(self, path: str, hidden: bool = False) -> list[str]:
        """Full paths of the entries of directory ``path`` (``_``/``.`` names only if ``hidden``)."""
        fs, p = self._resolve(path)
        out = [
            self._uri(path, info.path)
            for info in fs.get_file_info(pafs.FileSelector(p, recursive=False))
            if hidden or not info.base_name.startswith(("_", "."))
        ]
        return sorted(out)

    def read_text(self, path: str) -> str:
        fs, p = self._resolve(path)
        with fs.open_input_stream(p) as f:
            return f.read().decode("utf-8")

    # ----------------------------------------------------------------- changes

    def mkdirs(self, path: str) -> None:
        fs, p = self._resolve(path)
        fs.create_dir(p, recursive=True)

    def delete(self, path: str) -> None:
        """Delete ``path`` recursively; a missing path is not an error; a symlink is unlinked
        (never the directory it points to)."""
        if self.is_local(path):
            local = self.local_path(path)
            if os.path.islink(local):
                os.unlink(local)
                return
        fs, p = self._resolve(path)
        kind = fs.get_file_info(p).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif kind != pafs.FileType.NotFound:
            fs.delete_file(p)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to the not yet existing ``dst`` (atomic on local disks and HDFS)."""
        fs, s = self._resolve(src)
        _, d = self._resolve(dst)
        try:
            fs.move(s, d)
        except OSError as e:
            raise OSError(f"rename {src} -> {dst} failed: {e}") from e

    def replace_dir(self, src: str, dst: str) -> None:
        """Move the finished directory ``src`` to ``dst``, replacing any previous ``dst``.

        Local disks: one atomic exchange (``recsys.atomic.replace_dir``). Elsewhere: the old
        ``dst`` aside, the new one in, the old one deleted; readers of such outputs go through
        a ``Publication`` pointer instead.
        """
        if self.is_local(src) and self.is_local(dst):
            os.makedirs(os.path.dirname(self.local_path(dst)), exist_ok=True)
            replace_local_dir(self.local_path(src), self.local_path(dst))
            return
        old = None
        if self.exists(dst):
            old = f"{dst.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
            self.rename(dst, old)
        self.rename(src, dst)
        if old is not None:
            self.delete(old)

    def write_text(self, path: str, text: str) -> None:
        """Write ``text`` (UTF-8) to ``path``, replacing it; readers see the old or the new
        content (local: a temporary file renamed over it; object stores: one PUT)."""
        data = text.encode("utf-8")
        fs, p = self._resolve(path)
        if not self.is_local(path):
            with fs.open_output_stream(p) as f:
                f.write(data)
            return
        local = self.local_path(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{os.path.dirname(local)}/.{os.path.basename(local)}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def staging_dir(self, out_dir: str, tag: str) -> str:
        """A fresh hidden directory inside ``out_dir`` for one run's outputs before publishing."""
        path = f"{str(out_dir).rstrip('/')}/.{tag}-staging-{uuid.uuid4().hex[:8]}"
        self.mkdirs(path)
        return path
