"""The training loop for the ranker and the two-tower model, at any world size.

``train(cfg, examples_dir, out_dir)`` reads ``examples_dir/manifest.json`` for the feature
spec, builds the model from ``cfg.model``/``cfg.embedding`` under ``cfg.train.seed``, wraps it
in ``DistributedModelParallel`` (a world of one unless started by ``torchrun``), and trains:
fused row-wise Adagrad on the embedding tables, AdamW on everything else. After every epoch it
validates (ranker: AUC and log loss; two-tower: recall@K), keeps ``best.pt`` for the best epoch
and stops early after ``cfg.train.patience`` epochs without improvement. ``checkpoint.pt`` holds
the exact position (mid-epoch too), so an interrupted run resumed with ``resume=True`` follows
the same loss curve as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm

from recsys.atomic import write_json
from recsys.config import PipelineConfig
from recsys.features.batcher import Batch, ExampleBatcher
from recsys.features.spec import FeatureSpec
from recsys.features.vocabulary import build_vocabulary
from recsys.models.ranker import Ranker
from recsys.models.two_tower import TwoTower, TwoTowerOutput
from recsys.training.checkpoint import (
    BEST,
    CHECKPOINT,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from recsys.training.distributed import (
    DistEnv,
    all_mean,
    dense_parameters,
    gather_arrays,
    init_distributed,
    lockstep,
    lockstep_all,
    make_batcher,
    shard,
)

METRICS = "metrics.json"


@dataclass
class TrainResult:
    """What a training run produced.

    ``metrics`` holds one dict per finished epoch (``epoch``, ``train_loss``,
    ``examples_per_s`` and the validation metrics); ``losses`` the training loss of every
    step (mean over ranks); ``checkpoint`` the best epoch's file (for export) and
    ``last_checkpoint`` the resumable position.
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_spec(examples_dir: str | Path) -> FeatureSpec:
    """The feature spec recorded in ``examples_dir/manifest.json``."""
    path = Path(examples_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; run the prepare stage first") from None
    return FeatureSpec.from_manifest(manifest)


def build_model(
    cfg: PipelineConfig, spec: FeatureSpec, examples_dir: str | Path | None = None
) -> Ranker | TwoTower:
    """The model ``cfg.model.kind`` names, built from config (uses the torch RNG).

    Collisionless tables need the training split's vocabulary, read from ``examples_dir``.
    """
    vocab = None
    if cfg.embedding.kind == "collisionless":
        if examples_dir is None:
            raise ValueError("embedding.kind 'collisionless' needs the examples directory")
        vocab = build_vocabulary(examples_dir, list(spec.sparse))
    if cfg.model.kind == "ranker":
        return Ranker.from_config(cfg.model, cfg.embedding, spec, vocab=vocab)
    return TwoTower.from_config(cfg.model, cfg.embedding, spec, vocab=vocab)


def metric_name(cfg: PipelineConfig) -> str:
    """The validation metric that picks the best epoch (higher is better)."""
    return "valid_auc" if cfg.model.kind == "ranker" else f"valid_recall@{cfg.train.recall_k}"


def _to(batch: Batch, device: torch.device) -> Batch:
    return batch if device.type == "cpu" else batch.to(device, non_blocking=True)


def training_loss(model: nn.Module, inner: nn.Module, batch: Batch, cfg: PipelineConfig):
    """The loss of one batch (``model`` may be the DMP wrapper, ``inner`` is the bare model)."""
    if isinstance(inner, Ranker):
        out = model(batch.sparse, batch.dense)
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
    """Validation metrics over every row of ``batcher`` (all ranks together)."""
    model.eval()
    if isinstance(inner, Ranker):
        probs, labels, lt_err = [], [], []
        for batch, real in lockstep_all(iter(batcher), env):
            batch = _to(batch, env.device)
            out = model(batch.sparse, batch.dense)
            if not real:
                continue
            probs.append(torch.sigmoid(out.logits).float().cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
            if out.lt7 is not None and batch.lt7 is not None:
                err = ((out.lt7 - batch.lt7) ** 2).float().cpu().numpy()
                lt_err.append(err[np.isfinite(err)])
        local = {
            "p": np.concatenate(probs) if probs else np.zeros(0, np.float32),
            "y": np.concatenate(labels) if labels else np.zeros(0, np.float32),
            "lt": np.concatenate(lt_err) if lt_err else np.zeros(0, np.float32),
        }
        g = gather_arrays(local, env)
        return ranking_metrics(g["y"], g["p"], g["lt"])
    users, items, pos_items, cand_ids = [], [], [], []
    for batch, real in lockstep_all(iter(batcher), env):
        batch = _to(batch, env.device)
        out = model(batch.sparse)
        if not real:
            continue
        pos = (batch.labels > 0.5).cpu()
        users.append(out.user.cpu()[pos].numpy())
        pos_items.append(out.item_ids.cpu()[pos].numpy())
        items.append(out.item.cpu().numpy())
        cand_ids.append(out.item_ids.cpu().numpy())
    dim = inner.tower_dim
    local = {
        "u": np.concatenate(users) if users else np.zeros((0, dim), np.float32),
        "pid": np.concatenate(pos_items) if pos_items else np.zeros(0, np.int64),
        "v": np.concatenate(items) if items else np.zeros((0, dim), np.float32),
        "cid": np.concatenate(cand_ids) if cand_ids else np.zeros(0, np.int64),
    }
    g = gather_arrays(local, env)
    k = cfg.train.recall_k
    return {f"valid_recall@{k}": recall_at_k(g["u"], g["pid"], g["v"], g["cid"], k)}


def ranking_metrics(y: np.ndarray, p: np.ndarray, lt_sq_err: np.ndarray) -> dict[str, float]:
    """AUC (NaN with one class only), log loss and, when present, lt7 RMSE."""
    out: dict[str, float] = {"valid_rows": float(len(y))}
    if len(y) and 0 < y.sum() < len(y):
        out["valid_auc"] = float(roc_auc_score(y, p))
    else:
        out["valid_auc"] = float("nan")
    if len(y):
        out["valid_logloss"] = float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if len(lt_sq_err):
        out["valid_lt7_rmse"] = float(np.sqrt(lt_sq_err.mean()))
    return out


def recall_at_k(
    users: np.ndarray,
    true_ids: np.ndarray,
    item_vecs: np.ndarray,
    item_ids: np.ndarray,
    k: int,
) -> float:
    """Share of (user, positive item) pairs whose item is in the user's top ``k`` by dot product.

    The candidate corpus is the distinct items in ``item_ids`` (the validation split's items).
    """
    if len(users) == 0:
        return float("nan")
    uniq, first = np.unique(item_ids, return_index=True)
    corpus = item_vecs[first]
    scores = users @ corpus.T  # (P, C)
    target = np.searchsorted(uniq, true_ids)
    true_score = scores[np.arange(len(users)), target]
    rank = (scores > true_score[:, None]).sum(axis=1)
    return float((rank < k).mean())


def _better(value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    return best is None or value > best


def train(
    cfg: PipelineConfig,
    examples_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
) -> TrainResult:
    """Train ``cfg.model.kind`` on ``examples_dir`` and write checkpoints to ``out_dir``.

    Under ``torchrun`` every rank calls this; rank 0 writes the shared files. With
    ``resume`` and a ``checkpoint.pt`` in ``out_dir`` the run continues from its exact position.
    """
    out_dir = Path(out_dir)
    tc = cfg.train
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    env = init_distributed()
    try:
        seed_everything(tc.seed)
        spec = read_spec(examples_dir)
        inner = build_model(cfg, spec, examples_dir)
        model = shard(inner, env, embedding_lr=tc.lr_embedding, sharding=tc.sharding)
        bare = model.module  # the sharded model without DMP/DDP wrappers
        optimizer = torch.optim.AdamW(
            dense_parameters(model), lr=tc.lr_dense, weight_decay=tc.weight_decay
        )
        name = metric_name(cfg)
        progress: dict[str, Any] = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "losses": [],
            "metrics": [],
            "best_epoch": -1,
            "best_metric": None,
            "bad_epochs": 0,
            "done": False,
            "metric_name": name,
            "kind": cfg.model.kind,
            "kwargs": inner.kwargs(cfg.model, spec),
            "config": cfg.model_dump(mode="json"),
        }
        if resume and has_checkpoint(out_dir):
            expect = {k: progress[k] for k in ("kind", "kwargs")}
            progress = load_checkpoint(out_dir, model, optimizer, env, expect=expect)
        train_batches = make_batcher(
            examples_dir, "train", spec, tc.batch_size, env,
            shuffle=True, seed=tc.seed, prefetch=tc.prefetch,
        )  # fmt: skip
        valid_batches = make_batcher(
            examples_dir, "valid", spec, tc.batch_size, env, shuffle=False, seed=tc.seed
        )

        def checkpoint(file: str = CHECKPOINT) -> None:
            save_checkpoint(out_dir, model, optimizer, progress, env, name=file)

        def step_budget_spent() -> bool:
            return tc.max_steps is not None and progress["step"] >= tc.max_steps

        stopped = False
        while not progress["done"] and progress["epoch"] < tc.epochs and not stopped:
            epoch = progress["epoch"]
            train_batches.set_epoch(epoch)
            train_batches.skip_batches(progress["batch"])  # resume mid-epoch exactly
            batches = iter(train_batches)
            model.train()
            bar = tqdm(
                desc=f"epoch {epoch}",
                unit="batch",
                disable=not (tc.progress and env.is_main),
                leave=False,
            )
            first_step = progress["step"] - progress["batch"]  # this epoch's first step
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
                value = all_mean(float(loss.detach()), env)
                progress["losses"].append(value)
                progress["batch"] += 1
                progress["step"] += 1
                seen += len(batch.labels) * env.world_size
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", ex_s=f"{rate:,.0f}")
                if tc.checkpoint_every and progress["step"] % tc.checkpoint_every == 0:
                    checkpoint()
                if step_budget_spent():
                    stopped = True
                    break
            bar.close()
            elapsed = time.perf_counter() - t0
            if stopped:
                checkpoint()
                break
            metrics = evaluate(model, bare, valid_batches, env, cfg)
            metrics.update(
                epoch=float(epoch),
                train_loss=float(np.mean(progress["losses"][first_step:])),
                examples_per_s=seen / max(elapsed, 1e-9),
            )
            progress["metrics"].append(metrics)
            progress["epoch"], progress["batch"] = epoch + 1, 0
            value = metrics.get(name, float("nan"))
            if _better(value, progress["best_metric"]):
                progress["best_metric"], progress["best_epoch"] = value, epoch
                progress["bad_epochs"] = 0
                checkpoint(BEST)
            else:
                progress["bad_epochs"] += 1
                if progress["bad_epochs"] >= tc.patience:
                    progress["done"] = True
            if progress["best_epoch"] < 0:  # no usable metric yet: keep the latest as best
                checkpoint(BEST)
            checkpoint()
            if env.is_main:
                write_json(out_dir / METRICS, progress["metrics"])
        return TrainResult(
            best_epoch=progress["best_epoch"],
            best_metric=progress["best_metric"],
            metric_name=name,
            metrics=list(progress["metrics"]),
            checkpoint=out_dir / BEST,
            last_checkpoint=out_dir / CHECKPOINT,
            losses=list(progress["losses"]),
            steps=progress["step"],
            stopped_early=bool(progress["done"]) and progress["epoch"] < tc.epochs,
        )
    finally:
        env.close()
