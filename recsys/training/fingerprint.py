"""What a resumed run must share with the run that wrote its checkpoint.

A fingerprint is a flat ``{key: JSON value}`` dict stored in every checkpoint:

- ``model.*`` and ``embedding.*``: every key of those config sections (shapes and losses);
- ``train.seed`` (the shuffle order), ``train.lr_dense``, ``train.lr_embedding``,
  ``train.weight_decay``, ``train.sharding`` (the optimizer state's layout) and
  ``train.recall_k`` (the metric that picks the best epoch);
- ``data.sha256``: a digest of ``manifest.json`` and of every example file's path and size;
- ``train.batch_size`` and ``world_size``;
- ``match.features``: the names of the match features the ranker reads (only when it has any,
  so runs without them keep the fingerprint they always had).

Resuming with a different value of any key is refused, naming every differing key, except
for the keys in :data:`RESUMABLE`: the position is counted in examples of the epoch's
(seed-defined) order, so a run resumed with another global batch size or world size trains
every remaining example of the epoch exactly once (the world size only with table-wise
sharding: column-wise optimizer state is shaped by the world size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys.config import PipelineConfig

TRAIN_KEYS = (
    "seed",
    "batch_size",
    "lr_dense",
    "lr_embedding",
    "weight_decay",
    "sharding",
    "recall_k",
)
RESUMABLE = frozenset({"train.batch_size", "world_size"})


def examples_digest(examples_dir: str | Path) -> str:
    """sha256 of ``manifest.json`` and each ``split=*/**/*.parquet`` file's path and size.

    Cheap at any data size (no file is read but the manifest); a rewritten split changes
    the manifest's counts and statistics or the files' sizes.
    """
    root = Path(examples_dir)
    digest = hashlib.sha256()
    manifest = root / "manifest.json"
    digest.update(manifest.read_bytes() if manifest.exists() else b"<no manifest>")
    for path in sorted(root.glob("split=*/**/*.parquet")):
        digest.update(f"\n{path.relative_to(root).as_posix()}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _flatten(prefix: str, section: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in sorted(section.items())}


def run_fingerprint(
    cfg: PipelineConfig,
    examples_dir: str | Path,
    world_size: int,
    match_features: Sequence[str] = (),
) -> dict[str, Any]:
    """The fingerprint of a run of ``cfg`` on ``examples_dir`` over ``world_size`` ranks,
    reading the match features named ``match_features``."""
    dumped = cfg.model_dump(mode="json")
    fingerprint = {
        **_flatten("model", dumped["model"]),
        **_flatten("embedding", dumped["embedding"]),
        **{f"train.{k}": dumped["train"][k] for k in TRAIN_KEYS},
        "data.sha256": examples_digest(examples_dir),
        "world_size": world_size,
    }
    if match_features:
        fingerprint["match.features"] = list(match_features)
    return fingerprint


def fingerprint_differences(
    saved: dict[str, Any], current: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """``(refused, resumable)``: the differing keys, as ``"key: saved -> current"`` lines."""
    refused, resumable = [], []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if before == after:
            continue
        line = f"{key}: {_short(before)} -> {_short(after)}"
        (resumable if _resumable(key, current) else refused).append(line)
    return refused, resumable


def _resumable(key: str, current: dict[str, Any]) -> bool:
    # column-wise row-wise Adagrad keeps one accumulator per row of each column shard, so its
    # optimizer state has the world size in its shape
    if key == "world_size" and current.get("train.sharding") == "column_wise":
        return False
    return key in RESUMABLE


def _short(value: Any, limit: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
