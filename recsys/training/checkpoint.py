"""Training checkpoints: sharded (``torch.distributed.checkpoint``), atomic, exactly resumable,
and loadable on another world size.

A checkpoint is a directory in the run directory (``checkpoint/``, ``best/``)::

    .metadata, __<r>_0.distcp   DCP: every rank writes only the shards it holds of the model
                                (embedding tables), the fused row-wise Adagrad state and the
                                dense AdamW state (replicated tensors are written once)
    rng.rank<r>.pt              rank r's Python/NumPy/torch RNG states (tensors, numbers)
    state.json                  the ``TrainingState`` (position, losses, metrics, fingerprint)

No rank ever gathers the whole model. Loading reshards: DCP reads, for each tensor this rank
holds under the current sharding plan, the overlapping pieces of the saved shards, so a run
saved by 2 ranks resumes on 1 and the other way round (``fingerprint`` decides when that is
allowed). ``load_model_weights`` reads the full, unsharded weights in one process (export).

Writes go to ``.<name>.tmp-<pid>-<random>/`` and the finished directory replaces the old one
in one step (``recsys.atomic.replace_dir``): a run killed mid-write leaves the previous
checkpoint in place and the next save sweeps the leftover. Nothing is unpickled on load:
tensors load with ``torch.load(weights_only=True)`` (DCP's reader and ``rng`` files), the
DCP ``.metadata`` file through an unpickler that admits only DCP's metadata classes, and the
state is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torchrec.distributed.model_parallel import DistributedModelParallel

from recsys.atomic import atomic_file, replace_dir, sweep_temporaries, write_json
from recsys.training.distributed import DistEnv, broadcast_from_main
from recsys.training.fingerprint import fingerprint_differences
from recsys.training.state import TrainingState, TrainingStateError

log = logging.getLogger(__name__)

FORMAT = 2
CHECKPOINT = "checkpoint"
BEST = "best"
STATE = "state.json"
LEGACY_FILES = ("checkpoint.pt", "best.pt")  # format 1: one unsharded file per rank


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


# -- safe reading --------------------------------------------------------------------------

_TORCH_TYPES = (torch.dtype, torch.layout, torch.memory_format)
# what DCP's FileSystemWriter pickles into ``.metadata``: its dataclasses and enums, the
# storage index of each item, paths, and torch's layout lookup by name
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata classes, ``torch.Size``, dtypes and plain containers only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == _METADATA_MODULE and isinstance(super().find_class(module, name), type):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_TYPES):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, with ``.metadata`` read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file (not a complete checkpoint)") from None
        except Exception as e:  # truncated, foreign or tampered
            raise CheckpointError(f"{path}: unreadable checkpoint metadata: {e}") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: holds {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# -- RNG -----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_file(path: Path, rank: int) -> Path:
    return path / f"rng.rank{rank}.pt"


# -- what is saved -------------------------------------------------------------------------


def init_dense_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's per-parameter state now (zeros, step 0: what its first step would
    create), so that a checkpoint always holds it and a load has tensors to fill."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _dense_optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """The dense optimizer's state tensors by parameter position (the live tensors)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {str(i): dict(optimizer.state[p]) for i, p in enumerate(params)}


def _tensors(model: DistributedModelParallel, dense_optimizer: torch.optim.Optimizer) -> dict:
    return {
        "model": model.state_dict(),
        "fused_optimizer": model.fused_optimizer.state_dict()["state"],
        "dense_optimizer": _dense_optimizer_tensors(dense_optimizer),
    }


# -- save / load ---------------------------------------------------------------------------


