"""Exported model bundles: a versioned directory that serving and batch jobs load safely.

Layout of ``bundle/<version>/``::

    bundle.json     format, version, model kind + constructor arguments, feature spec, metrics,
                    and the sha256 of every other file (all checked on load)
    weights.pt      the model's ``state_dict`` (loaded with ``torch.load(weights_only=True)``)
    ...             any extra files a model kind writes (item embeddings, vocabulary)
    index/          optional, added after export by ``write_bundle_index`` (the retrieval
                    index, ``recsys.retrieval``): ``index/index.json`` lists every file under
                    ``index/`` with its sha256, checked on load like ``bundle.json``'s list

The model is rebuilt from ``bundle.json`` by a factory registered for its kind, never by
unpickling: a bundle from outside can carry tensors and JSON, not code. A model that can embed
rows implements ``Embedder.embed(kind, frame)``.

Versions are immutable. An automatic version name is the UTC export time plus a short hash of
the bundle's content (``20240101T120000Z-3f2a9c1b0d``), so two exports in the same second get
different names; an export is built in a hidden temporary directory beside the versions and
published with one rename that never replaces an existing version. Every file in a version
directory must be listed in ``bundle.json`` with its checksum: a missing, unlisted or altered
file makes the whole bundle refused with a ``BundleError`` naming it. The one later addition
is ``index/``: it is built in a hidden temporary directory beside the versions and moved in
with one rename, so a reader sees either no index or a complete one, never part of one.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys.atomic import pid_alive

FORMAT = 1
META = "bundle.json"
WEIGHTS = "weights.pt"
# The retrieval index: a subdirectory added after export, listed by its own manifest.
INDEX_DIR = "index"
INDEX_META = "index.json"
# Temporary export directories: hidden (readers listing versions skip dot names) and tagged
# with host and PID so a later export can sweep those of killed exporters.
_TMP_PREFIX = ".export-"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Automatic names: how many "-<n>" suffixes to try when identical content was exported in
# the same second (the same name twice); each try is one no-replace rename.
_MAX_NAME_TRIES = 100

# kind -> "module:function" that builds an nn.Module from the kwargs stored in bundle.json.
# Only these (and kinds registered in-process) can be loaded; bundle.json cannot name code.
_FACTORIES: dict[str, str | Callable[..., nn.Module]] = {
    "ranker": "recsys.models.ranker:ranker_from_kwargs",
    "two_tower": "recsys.models.two_tower:two_tower_from_kwargs",
    # SESA: weights here; the frozen concept space (vocabulary, sparse item concept vectors,
    # users' declared concepts) in the extra files of recsys.concepts.space.space_files.
    "sesa": "recsys.models.sesa:sesa_from_kwargs",
    # omni-modal item encoder; the embedding of every catalogue item in omni_items.parquet
    "omni": "recsys.omni.fusion:omni_from_kwargs",
}


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message names the file and the problem."""


@runtime_checkable
class Embedder(Protocol):
    """A model that turns rows of a raw-log table into vectors."""

    def embed(self, kind: str, frame: pd.DataFrame) -> np.ndarray:
        """Return ``float32`` array of shape ``(len(frame), dim)`` for ``kind`` rows."""
        ...


def register_model_kind(kind: str, factory: str | Callable[..., nn.Module]) -> None:
    """Make ``kind`` loadable; ``factory`` is a callable or a ``"module:attr"`` path."""
    _FACTORIES[kind] = factory


def _factory(kind: str) -> Callable[..., nn.Module]:
    if kind not in _FACTORIES:
        raise BundleError(f"unknown model kind {kind!r}; known: {sorted(_FACTORIES)}")
    f = _FACTORIES[kind]
    if isinstance(f, str):
        module, attr = f.split(":")
        try:
            f = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise BundleError(f"model kind {kind!r}: factory {f} cannot be imported: {e}") from e
    return f


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its directory, metadata and the rebuilt model in eval mode."""

    path: Path
    meta: dict[str, Any]
    model: nn.Module

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def index_dir(self) -> Path | None:
        """``<bundle>/index`` when the bundle has a retrieval index (verified on load)."""
        index = self.path / INDEX_DIR
        return index if index.is_dir() and not index.is_symlink() else None

    def embed(self, kind: str, frame: pd.DataFrame) -> np.ndarray:
        """Embed rows (``kind`` is ``"item"`` or ``"user"``) with the bundle's model."""
        if not isinstance(self.model, Embedder):
            raise BundleError(
                f"{self.path}: model kind {self.meta['model']['kind']!r} cannot embed"
            )
        with torch.inference_mode():
            return self.model.embed(kind, frame)


