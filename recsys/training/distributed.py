"""Process group, sharding and rank-aware batching for training.

One code path for every scale: a plain ``python`` run is a world of one (an in-process gloo
group), ``torchrun --nproc_per_node=N`` gives N ranks (gloo on CPU, nccl on GPUs). The model
is always wrapped in TorchRec's ``DistributedModelParallel``, so embedding tables always use
FBGEMM's fused (in-backward, sparse) row-wise Adagrad, with the same numerics at any world
size; only the sharding plan changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from recsys.features.batcher import Batch, ExampleBatcher
from recsys.features.spec import FeatureSpec

EMBEDDING_EPS = 1e-8


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool  # this process created the group and destroys it in ``close``

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> DistEnv:
    """Join the group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), or make a world of one when those are not set.

    Uses nccl when CUDA is available (one GPU per local rank), gloo otherwise.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    owns = False
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            store = dist.HashStore()
            dist.init_process_group(backend=backend, store=store, rank=0, world_size=1)
        owns = True
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=dist.get_backend(),
        owns_group=owns,
    )


def embedding_collections(model: nn.Module) -> list[EmbeddingBagCollection]:
    """Every ``EmbeddingBagCollection`` inside ``model`` (the tables DMP shards)."""
    return [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]


def shard(
    model: nn.Module,
    env: DistEnv,
    *,
    embedding_lr: float,
    sharding: Literal["table_wise", "column_wise"] = "table_wise",
    initial_state: dict[str, torch.Tensor] | None = None,
) -> DistributedModelParallel:
    """Wrap ``model`` in ``DistributedModelParallel``: fused row-wise Adagrad on every table,
    dense parts data-parallel. ``table_wise``: the planner places whole tables under that
    constraint; ``column_wise``: every table's columns are split over all ranks.

    DMP re-initialises the tables it shards, so ``initial_state`` (an unsharded
    ``state_dict``, default: ``model``'s own) is loaded back afterwards: the wrapped model
    starts from exactly the weights the seed produced, at any world size.
    """
    if initial_state is None:
        initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for ebc in embedding_collections(model):
        apply_optimizer_in_backward(
            RowWiseAdagrad, ebc.parameters(), {"lr": embedding_lr, "eps": EMBEDDING_EPS}
        )
    sharders = get_default_sharders()
    if sharding == "column_wise":
        plan = column_wise_plan(model, env)
    else:
        constraints = {
            table.name: ParameterConstraints(sharding_types=[sharding], compute_kernels=["fused"])
            for ebc in embedding_collections(model)
            for table in ebc.embedding_bag_configs()
        }
        topology = Topology(
            world_size=env.world_size,
            compute_device=env.device.type,
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)),
        )
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        plan = planner.collective_plan(model, sharders, dist.group.WORLD)
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
    )
    dmp.load_state_dict(initial_state)
    return dmp


def column_wise_plan(model: nn.Module, env: DistEnv) -> ShardingPlan:
    """Split every table's columns evenly over all ranks (FBGEMM wants shard widths that are
    multiples of 4); a table too narrow for that goes whole to one rank, round-robin."""
    plans = {}
    n = 0
    for path, module in model.named_modules():
        if not isinstance(module, EmbeddingBagCollection):
            continue
        per_param = {}
        for table in module.embedding_bag_configs():
            if table.embedding_dim % (4 * env.world_size) == 0:
                ranks = list(range(env.world_size))
            else:
                ranks = [n % env.world_size]
                n += 1
            per_param[table.name] = column_wise(ranks=ranks, compute_kernel="fused")
        plans[path] = construct_module_sharding_plan(
            module,
            per_param,
            local_size=int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)),
            world_size=env.world_size,
            device_type=env.device.type,
        )
    return ShardingPlan(plans)


def dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters not updated by a fused (in-backward) optimizer, in a stable order."""
    return [p for _, p in in_backward_optimizer_filter(model.named_parameters())]


def make_batcher(
    examples_dir: str | Path,
    split: str,
    spec: FeatureSpec,
    batch_size: int,
    env: DistEnv,
    *,
    shuffle: bool,
    seed: int,
    prefetch: int = 4,
) -> ExampleBatcher:
    """A batcher reading this rank's share; ``batch_size`` is the global batch size.

    The batcher deals consecutive sub-batches of ``batch_size / world_size`` rows round-robin
    to the ranks, so the rows one synchronous step sees on all ranks together are exactly
    the rows of the single-process batch at the same step.
    """
    if batch_size % env.world_size:
        raise ValueError(
            f"train.batch_size: {batch_size} is not divisible by the world size {env.world_size}"
        )
    return ExampleBatcher(
        examples_dir,
        split,
        spec,
        batch_size // env.world_size,
        shuffle=shuffle,
        seed=seed,
        prefetch=prefetch,
        drop_last=False,
        rank=env.rank,
        world_size=env.world_size,
    )


def _all_true(flag: bool, env: DistEnv) -> tuple[bool, bool]:
    """(every rank's flag, any rank's flag)."""
    if env.world_size == 1:
        return flag, flag
    t = torch.tensor([int(flag), int(flag)], device=env.device)
    lo, hi = t.clone()[:1], t.clone()[1:]
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo.item()), bool(hi.item())


def lockstep(batches: Iterator[Batch], env: DistEnv) -> Iterator[Batch]:
    """Yield batches while every rank has one (sharded forwards are collective)."""
    for batch in batches:
        every, _ = _all_true(True, env)
        if not every:
            return
        yield batch
    _all_true(False, env)


def lockstep_all(batches: Iterator[Batch], env: DistEnv) -> Iterator[tuple[Batch, bool]]:
    """Yield ``(batch, real)`` until every rank is done; a finished rank repeats its last batch
    with ``real=False`` so the others can finish (for evaluation, where no row may be lost)."""
    last: Batch | None = None
    it = iter(batches)
    while True:
        batch = next(it, None)
        real = batch is not None
        _, any_real = _all_true(real, env)
        if not any_real:
            return
        if real:
            last = batch
        if last is None:
            raise RuntimeError(f"rank {env.rank}: no evaluation rows while other ranks have some")
        yield last, real


def all_sum(values: list[float], env: DistEnv) -> list[float]:
    """Each of ``values`` summed over ranks, in one float64 ``all_reduce``."""
    if env.world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def broadcast_from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable value: a flag or a message)."""
    if env.world_size == 1:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
