"""The training loop for the ranker and the two-tower model, at any world size.

``train(cfg, examples_dir, out_dir)`` takes the run directory's lock (``RunLock``), builds the
model (``model_factory``) under ``cfg.train.seed``, wraps it in ``DistributedModelParallel``
(a world of one unless started by ``torchrun``) and trains: fused row-wise Adagrad on the
embedding tables, AdamW on everything else. After every epoch it validates (ranker: AUC and
log loss; two-tower: recall@K, both streaming, ``recsys.evaluation``), keeps the ``best``
checkpoint for the best epoch and stops early after ``cfg.train.patience`` epochs without
improvement. The featurised training split stays in memory across epochs when it fits in
``train.in_memory_mb`` (``ExampleBatcher.keep_in_memory``: the same batches as streaming), and
the next epoch's first batches are prepared while an epoch is validated. A ranker with
``model.num_match`` match inputs reads the scores of the ``match_features`` given to ``train``
(``Batch.match``). The ``checkpoint`` holds the exact position (mid-epoch too, counted in examples),
so an interrupted run resumed with ``resume=True`` follows the same loss curve as one that was
never interrupted; a resume whose config or data differ where that matters is refused
(``recsys.training.fingerprint``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recsys.atomic import write_json
from recsys.config import PipelineConfig
from recsys.evaluation.metrics import BinaryMetrics, RetrievalRecall
from recsys.features.batcher import Batch, ExampleBatcher
from recsys.models.match import MatchFeature
from recsys.models.ranker import Ranker, RankerOutput
from recsys.models.two_tower import TwoTowerOutput
from recsys.training.checkpoint import (
    BEST,
    CHECKPOINT,
    has_checkpoint,
    init_dense_optimizer_state,
    load_checkpoint,
    save_checkpoint,
)
from recsys.training.distributed import (
    DistEnv,
    all_sum,
    broadcast_from_main,
    dense_parameters,
    init_distributed,
    lockstep,
    lockstep_all,
    make_batcher,
    shard,
)
from recsys.training.fingerprint import run_fingerprint
from recsys.training.model_factory import build_model, read_spec, seed_everything
from recsys.training.run_lock import RunLock, RunLockError
from recsys.training.state import TrainingState

METRICS = "metrics.json"


@dataclass
class TrainResult:
    """What a training run produced.

    ``metrics`` holds one dict per finished epoch (``epoch``, ``train_loss``,
    ``train_examples``, ``examples_per_s`` and the validation metrics); ``losses`` the training
    loss of every step (mean over ranks); ``checkpoint`` the best epoch's checkpoint (for
    export) and ``last_checkpoint`` the resumable position.
    """

    best_epoch: int
    best_metric: float | None
    metric_name: str
    metrics: list[dict[str, float]]
    checkpoint: Path
    last_checkpoint: Path
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    train_memory_bytes: int = 0  # the featurised training split kept in memory (0: streamed)


def metric_name(cfg: PipelineConfig) -> str:
    """The validation metric that picks the best epoch (higher is better)."""
    return "valid_auc" if cfg.model.kind == "ranker" else f"valid_recall@{cfg.train.recall_k}"


def _to(batch: Batch, device: torch.device) -> Batch:
    return batch if device.type == "cpu" else batch.to(device, non_blocking=True)


def rank(model: nn.Module, inner: Ranker, batch: Batch) -> RankerOutput:
    """The ranker's output for ``batch``; ``batch.match`` is its match input when the model
    has match features (``model`` may be the DMP wrapper, ``inner`` is the bare ranker)."""
    if not inner.num_match:
        return model(batch.sparse, batch.dense)
    if batch.match is None:
        raise ValueError(
            f"the ranker has model.num_match = {inner.num_match} match features but the batch "
            "has none: pass match_features to train() / the batcher"
        )
    return model(batch.sparse, batch.dense, batch.match)


def check_match_features(inner: nn.Module, match_features: Sequence[MatchFeature]) -> None:
    """Raise ``ValueError`` unless ``match_features`` are exactly as many as the model reads
    (``model.num_match`` for a ranker; none for other models)."""
    wanted = inner.num_match if isinstance(inner, Ranker) else 0
    if wanted != len(match_features):
        names = [f.name for f in match_features]
        raise ValueError(
            f"model.num_match is {wanted} but {len(match_features)} match features were given "
            f"({names}): give train() one MatchFeature per model.num_match"
        )


def training_loss(
    model: nn.Module, inner: nn.Module, batch: Batch, cfg: PipelineConfig
) -> torch.Tensor:
    """The loss of one batch (``model`` may be the DMP wrapper, ``inner`` is the bare model)."""
    if isinstance(inner, Ranker):
        out = rank(model, inner, batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.labels)
        if out.lt7 is not None:
            # rows with a null lt7 (NaN) add nothing; the head stays in the graph every step
            # (DDP static graph) even when no row of the batch has one
            target = batch.lt7 if batch.lt7 is not None else torch.full_like(out.lt7, math.nan)
            known = torch.isfinite(target)
            err = torch.where(known, out.lt7 - torch.nan_to_num(target), 0.0) ** 2
            loss = loss + cfg.model.lt_weight * err.sum() / known.sum().clamp(min=1)
        return loss
    positives = batch.labels > 0.5
    out: TwoTowerOutput = model(batch.sparse, positives)
    return inner.in_batch_loss(out, positives)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inner: nn.Module,
    batcher: ExampleBatcher,
    env: DistEnv,
    cfg: PipelineConfig,
) -> dict[str, float]:
    """Validation metrics over every row of ``batcher``, accumulated streaming on each rank
    and summed over ranks (no rank ever holds another rank's predictions)."""
    model.eval()
    if isinstance(inner, Ranker):
        binary = BinaryMetrics()
        for batch, real in lockstep_all(iter(batcher), env):
            batch = _to(batch, env.device)
            out = rank(model, inner, batch)
            if not real:
                continue
            lt_err = None
            if out.lt7 is not None and batch.lt7 is not None:
                lt_err = (out.lt7 - batch.lt7) ** 2
            binary.update(torch.sigmoid(out.logits), batch.labels, lt_err)
        return binary.compute(env.device)
    recall = RetrievalRecall(cfg.train.recall_k, inner.tower_dim)
    for batch, real in lockstep_all(iter(batcher), env):
        batch = _to(batch, env.device)
        out = model(batch.sparse)
        if not real:
            continue
        pos = (batch.labels > 0.5).cpu()
        recall.update(
            out.user.float().cpu()[pos].numpy(),
            out.item_ids.cpu()[pos].numpy(),
            out.item.float().cpu().numpy(),
            out.item_ids.cpu().numpy(),
        )
    return recall.compute(env.device)


def _better(value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    return best is None or value > best


@contextmanager
def _run_lock(out_dir: Path, env: DistEnv) -> Iterator[None]:
    """Rank 0 holds ``out_dir``'s ``RunLock`` for the whole run; every rank learns whether
    it got it, and all raise the same ``RunLockError`` when it did not."""
    lock = RunLock(out_dir)
    refusal = None
    if env.is_main:
        try:
            lock.acquire()
        except (RunLockError, OSError) as e:  # every rank must hear of it, or they would hang
            refusal = str(e)
    refusal = broadcast_from_main(refusal, env)
    if refusal is not None:
        raise RunLockError(refusal)
    try:
        yield
    finally:
        lock.release()


def train(
    cfg: PipelineConfig,
    examples_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
    match_features: Sequence[MatchFeature] = (),
) -> TrainResult:
    """Train ``cfg.model.kind`` on ``examples_dir`` and write checkpoints to ``out_dir``.

    Under ``torchrun`` every rank calls this; rank 0 holds the run directory's lock and
    writes the shared files. With ``resume`` and a checkpoint in ``out_dir`` the run continues
    from its exact position, or is refused (``CheckpointError``, naming the differing keys)
    when what resume depends on has changed. A second run into a directory a live run holds
    is refused (``RunLockError``, naming its PID and host).

    ``match_features``: the frozen scorers whose scores a ranker with ``model.num_match > 0``
    reads (one per match input, in the ranker's order); every batch carries them
    (``Batch.match``, computed in the batchers' prefetch threads). A count that differs from
    ``model.num_match`` is a ``ValueError``.
    """
    out_dir = Path(out_dir)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    env = init_distributed()
    try:
        # Resolve the published pointer once (``<out>/examples`` is a symlink into the current
        # release): a prepare job publishing mid-run must not mix one release's manifest with
        # another's data.
        examples = Path(examples_dir).resolve()
        with _run_lock(out_dir, env):
            return _train_locked(
                cfg, examples, out_dir, env, resume=resume, match_features=match_features
            )
    finally:
        env.close()


def _train_locked(
    cfg: PipelineConfig,
    examples_dir: Path,
    out_dir: Path,
    env: DistEnv,
    *,
    resume: bool,
    match_features: Sequence[MatchFeature],
) -> TrainResult:
    tc = cfg.train
    seed_everything(tc.seed)
    spec = read_spec(examples_dir)
    inner = build_model(cfg, spec, examples_dir)
    check_match_features(inner, match_features)
    model = shard(inner, env, embedding_lr=tc.lr_embedding, sharding=tc.sharding)
    bare = model.module  # the sharded model without DMP/DDP wrappers
    optimizer = torch.optim.AdamW(
        dense_parameters(model), lr=tc.lr_dense, weight_decay=tc.weight_decay
    )
    init_dense_optimizer_state(optimizer)
    state = TrainingState(
        kind=cfg.model.kind,
        metric_name=metric_name(cfg),
        model_kwargs=inner.kwargs(cfg.model, spec),
        fingerprint=run_fingerprint(
            cfg, examples_dir, env.world_size, [f.name for f in match_features]
        ),
        config=cfg.model_dump(mode="json"),
    )
    if resume and has_checkpoint(out_dir):
        state = load_checkpoint(out_dir, model, optimizer, env, expect=state)
    train_batches = make_batcher(
        examples_dir, "train", spec, tc.batch_size, env,
        shuffle=True, seed=tc.seed, prefetch=tc.prefetch,
    )  # fmt: skip
    valid_batches = make_batcher(
        examples_dir, "valid", spec, tc.batch_size, env, shuffle=False, seed=tc.seed
    )
    for batcher in (train_batches, valid_batches):
        batcher.set_match_features(match_features)
    # Epochs after the first re-order the featurised split instead of reading it again.
    train_batches.keep_in_memory(tc.in_memory_mb)

    def checkpoint(name: str = CHECKPOINT) -> None:
        save_checkpoint(out_dir, model, optimizer, state, env, name=name)

    def step_budget_spent() -> bool:
        return tc.max_steps is not None and state.step >= tc.max_steps

    stopped = False
    upcoming: Iterator[Batch] | None = None  # the next epoch's batches, begun during validation
    while not state.done and state.epoch < tc.epochs and not stopped:
        epoch = state.epoch
        if upcoming is None:
            train_batches.set_epoch(epoch)
            train_batches.skip_examples(state.epoch_examples)  # resume mid-epoch exactly
            batches = iter(train_batches)
        else:
            batches, upcoming = upcoming, None
        model.train()
        bar = tqdm(
            desc=f"epoch {epoch}", unit="batch", disable=not (tc.progress and env.is_main),
            leave=False,
        )  # fmt: skip
        seen, t0 = 0, time.perf_counter()
        for batch in lockstep(batches, env):
            if step_budget_spent():  # resumed a run that had already used its budget
                stopped = True
                break
            batch = _to(batch, env.device)
            loss = training_loss(model, bare, batch, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, rows = all_sum([float(loss.detach()), float(len(batch.labels))], env)
            value = loss_sum / env.world_size
            state.losses.append(value)
            state.step += 1
            state.epoch_examples += int(rows)
            seen += int(rows)
            bar.update(1)
            bar.set_postfix(
                loss=f"{value:.4f}", ex_s=f"{seen / max(time.perf_counter() - t0, 1e-9):,.0f}"
            )
            if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                checkpoint()
            if step_budget_spent():
                stopped = True
                break
        bar.close()
        elapsed = time.perf_counter() - t0
        _close(batches)
        if stopped:
            checkpoint()
            break
        if epoch + 1 < tc.epochs:
            # the prefetch thread prepares the next epoch's first batches while we validate
            train_batches.set_epoch(epoch + 1)
            upcoming = iter(train_batches)
        _finish_epoch(
            state, evaluate(model, bare, valid_batches, env, cfg), seen, elapsed, tc.patience
        )
        if state.best_epoch == epoch or state.best_epoch < 0:  # no usable metric yet: latest
            checkpoint(BEST)
        checkpoint()
        if env.is_main:
            write_json(out_dir / METRICS, state.metrics)
    if upcoming is not None:  # stopped early: the prepared epoch is not needed
        _close(upcoming)
    return TrainResult(
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        metric_name=state.metric_name,
        metrics=list(state.metrics),
        checkpoint=out_dir / BEST,
        last_checkpoint=out_dir / CHECKPOINT,
        losses=list(state.losses),
        steps=state.step,
        stopped_early=state.done and state.epoch < tc.epochs,
        train_memory_bytes=train_batches.memory_bytes,
    )


def _close(batches: Iterator[Batch]) -> None:
    """Stop a batch iterator's prefetch thread (a no-op for plain generators run to the end)."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _finish_epoch(
    state: TrainingState, metrics: dict[str, float], seen: int, elapsed: float, patience: int
) -> None:
    """Record the finished epoch's metrics, move to the next epoch, update best/early stop."""
    epoch = state.epoch
    metrics.update(
        epoch=float(epoch),
        train_loss=float(np.mean(state.losses[state.epoch_start_step :])),
        train_examples=float(state.epoch_examples),
        examples_per_s=seen / max(elapsed, 1e-9),
    )
    state.metrics.append(metrics)
    state.epoch, state.epoch_examples, state.epoch_start_step = epoch + 1, 0, state.step
    value = metrics.get(state.metric_name, float("nan"))
    if _better(value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
    else:
        state.bad_epochs += 1
        state.done = state.bad_epochs >= patience