# ---------------------------------------------------------------------------------------------
# export


def export_bundle(
    out_dir: str | Path,
    model: nn.Module,
    kind: str,
    kwargs: dict[str, Any],
    *,
    version: str | None = None,
    features: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``model`` as a new version directory ``out_dir/<version>`` and return its path.

    ``kwargs`` must rebuild the model through the factory registered for ``kind``;
    ``extra_files`` maps a relative file name to a writer called with its destination path.
    ``version=None`` names the version ``<UTC time>-<content hash>`` (unique even for exports
    in the same second). An existing version is never replaced: an explicit ``version`` that
    already exists is a ``BundleError`` naming it; an automatic name that is taken (identical
    content in the same second) gets a ``-<n>`` suffix.
    """
    _factory(kind)  # fail before writing anything if the kind cannot be loaded back
    root = Path(out_dir)
    if version is not None:
        _check_version_name(version)
        if (root / version).exists():
            raise BundleError(
                f"{root / version}: version already exists; exports never replace one"
            )
    root.mkdir(parents=True, exist_ok=True)
    _sweep_dead_exports(root)
    tmp = root / f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_durably(tmp / WEIGHTS, lambda p: torch.save(model.state_dict(), p))
        for name, write in (extra_files or {}).items():
            if name in (META, WEIGHTS) or not _is_plain_relative(name) or _in_index(name):
                raise BundleError(f"extra file {name!r}: reserved or not a plain relative name")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _write_durably(tmp / name, write)
        body = {
            "format": FORMAT,
            "model": {"kind": kind, "kwargs": kwargs},
            "features": features or {},
            "metrics": metrics or {},
            "config": config or {},
            "files": {name: _sha256(tmp / name) for name in _files_under(tmp)},
        }
        body = json.loads(json.dumps(body, default=str))  # what bundle.json will hold
        return _publish(tmp, root, body, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bundle_index(
    bundle_dir: str | Path,
    write: Callable[[Path], Mapping[str, Any]],
    *,
    replace: bool = False,
) -> Path:
    """Add (or, with ``replace``, swap) the ``index/`` directory of a bundle; return its path.

    ``write(tmp)`` writes the index's files into the empty directory ``tmp`` and returns
    JSON-able metadata; ``index/index.json`` is that metadata plus ``format`` and ``files``
    (the sha256 of every file written). ``tmp`` is a hidden directory beside the versions
    (swept like a killed export's), so the version directory never holds a partial index:
    one rename moves the finished one in. Without ``replace`` an existing index is a
    ``BundleError`` naming it; with it the old and new directories are exchanged atomically.
    """
    bundle_dir = Path(bundle_dir)
    _read_meta(bundle_dir)  # only into a bundle
    target = bundle_dir / INDEX_DIR
    if (target.exists() or target.is_symlink()) and not replace:
        raise BundleError(f"{target}: the bundle already has an index (replace=True swaps it)")
    root = bundle_dir.parent
    _sweep_dead_exports(root)
    tmp = root / f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-index-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_index_manifest(tmp, write(tmp))
        if replace and (target.exists() or target.is_symlink()):
            from recsys.atomic import replace_dir

            replace_dir(tmp, target)
        elif not _rename_no_replace(tmp, target):
            raise BundleError(f"{target}: the bundle already has an index")
        _fsync(bundle_dir)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_index_manifest(index_dir: str | Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """Fsync every file under ``index_dir`` and write ``index.json``: ``info`` plus ``format``
    and ``files`` (name -> sha256 of each file). Returns what was written."""
    index_dir = Path(index_dir)
    names = _files_under(index_dir, skip=INDEX_META)
    for name in names:
        _write_durably(index_dir / name, lambda p: None)  # fsync what the writer left
    files = {n: _sha256(index_dir / n) for n in names}
    manifest = json.loads(json.dumps({**info, "format": FORMAT, "files": files}, default=str))
    text = json.dumps(manifest, indent=2, sort_keys=True)
    _write_durably(index_dir / INDEX_META, lambda p: p.write_text(text))
    _fsync(index_dir)
    return manifest


def _utc_now() -> time.struct_time:
    return time.gmtime()


def _check_version_name(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise BundleError(
            f"version {version!r}: must be 1-128 characters of letters, digits, '.', '_', '-', "
            "not starting with '.', '_' or '-'"
        )


def _is_plain_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "." not in parts


def _in_index(name: str) -> bool:
    """True for ``index`` itself and any name under ``index/`` (reserved for the index)."""
    return Path(name).parts[:1] == (INDEX_DIR,)


def _content_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _publish(tmp: Path, root: Path, body: dict[str, Any], version: str | None) -> Path:
    """Write ``bundle.json`` into ``tmp`` and rename ``tmp`` to a version name nobody holds."""
    now = _utc_now()
    base = version or f"{time.strftime('%Y%m%dT%H%M%SZ', now)}-{_content_hash(body)[:10]}"
    tries = 1 if version is not None else _MAX_NAME_TRIES
    for attempt in range(tries):
        name = base if attempt == 0 else f"{base}-{attempt}"
        meta = {**body, "version": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", now)}
        _write_durably(
            tmp / META,
            lambda p, m=meta: p.write_text(json.dumps(m, indent=2, sort_keys=True)),
        )
        target = root / name
        if _rename_no_replace(tmp, target):
            _fsync(root)
            return target
    if version is not None:
        raise BundleError(f"{root / version}: version already exists; exports never replace one")
    raise BundleError(f"{root}: {tries} versions named {base}[-n] already exist")


def _rename_no_replace(src: Path, dst: Path) -> bool:
    """Rename directory ``src`` to ``dst`` unless ``dst`` exists; False when it does.

    ``rename(2)`` of a directory fails on an existing non-empty directory (every bundle holds
    files), so two exporters racing for one name cannot replace each other's version.
    """
    if dst.exists() or dst.is_symlink():
        return False
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            return False
        raise
    return True


def _write_durably(path: Path, write: Callable[[Path], None]) -> None:
    write(path)
    if not path.is_file():
        raise BundleError(f"{path.name}: the writer did not create a file")
    _fsync(path)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's (its entries') writes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_dead_exports(root: Path) -> None:
    """Remove temporary export directories left in ``root`` by killed exporters on this host."""
    prefix = f"{_TMP_PREFIX}{socket.gethostname()}-"
    for entry in root.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        pid = entry.name.removeprefix(prefix).split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# load


def version_dirs(root: str | Path) -> list[Path]:
    """Version directories under ``root``, newest first. Automatic version names start with
    the UTC export time, so name order is creation order; hidden directories (exports and
    index builds in flight) are skipped. A directory listed here may still fail to load."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: p.name, reverse=True)


def newest_version(root: str | Path) -> Path:
    """The newest version directory under ``root`` that holds a ``bundle.json``."""
    for path in version_dirs(root):
        if (path / META).is_file():
            return path
    raise BundleError(f"{root}: no bundle versions (run `recsys export` first)")


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory.

    Refused with a ``BundleError`` naming the file: a missing or malformed ``bundle.json``;
    a file list without ``weights.pt``; a listed file missing or with another checksum; a
    file in the directory that is not listed (files under ``index/`` are listed by
    ``index/index.json`` instead, with the same rules); constructor arguments the model kind
    rejects; weights that do not unpickle as plain tensors or do not fit the model.
    """
    path = Path(path)
    meta = _read_meta(path)
    files = _listed_files(path, meta)
    index = _index_files(path)
    listing = f"{META} or {INDEX_DIR}/{INDEX_META}" if index else META
    _check_no_unlisted_files(path, {**files, **index}, listing=listing)
    for name, digest in files.items():
        if name != WEIGHTS:
            _check_checksum(path / name, digest)
    for name, digest in index.items():
        if name != f"{INDEX_DIR}/{INDEX_META}":
            _check_checksum(path / name, digest, listing=f"{INDEX_DIR}/{INDEX_META}")
    weights = _read_checked(path / WEIGHTS, files[WEIGHTS])
    model = _build_model(path, meta["model"])
    _load_weights(path / WEIGHTS, weights, model)
    model.eval()
    return Bundle(path, meta, model)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{meta_path}: no {META}; not a bundle directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: top level must be an object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("kind"), str):
        raise BundleError(f"{meta_path}: model.kind: missing or not a string")
    if not isinstance(model.get("kwargs"), dict):
        raise BundleError(f"{meta_path}: model.kwargs: missing or not an object")
    if not isinstance(meta.get("version"), str):
        raise BundleError(f"{meta_path}: version: missing or not a string")
    return meta


def _listed_files(path: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    meta_path = path / META
    files = meta.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{meta_path}: files: missing or not an object")
    for name, digest in files.items():
        if name == META or not _is_plain_relative(name) or _in_index(name):
            raise BundleError(f"{meta_path}: files: {name!r} is not a file of the bundle")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{meta_path}: files.{name}: {digest!r} is not a sha256 digest")
    if WEIGHTS not in files:
        raise BundleError(f"{meta_path}: files: {WEIGHTS} is not listed")
    return files


def read_index_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The parsed ``index.json`` of an index directory, its ``files`` map checked for shape.

    Raises ``BundleError`` naming ``index.json`` when it is missing, not JSON, of another
    format, or lists a name that is not a plain relative file name or not a sha256.
    """
    meta_path = Path(index_dir) / INDEX_META
    try:
        manifest = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{meta_path}: no {INDEX_META}; not an index directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{meta_path}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not an object of format {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{meta_path}: files: missing or not an object")
    for name, digest in files.items():
        if name == INDEX_META or not _is_plain_relative(name):
            raise BundleError(f"{meta_path}: files: {name!r} is not a file of the index")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{meta_path}: files.{name}: {digest!r} is not a sha256 digest")
    return manifest


def verify_index_dir(index_dir: str | Path) -> dict[str, Any]:
    """Check an index directory like a bundle: every file listed in ``index.json`` with its
    checksum, nothing unlisted. Returns the manifest; ``BundleError`` names the file at fault.
    """
    index_dir = Path(index_dir)
    manifest = read_index_manifest(index_dir)
    files: dict[str, str] = manifest["files"]
    _check_no_unlisted_files(index_dir, files, listing=INDEX_META, skip=INDEX_META)
    for name, digest in files.items():
        _check_checksum(index_dir / name, digest, listing=INDEX_META)
    return manifest


def _index_files(path: Path) -> dict[str, str]:
    """``index/<name> -> sha256`` of the bundle's index (``{}`` without one).

    A symlink or a plain file named ``index`` is not an index: it stays unlisted and is refused.
    """
    index = path / INDEX_DIR
    if index.is_symlink() or not index.is_dir():
        return {}
    files = read_index_manifest(index)["files"]
    listed = {f"{INDEX_DIR}/{name}": digest for name, digest in files.items()}
    return {**listed, f"{INDEX_DIR}/{INDEX_META}": ""}


def _files_under(root: Path, skip: str = META) -> list[str]:
    """Relative POSIX names of everything but directories under ``root`` (links not followed),
    except the manifest ``skip`` at the top."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root)
        names += [(rel / f).as_posix() for f in filenames]
        names += [(rel / d).as_posix() for d in dirnames if (Path(dirpath) / d).is_symlink()]
    return sorted(n for n in names if n != skip)


def _check_no_unlisted_files(
    path: Path, files: Mapping[str, str], listing: str = META, skip: str = META
) -> None:
    unlisted = [n for n in _files_under(path, skip=skip) if n not in files]
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (" ..." if len(unlisted) > 5 else "")
        raise BundleError(f"{path}: {len(unlisted)} file(s) not listed in {listing}: {shown}")


def _check_checksum(file: Path, digest: str, listing: str = META) -> None:
    if file.is_symlink() or not file.is_file():
        raise BundleError(f"{file}: listed in {listing} but missing (or not a regular file)")
    if _sha256(file) != digest:
        raise BundleError(f"{file}: checksum mismatch with {listing}")


def _read_checked(file: Path, digest: str) -> bytes:
    """The bytes of ``file`` after checking them: the bytes checked are the bytes loaded."""
    if file.is_symlink() or not file.is_file():
        raise BundleError(f"{file}: listed in {META} but missing (or not a regular file)")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(f"{file}: checksum mismatch with {META}")
    return data


def _build_model(path: Path, model: Mapping[str, Any]) -> nn.Module:
    try:
        factory = _factory(model["kind"])
    except BundleError as e:
        raise BundleError(f"{path / META}: model.kind: {e}") from None
    try:
        built = factory(**model["kwargs"])
    except Exception as e:  # any factory failure means the stored arguments are unusable
        raise BundleError(
            f"{path / META}: model.kwargs do not build a {model['kind']!r} model: "
            f"{type(e).__name__}: {e}"
        ) from None
    if not isinstance(built, nn.Module):
        raise BundleError(f"{path / META}: factory of {model['kind']!r} returned no nn.Module")
    return built


def _load_weights(file: Path, data: bytes, model: nn.Module) -> None:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, zip errors
        raise BundleError(
            f"{file}: not a plain state_dict (refused, never unpickled as code): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(state, Mapping):
        raise BundleError(f"{file}: holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except Exception as e:  # missing/unexpected keys, shape mismatch
        raise BundleError(f"{file}: does not fit the model: {e}") from None
