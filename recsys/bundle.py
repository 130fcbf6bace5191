"""Exported model bundles: a versioned directory that serving and batch jobs load safely.

Layout of ``bundle/<version>/``::

    bundle.json     format, version, model kind + constructor arguments, feature spec, metrics,
                    and the sha256 of every other file (checked on load)
    weights.pt      the model's ``state_dict`` (loaded with ``torch.load(weights_only=True)``)
    ...             any extra files a model kind writes (item embeddings, index, vocabulary)

The model is rebuilt from ``bundle.json`` by a factory registered for its kind, never by
unpickling: a bundle from outside can carry tensors and JSON, not code. A model that can embed
rows implements ``Embedder.embed(kind, frame)``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys.atomic import atomic_dir
from recsys.features.hashing import hash_values, mix64, to_int64

FORMAT = 1
META = "bundle.json"
WEIGHTS = "weights.pt"

# kind -> "module:function" that builds an nn.Module from the kwargs stored in bundle.json.
# Only these (and kinds registered in-process) can be loaded; bundle.json cannot name code.
_FACTORIES: dict[str, str | Callable[..., nn.Module]] = {
    "id_embedding": "recsys.bundle:IdEmbedding",
    "ranker": "recsys.models.ranker:ranker_from_kwargs",
    "two_tower": "recsys.models.two_tower:two_tower_from_kwargs",
}


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the directory and the problem."""


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
        f = getattr(importlib.import_module(module), attr)
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

    def embed(self, kind: str, frame: pd.DataFrame) -> np.ndarray:
        """Embed rows (``kind`` is ``"item"`` or ``"user"``) with the bundle's model."""
        if not isinstance(self.model, Embedder):
            raise BundleError(
                f"{self.path}: model kind {self.meta['model']['kind']!r} cannot embed"
            )
        with torch.inference_mode():
            return self.model.embed(kind, frame)


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
    """Write ``model`` as ``out_dir/<version>`` atomically and return that path.

    ``kwargs`` must rebuild the model through the factory registered for ``kind``;
    ``extra_files`` maps a file name to a writer called with its destination path.
    """
    _factory(kind)  # fail before writing anything if the kind cannot be loaded back
    version = version or time.strftime("%Y%m%d-%H%M%S")
    target = Path(out_dir) / version
    with atomic_dir(target) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        for name, write in (extra_files or {}).items():
            write(tmp / name)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"kind": kind, "kwargs": kwargs},
            "features": features or {},
            "metrics": metrics or {},
            "config": config or {},
            "files": files,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return target


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle directory; any missing or altered file is a ``BundleError``."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: no {META}") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}/{META}: not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {meta.get('format')!r}, expected {FORMAT}")
    for name, digest in meta.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise BundleError(f"{path}: missing file {name}")
        if _sha256(f) != digest:
            raise BundleError(f"{path}: checksum mismatch for {name}")
    model = _factory(meta["model"]["kind"])(**meta["model"]["kwargs"])
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return Bundle(path, meta, model)


class IdEmbedding(nn.Module):
    """The simplest embedder: hashed id -> learned vector, one table per kind.

    Args:
        num_buckets: rows per table.
        dim: vector width.
        salt: hashing salt for ids.
    Input: ``embed(kind, frame)`` reads ``frame[f"{kind}_id"]`` (length ``B``).
    Output: ``float32`` array ``(B, dim)``.
    """

    def __init__(self, num_buckets: int, dim: int, salt: int = 0) -> None:
        super().__init__()
        self.num_buckets, self.salt = num_buckets, salt
        self.tables = nn.ModuleDict({k: nn.Embedding(num_buckets, dim) for k in ("item", "user")})
        for t in self.tables.values():
            nn.init.uniform_(t.weight, -0.05, 0.05)

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        h = mix64(hash_values(ids, self.salt), 0) % np.uint64(self.num_buckets)
        return torch.from_numpy(to_int64(h).copy())

    def forward(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        return self.tables[kind](rows)

    def embed(self, kind: str, frame: pd.DataFrame) -> np.ndarray:
        col = f"{kind}_id"
        if col not in frame.columns:
            raise BundleError(f"embed({kind!r}): input has no column {col!r}")
        return self(kind, self.rows(frame[col].to_numpy())).numpy().astype(np.float32)
