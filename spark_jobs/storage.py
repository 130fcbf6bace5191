"""``Storage``: the few file-system operations jobs need, through Hadoop's ``FileSystem`` API.

Jobs write with Spark and publish with renames, so the same code runs on a local disk, HDFS or
any Hadoop-compatible store: a path without a scheme resolves against ``fs.defaultFS`` exactly
as Spark's own readers and writers resolve it. (On object stores without atomic rename, publish
is a copy; point ``--out`` at HDFS or a local/NFS disk for the atomicity guarantee.)

Publishing a directory (``replace_dir``) is two renames: the old output aside, the new one in;
the old one is deleted only after the new one is in place.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pyspark.sql import SparkSession


class Storage:
    """File operations on the file system that ``path`` strings resolve to in ``spark``."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):  # noqa: ANN202 - a py4j object
        return self._jvm.org.apache.hadoop.fs.Path(str(path))

    def _fs(self, path: str):  # noqa: ANN202
        return self._path(path).getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def is_dir(self, path: str) -> bool:
        p = self._path(path)
        fs = p.getFileSystem(self._conf)
        return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())

    def delete(self, path: str) -> None:
        """Delete ``path`` recursively; a missing path is not an error."""
        fs = self._fs(path)
        p = self._path(path)
        if fs.exists(p):
            fs.delete(p, True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def list(self, path: str) -> list[str]:
        """Full paths of the entries of directory ``path`` (hidden ``_``/``.`` names skipped)."""
        fs = self._fs(path)
        out = []
        for st in fs.listStatus(self._path(path)):
            name = st.getPath().getName()
            if not name.startswith(("_", ".")):
                out.append(str(st.getPath().toString()))
        return sorted(out)

    def rename(self, src: str, dst: str) -> None:
        fs = self._fs(src)
        if not fs.rename(self._path(src), self._path(dst)):
            raise OSError(f"rename {src} -> {dst} failed")

    def replace_dir(self, src: str, dst: str) -> None:
        """Move the finished directory ``src`` to ``dst``, replacing any previous ``dst``."""
        old = None
        if self.exists(dst):
            old = f"{dst.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
            self.rename(dst, old)
        self.mkdirs(str(self._path(dst).getParent()))
        self.rename(src, dst)
        if old is not None:
            self.delete(old)

    def write_text(self, path: str, text: str) -> None:
        """Write ``text`` (UTF-8) to ``path``, replacing it."""
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        fs = self._fs(path)
        stream = fs.open(self._path(path))
        try:
            length = fs.getFileStatus(self._path(path)).getLen()
            buf = self._jvm.java.io.ByteArrayOutputStream()
            self._jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, 1 << 16, False)
            data = bytes(buf.toByteArray())
            assert len(data) == length
            return data.decode("utf-8")
        finally:
            stream.close()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def staging_dir(self, out_dir: str, tag: str) -> str:
        """A fresh hidden directory inside ``out_dir`` for one run's outputs before publishing."""
        path = f"{str(out_dir).rstrip('/')}/.{tag}-staging-{uuid.uuid4().hex[:8]}"
        self.mkdirs(path)
        return path

    def publish(self, staging: str, out: str, manifest: dict[str, Any]) -> None:
        """Publish a job's staged outputs: the manifest beside the examples, quarantine first
        and examples last (readers wait for ``examples/manifest.json``), then drop the rows
        kept from an earlier failed run."""
        self.write_json(f"{staging}/examples/manifest.json", manifest)
        self.replace_dir(f"{staging}/quarantine", f"{out}/quarantine")
        self.replace_dir(f"{staging}/examples", f"{out}/examples")
        self.delete(f"{out}/quarantine.rejected")
