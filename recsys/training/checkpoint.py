"""Training checkpoints: atomic, exactly resumable, loadable with ``weights_only=True``.

A checkpoint is one file per rank in the run directory, each written atomically (a crash
mid-write leaves the previous checkpoint in place):

- ``checkpoint.pt`` (rank 0): the full, unsharded model ``state_dict`` (also what export
  reads), the dense optimizer state, the fused embedding optimizer's local shards, RNG
  states and the training position (epoch, batch in epoch, step, loss curve, metrics).
- ``checkpoint.rank<r>.pt`` (ranks > 0): that rank's fused optimizer shards and RNG states.

Every file holds only tensors, numbers, strings, lists and dicts, so ``torch.load`` runs
with ``weights_only=True``; files of one checkpoint carry the same ``step`` and a mismatch
is refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel

from recsys.atomic import atomic_file
from recsys.training.distributed import DistEnv

FORMAT = 1
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def rank_file(directory: Path, rank: int, name: str = CHECKPOINT) -> Path:
    """The checkpoint file of ``rank`` (rank 0 owns the plain name)."""
    if rank == 0:
        return directory / name
    stem = name.removesuffix(".pt")
    return directory / f"{stem}.rank{rank}.pt"


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


def full_state_dict(model: DistributedModelParallel, env: DistEnv) -> dict[str, torch.Tensor]:
    """The unsharded ``state_dict`` on rank 0 (empty elsewhere); collective over ranks."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            if env.world_size == 1:
                shard = value.local_shards()[0]
                if tuple(shard.tensor.shape) != tuple(value.size()):
                    raise RuntimeError(f"{key}: single rank holds a partial shard")
                out[key] = shard.tensor.detach().cpu().clone()
                continue
            full = None
            if env.is_main:  # nccl gathers into device memory, gloo into host memory
                full = torch.empty(value.size(), dtype=value.dtype, device=env.device)
            value.gather(dst=0, out=full)
            if full is not None:
                out[key] = full.cpu()
        elif env.is_main:
            out[key] = value.detach().cpu().clone()
    return out


def _local_shards(state: Any) -> Any:
    """Replace every ShardedTensor in a nested dict by the list of its local shard tensors."""
    if isinstance(state, ShardedTensor):
        return [s.tensor.detach().cpu().clone() for s in state.local_shards()]
    if isinstance(state, dict):
        return {k: _local_shards(v) for k, v in state.items()}
    return state


def _copy_local_shards(current: Any, saved: Any, where: str) -> None:
    if isinstance(current, ShardedTensor):
        shards = current.local_shards()
        if not isinstance(saved, list) or len(saved) != len(shards):
            raise CheckpointError(f"{where}: saved shards do not match this sharding plan")
        for s, t in zip(shards, saved, strict=True):
            if s.tensor.shape != t.shape:
                raise CheckpointError(
                    f"{where}: shard shape {tuple(t.shape)} != {tuple(s.tensor.shape)}"
                )
            s.tensor.detach().copy_(t)
    elif isinstance(current, dict):
        for k, v in current.items():
            if k not in saved:
                raise CheckpointError(f"{where}.{k}: missing from the checkpoint")
            _copy_local_shards(v, saved[k], f"{where}.{k}")


def save_checkpoint(
    directory: str | Path,
    model: DistributedModelParallel,
    dense_optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    env: DistEnv,
    *,
    name: str = CHECKPOINT,
) -> Path:
    """Write this rank's file of the checkpoint atomically; returns rank 0's file path."""
    directory = Path(directory)
    state: dict[str, Any] = {
        "format": FORMAT,
        "step": int(progress["step"]),
        "world_size": env.world_size,
        "fused_optimizer": _local_shards(model.fused_optimizer.state_dict()["state"]),
        "rng": rng_state(),
    }
    full = full_state_dict(model, env)
    if env.is_main:
        state["model"] = full
        state["dense_optimizer"] = dense_optimizer.state_dict()
        state["progress"] = progress
    with atomic_file(rank_file(directory, env.rank, name)) as f:
        torch.save(state, f)
    return directory / name


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file with ``weights_only=True``; errors name the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a format-{FORMAT} training checkpoint")
    return state


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The unsharded model ``state_dict`` of a checkpoint (rank 0's file)."""
    state = read_checkpoint(path)
    if "model" not in state:
        raise CheckpointError(f"{path}: holds no model weights (not rank 0's file?)")
    return state["model"]


def load_checkpoint(
    directory: str | Path,
    model: DistributedModelParallel,
    dense_optimizer: torch.optim.Optimizer,
    env: DistEnv,
    *,
    name: str = CHECKPOINT,
    expect: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore model, both optimizers and RNG states in place; return the saved progress.

    ``expect`` maps progress keys (e.g. ``kind``, ``kwargs``) to the values this run would
    write; a checkpoint of another model is refused before anything is loaded.
    """
    directory = Path(directory)
    main_path = rank_file(directory, 0, name)
    main = read_checkpoint(main_path)
    own_path = rank_file(directory, env.rank, name)
    own = main if env.rank == 0 else read_checkpoint(own_path)
    if main["world_size"] != env.world_size:
        raise CheckpointError(
            f"{main_path}: written by {main['world_size']} ranks, resuming with {env.world_size}"
        )
    if own["step"] != main["step"]:
        raise CheckpointError(f"{own_path}: step {own['step']} != {main_path} step {main['step']}")
    for key, value in (expect or {}).items():
        if main["progress"].get(key) != value:
            raise CheckpointError(
                f"{main_path}: was written for a different {key!r} than this run's; "
                "train into another directory or with resume=False"
            )
    model.load_state_dict(main["model"])
    current = model.fused_optimizer.state_dict()["state"]
    _copy_local_shards(current, own["fused_optimizer"], f"{own_path}:fused_optimizer")
    dense_optimizer.load_state_dict(main["dense_optimizer"])
    set_rng_state(own["rng"])
    return main["progress"]


def has_checkpoint(directory: str | Path, name: str = CHECKPOINT) -> bool:
    return (Path(directory) / name).exists()
