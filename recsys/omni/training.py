"""The two training stages of the omni-modal item encoder.

Stage 1 (content-aware, ``train_stage1``): every catalogue item is embedded from each of its
modalities alone and from all of them together (with modality dropout); InfoNCE with a
learnable temperature over every pair of those views the item has, on every Matryoshka prefix.

Stage 2 (collaboration-aware, ``train_stage2``), from the stage-1 weights:

- ``seq2item``: the mean of the last N history item embeddings predicts the next positive item
  (in-batch negatives, log-Q correction by the target's training frequency);
- ``id2item``: a linear projection of the omni embedding is contrasted with the item's
  collaborative ID embedding (from a trained two-tower), for items that have one;
- ``item2item``: the stage-1 cross-modal loss stays on, so content perception is kept.

Each loss is switched by ``OmniConfig`` (``seq2item``, ``id2item``, ``item2item`` and weights).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recsys.omni.config import OmniConfig
from recsys.omni.fusion import OmniModalEncoder
from recsys.omni.item_media import OmniInputs
from recsys.omni.losses import LogitScale, id2item_loss, modality_pair_loss, seq2item_loss


@dataclass
class NextItemPairs:
    """Training pairs of stage 2, as rows of the catalogue ``OmniInputs``.

    ``history (P, N)`` int64: the last ``N`` positive items before the target, oldest first,
    right-padded with -1; ``target (P,)`` int64: the next positive item.
    """

    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])


def next_item_pairs(sequences: Sequence[np.ndarray], history_length: int) -> NextItemPairs:
    """Every (last ``history_length`` items, next item) pair of each chronological sequence of
    catalogue rows; the first item of a sequence has no history and is no target."""
    histories, targets = [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        for t in range(1, len(seq)):
            past = seq[max(0, t - history_length) : t]
            row = np.full(history_length, -1, dtype=np.int64)
            row[: len(past)] = past
            histories.append(row)
            targets.append(seq[t])
    if not targets:
        return NextItemPairs(np.zeros((0, history_length), np.int64), np.zeros(0, np.int64))
    return NextItemPairs(np.stack(histories), np.asarray(targets, dtype=np.int64))


class ContentObjective(nn.Module):
    """The cross-modal (item-to-item) loss of a batch of items, with its own temperature."""

    def __init__(self, cfg: OmniConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = LogitScale(cfg.temperature)

    def forward(
        self, model: OmniModalEncoder, inputs: OmniInputs, ids: torch.Tensor
    ) -> torch.Tensor:
        present = model.present(inputs)  # (B, M)
        tokens = model.tokens(inputs)  # (B, M, D)
        m = present.shape[1]
        singles = [torch.eye(m, dtype=torch.bool)[j].expand_as(present) & present for j in range(m)]
        full = model.drop_modalities(present) if model.training else present
        keeps = torch.stack([*singles, full])  # (V, B, M)
        valid = torch.stack([*(present[:, j] for j in range(m)), present.any(1)])  # (V, B)
        v, b = keeps.shape[:2]
        fused = model.fuse(tokens.repeat(v, 1, 1), keeps.reshape(v * b, m)).reshape(v, b, -1)
        return modality_pair_loss(fused, valid, self.scale(), self.cfg.prefixes, ids)


def _optimizer(params: Sequence[nn.Parameter], cfg: OmniConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def train_stage1(
    cfg: OmniConfig,
    inputs: OmniInputs,
    rows: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[OmniModalEncoder, list[float]]:
    """Stage 1 on the catalogue items ``rows`` of ``inputs`` (default all); returns the
    encoder in eval mode and the loss of every step."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = OmniModalEncoder(cfg)
    objective = ContentObjective(cfg)
    params = [*model.parameters(), *objective.parameters()]
    optimizer = _optimizer(params, cfg)
    rows = np.arange(len(inputs)) if rows is None else np.asarray(rows)
    losses: list[float] = []
    model.train()
    steps = cfg.stage1_epochs * max(1, -(-len(rows) // cfg.batch_size))
    with tqdm(total=steps, desc="omni stage 1", disable=not progress, leave=False) as bar:
        for _ in range(cfg.stage1_epochs):
            order = rng.permutation(rows)
            for s in range(0, len(order), cfg.batch_size):
                batch = order[s : s + cfg.batch_size]
                loss = objective(model, inputs.take(batch), torch.from_numpy(batch))
                _step(optimizer, loss, params)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return model.eval(), losses


class CollaborativeObjective(nn.Module):
    """Stage-2 losses; ``id_vectors (I, T)`` with ``has_id (I,)`` mark the items that have a
    collaborative ID embedding (rows of the catalogue)."""

    def __init__(self, cfg: OmniConfig, id_dim: int | None, target_counts: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        self.seq_scale = LogitScale(cfg.temperature)
        self.id_scale = LogitScale(cfg.temperature)
        self.content = ContentObjective(cfg)
        self.projection = nn.Linear(cfg.dim, id_dim) if id_dim else None
        # log-Q: log of each catalogue item's share of the training targets (add-one smoothed)
        counts = np.asarray(target_counts, dtype=np.float64) + 1.0
        self.register_buffer("log_q", torch.from_numpy(np.log(counts / counts.sum())).float())


def train_stage2(
    model: OmniModalEncoder,
    cfg: OmniConfig,
    inputs: OmniInputs,
    pairs: NextItemPairs,
    id_vectors: np.ndarray | None = None,
    has_id: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[OmniModalEncoder, list[float]]:
    """Stage 2 from (a copy of) the stage-1 ``model``; returns the new encoder in eval mode
    and the loss of every step. ``id_vectors (I, T)``/``has_id (I,)`` are needed when
    ``cfg.id2item`` is on."""
    if cfg.id2item and (id_vectors is None or has_id is None):
        raise ValueError("omni stage 2: id2item is on but no id_vectors/has_id were given")
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    model = copy.deepcopy(model).train()
    counts = np.bincount(pairs.target, minlength=len(inputs))
    objective = CollaborativeObjective(
        cfg, id_vectors.shape[1] if cfg.id2item and id_vectors is not None else None, counts
    )
    params = [*model.parameters(), *objective.parameters()]
    optimizer = _optimizer(params, cfg)
    ids_t = None if id_vectors is None else torch.from_numpy(np.asarray(id_vectors, np.float32))
    has_id_t = None if has_id is None else torch.from_numpy(np.asarray(has_id, bool))
    losses: list[float] = []
    steps = cfg.stage2_epochs * max(1, -(-len(pairs) // cfg.batch_size))
    with tqdm(total=steps, desc="omni stage 2", disable=not progress, leave=False) as bar:
        for _ in range(cfg.stage2_epochs):
            order = rng.permutation(len(pairs))
            for s in range(0, len(order), cfg.batch_size):
                batch = order[s : s + cfg.batch_size]
                loss = _stage2_loss(model, objective, inputs, pairs, batch, ids_t, has_id_t, rng)
                _step(optimizer, loss, params)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return model.eval(), losses


def _stage2_loss(
    model: OmniModalEncoder,
    objective: CollaborativeObjective,
    inputs: OmniInputs,
    pairs: NextItemPairs,
    batch: np.ndarray,
    id_vectors: torch.Tensor | None,
    has_id: torch.Tensor | None,
    rng: np.random.Generator,
) -> torch.Tensor:
    cfg = objective.cfg
    history, target = pairs.history[batch], pairs.target[batch]
    used = np.unique(np.concatenate([history[history >= 0], target]))
    used_t = torch.from_numpy(used)
    loss = torch.zeros(())
    if cfg.seq2item or cfg.id2item:
        emb = model(inputs.take(used))  # (U, D)
    if cfg.seq2item:
        hist_pos = np.where(history >= 0, np.searchsorted(used, history), -1)
        tgt_pos = torch.from_numpy(np.searchsorted(used, target))
        target_t = torch.from_numpy(target)
        log_q = objective.log_q[target_t] if cfg.logq else None
        loss = loss + cfg.seq2item_weight * seq2item_loss(
            emb, torch.from_numpy(hist_pos), tgt_pos, objective.seq_scale(), cfg.prefixes,
            log_q, target_t,
        )  # fmt: skip
    if cfg.id2item:
        assert id_vectors is not None and has_id is not None and objective.projection is not None
        known = has_id[used_t]
        if int(known.sum()) >= 2:
            loss = loss + cfg.id2item_weight * id2item_loss(
                emb[known], id_vectors[used_t[known]], objective.projection, objective.id_scale()
            )
    if cfg.item2item:
        # a half batch of the items in play keeps the content task on at half the cost
        size = max(2, cfg.batch_size // 2)
        rows = used if len(used) <= size else rng.choice(used, size, replace=False)
        content = objective.content(model, inputs.take(rows), torch.from_numpy(rows))
        loss = loss + cfg.item2item_weight * content
    return loss