def save_checkpoint(
    directory: str | Path,
    model: DistributedModelParallel,
    dense_optimizer: torch.optim.Optimizer,
    state: TrainingState,
    env: DistEnv,
    *,
    name: str = CHECKPOINT,
) -> Path:
    """Write ``directory/name`` (collective: every rank writes its shards); returns its path."""
    directory = Path(directory)
    target = directory / name
    tmp_name = None
    if env.is_main:
        sweep_temporaries(target)
        tmp_name = f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = directory / broadcast_from_main(tmp_name, env)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        try:
            dcp.save(_tensors(model, dense_optimizer), storage_writer=FileSystemWriter(tmp))
        except CheckpointException as e:
            raise CheckpointError(
                f"{target}: checkpoint not written ({_failures(e)}); the previous one is kept"
            ) from e
        with atomic_file(_rng_file(tmp, env.rank)) as f:
            torch.save(rng_state(), f)
        _barrier(env)
        if env.is_main:
            write_json(
                tmp / STATE,
                {"format": FORMAT, "world_size": env.world_size, "state": state.to_dict()},
            )
            replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own leftover (a sweep keeps a live pid's)
        raise
    _barrier(env)
    return target


def _failures(error: CheckpointException) -> str:
    """``rank r: OSError: disk full`` for each failed rank of a DCP collective."""
    failures = getattr(error, "failures", {}) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        cause = failure[0] if isinstance(failure, tuple) else failure  # (exception, trace)
        parts.append(f"rank {rank}: {type(cause).__name__}: {cause}")
    return "; ".join(parts) or str(error)


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its ``best``)."""
    path = Path(path)
    if path.is_dir() and not (path / STATE).exists() and (path / BEST).is_dir():
        return path / BEST
    return path


def read_state(path: str | Path) -> tuple[TrainingState, int]:
    """``(state, world size that wrote it)`` of a checkpoint directory; errors name the file."""
    file = Path(path) / STATE
    try:
        saved = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: no such file (not a checkpoint directory)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable checkpoint state: {e}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a format-{FORMAT} training checkpoint")
    try:
        return TrainingState.from_dict(saved.get("state"), str(file)), int(saved["world_size"])
    except (TrainingStateError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def has_checkpoint(directory: str | Path, name: str = CHECKPOINT) -> bool:
    """Whether ``directory`` holds a checkpoint ``name``; a format-1 file is refused."""
    directory = Path(directory)
    legacy = [f for f in LEGACY_FILES if (directory / f).exists()]
    if legacy:
        raise CheckpointError(
            f"{directory / legacy[0]}: a format-1 (single-file) checkpoint; this version writes "
            f"sharded checkpoint directories: train into another directory or delete {legacy}"
        )
    return (directory / name / STATE).exists()


def load_checkpoint(
    directory: str | Path,
    model: DistributedModelParallel,
    dense_optimizer: torch.optim.Optimizer,
    env: DistEnv,
    *,
    expect: TrainingState,
    name: str = CHECKPOINT,
) -> TrainingState:
    """Restore model, both optimizers and RNG states in place; return the saved state.

    ``expect`` is the state this run would start with: a checkpoint whose fingerprint differs
    where resuming cannot be exact is refused before anything is loaded, naming every
    differing key (``recsys.training.fingerprint``).
    """
    path = Path(directory) / name
    saved, _ = read_state(path)
    refused, resumable = fingerprint_differences(saved.fingerprint, expect.fingerprint)
    if refused:
        raise CheckpointError(
            f"{path}: cannot resume: this run differs from the checkpoint in "
            + "; ".join(refused)
            + ". Train into another directory or with resume=False"
        )
    if resumable and env.is_main:
        log.info("%s: resuming at example %d of epoch %d with %s", path,
                 saved.epoch_examples, saved.epoch, "; ".join(resumable))  # fmt: skip
    tensors = _tensors(model, dense_optimizer)
    try:
        dcp.load(tensors, storage_reader=SafeFileSystemReader(path))
    except CheckpointException as e:  # missing shard files, shapes that do not fit this plan
        raise CheckpointError(f"{path}: cannot load: {_failures(e)}") from None
    model.load_state_dict(tensors["model"])
    # the fused optimizer's hyper-parameters come from the config (its state_dict has none)
    model.fused_optimizer.load_state_dict({"state": tensors["fused_optimizer"]})
    rng = _rng_file(path, env.rank)
    if not rng.exists():  # resumed on more ranks than wrote it
        rng = _rng_file(path, 0)
    set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    saved.fingerprint = expect.fingerprint  # what the following checkpoints are written by
    return saved


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The full, unsharded model ``state_dict`` of a checkpoint directory (or a run
    directory's ``best``), read in this process alone (no process group needed)."""
    path = checkpoint_path(path)
    read_state(path)  # a complete checkpoint has its state written last
    reader = SafeFileSystemReader(path)
    metadata = reader.read_metadata()
    prefix = "model."
    weights = {
        key: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not weights:
        raise CheckpointError(f"{path}: holds no model weights")
    try:
        dcp.load(weights, storage_reader=reader, no_dist=True)
    except (CheckpointException, Exception) as e:
        cause = _failures(e) if isinstance(e, CheckpointException) else str(e)
        raise CheckpointError(f"{path}: cannot load the model weights: {cause}") from None
    return {key.removeprefix(prefix): value for key, value in weights.items()}
