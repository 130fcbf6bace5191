"""Training of the SESA concept model (and its latent baseline) on prepared examples.

``train_sesa(cfg, examples_dir, out_dir)`` reads the raw items and users beside the examples
(``recsys.concepts.data``), the concept vocabulary (the manifest's, else computed from the
items), and trains ``SesaModel`` with

    loss = BCE(score, label)                                   (supervised ranking loss)
         + concept_loss_weight * mean_items sum_c BCE(z_ic, has_concept_ic)   (auxiliary)

where the auxiliary term covers the items of the batch (candidates and history items) whose
concept labels are not held back. Each epoch ends with validation AUC on the ``valid`` split,
scored by the frozen ``ConceptSpace``; the best epoch is kept (early stop after
``train.patience`` epochs without improvement) and, with ``out_dir``, written to
``out_dir/best`` (``recsys.concepts.checkpoint``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from recsys.concepts.data import (
    Examples,
    ItemCatalog,
    UserCatalog,
    history_positions,
    raw_dir_of,
    read_examples,
    read_raw_tables,
)
from recsys.concepts.space import ConceptSpace
from recsys.concepts.vocabulary import ConceptVocabulary, load_vocabulary
from recsys.config import PipelineConfig, SesaConfig
from recsys.models.sesa import SesaModel

log = logging.getLogger(__name__)


@dataclass
class ConceptData:
    """Everything a concept model trains and is evaluated on."""

    vocab: ConceptVocabulary
    items: ItemCatalog
    users: UserCatalog
    holdout: np.ndarray  # (I,) bool
    raw_dir: Path
    examples_dir: Path


def load_concept_data(cfg: PipelineConfig, examples_dir: str | Path) -> ConceptData:
    """Vocabulary, item and user catalogues for ``examples_dir`` (raw logs: ``cfg.out/raw``
    or the manifest's ``params.raw_dir``)."""
    examples_dir = Path(examples_dir)
    raw_dir = raw_dir_of(examples_dir, cfg.out / "raw")
    items_table, users_table = read_raw_tables(raw_dir)
    vocab = load_vocabulary(examples_dir, items_table, cfg.prepare.concept_min_count)
    items = ItemCatalog.from_table(items_table, vocab)
    return ConceptData(
        vocab,
        items,
        UserCatalog.from_table(users_table, vocab),
        items.holdout(cfg.sesa.holdout_fraction),
        raw_dir,
        examples_dir,
    )


def build_sesa_model(sc: SesaConfig, num_concepts: int) -> SesaModel:
    """The ``SesaModel`` the ``sesa`` config section describes (uses the torch RNG)."""
    return SesaModel(
        num_concepts,
        explicit=sc.variant == "sesa",
        top_k=sc.top_k,
        min_relative_activation=sc.min_relative_activation,
        num_buckets=sc.num_buckets,
        max_tokens=sc.max_tokens,
        embed_dim=sc.embed_dim,
        hidden=sc.hidden,
        id_buckets=sc.id_buckets,
    )


def space_from_model(
    model: SesaModel, data: ConceptData, name: str, history_length: int
) -> ConceptSpace:
    """Freeze ``model`` into a ``ConceptSpace`` over every item and user of ``data``."""
    model.eval()
    with torch.no_grad():
        vectors, content_bias, logits = model.encode_texts(data.items.texts)
        item_bias = content_bias + model.id_bias(
            "item", model.id_buckets_of("item", data.items.ids)
        ).numpy().astype(np.float32)
        alpha, beta = (float(t) for t in model.mixing())
        c = model.num_concepts
        if model.explicit:
            declared_map = np.eye(c, dtype=np.float32) * np.float32(alpha)
        else:
            declared_map = (np.float32(alpha) * model.concept_head.weight.numpy()).astype(
                np.float32
            )
        user_declared = (data.users.declared_matrix(c) @ declared_map).astype(np.float32)
        user_bias = model.id_bias("user", model.id_buckets_of("user", data.users.ids)).numpy()
        weights = model.weights().numpy().astype(np.float32)
        global_bias = float(model.global_bias)

    def encoder(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        v, b, _ = model.encode_texts(list(texts))
        return v, b

    return ConceptSpace(
        name=name,
        vocabulary=data.vocab,
        explicit=model.explicit,
        item_ids=data.items.ids,
        item_vectors=vectors,
        item_bias=item_bias.astype(np.float32),
        user_ids=data.users.ids,
        user_declared=user_declared,
        user_bias=user_bias.astype(np.float32),
        beta=beta,
        weights=weights,
        global_bias=global_bias,
        declared_map=declared_map,
        history_length=history_length,
        concept_scores=logits,
        encoder=encoder,
        item_content_bias=content_bias.astype(np.float32),
    )


@dataclass
class SesaRun:
    """A trained concept model: the best epoch's model and frozen space, per-epoch metrics."""

    model: SesaModel
    space: ConceptSpace
    data: ConceptData
    metrics: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_auc: float = float("nan")
    seconds: float = 0.0


class _TrainArrays:
    """Training rows as index arrays into the catalogues (-1: unknown user / item)."""

    def __init__(self, examples: Examples, data: ConceptData, model: SesaModel, length: int):
        self.user_rows = data.users.positions(examples.user_ids)
        self.item_rows = data.items.positions(examples.item_ids)
        self.history = history_positions(examples.histories, data.items, length)
        self.labels = torch.from_numpy(examples.labels)
        self.user_buckets = model.id_buckets_of("user", examples.user_ids)
        self.item_buckets = model.id_buckets_of("item", examples.item_ids)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Tensors:
    """Per-catalogue tensors every step reads."""

    tokens: torch.Tensor  # (I, T)
    lengths: torch.Tensor  # (I,)
    declared: torch.Tensor  # (U + 1, C); the last row (all zeros) is for unknown users
    concept_targets: torch.Tensor  # (I, C)
    concept_known: torch.Tensor  # (I,) bool: labels visible to the auxiliary loss
    cache: torch.Tensor | None = None  # (I, K) no-gradient item vectors (history cache)


@torch.no_grad()
def _item_cache(model: SesaModel, t: _Tensors, chunk: int = 1024) -> torch.Tensor:
    """``(I, K)`` every item's vector without gradient (the history cache)."""
    was_training = model.training
    model.eval()
    parts = [
        model.encode(t.tokens[s : s + chunk], t.lengths[s : s + chunk]).vectors
        for s in range(0, len(t.tokens), chunk)
    ]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros((0, model.dim))


def _batch_loss(
    model: SesaModel, arrays: _TrainArrays, rows: np.ndarray, t: _Tensors, concept_weight: float
) -> tuple[torch.Tensor, float]:
    """Loss of one batch of rows, and its ranking part. History items are encoded with
    gradients, or read from ``t.cache`` when it is set."""
    items, history = arrays.item_rows[rows], arrays.history[rows]
    encoded = (
        items[items >= 0]
        if t.cache is not None
        else np.concatenate([items[items >= 0], history[history >= 0]])
    )
    needed = np.unique(encoded)
    enc = model.encode(t.tokens[needed], t.lengths[needed])
    zero = len(needed)  # index of an all-zero row for unknown items and padding
    vectors = torch.cat([enc.vectors, torch.zeros(1, model.dim)])
    content_bias = torch.cat([enc.bias, torch.zeros(1)])
    # every known candidate (and, without the cache, history item) is in ``needed``
    item_local = torch.from_numpy(np.where(items >= 0, np.searchsorted(needed, items), zero))
    mask = torch.from_numpy(history >= 0).float()
    if t.cache is not None:
        source = torch.cat([t.cache, torch.zeros(1, model.dim)])
        hist_index = torch.from_numpy(np.where(history >= 0, history, len(t.cache)))
    else:
        source = vectors
        hist_index = torch.from_numpy(
            np.where(history >= 0, np.searchsorted(needed, history), zero)
        )
    hist_sum = (source[hist_index] * mask[..., None]).sum(1)
    hist_mean = hist_sum / mask.sum(1, keepdim=True).clamp(min=1.0)
    users = arrays.user_rows[rows]
    user_declared = t.declared[torch.from_numpy(np.where(users >= 0, users, len(t.declared) - 1))]
    user = model.user_vectors(user_declared, hist_mean)
    rows_t = torch.from_numpy(rows)
    scores = model.pair_scores(
        user,
        vectors[item_local],
        model.id_bias("user", arrays.user_buckets[rows_t]),
        content_bias[item_local] + model.id_bias("item", arrays.item_buckets[rows_t]),
    )
    ranking = F.binary_cross_entropy_with_logits(scores, arrays.labels[rows_t])
    loss = ranking
    labelled = t.concept_known[torch.from_numpy(needed)]
    if concept_weight > 0 and bool(labelled.any()):
        sel = torch.nonzero(labelled).squeeze(1)
        targets = t.concept_targets[torch.from_numpy(needed)[sel]]
        bce = F.binary_cross_entropy_with_logits(enc.concept_logits[sel], targets, reduction="sum")
        loss = loss + concept_weight * bce / len(sel)
    return loss, float(ranking.detach())


def _parameter_groups(model: SesaModel, sc: SesaConfig) -> list[dict]:
    """Adam groups: embedding tables at ``sc.lr_embedding``, everything else at ``sc.lr``."""
    tables = [model.encoder.embed.weight, model.item_id_bias.weight, model.user_id_bias.weight]
    ids = {id(p) for p in tables}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": tables, "lr": sc.lr_embedding}, {"params": rest, "lr": sc.lr}]


def valid_auc(space: ConceptSpace, examples: Examples) -> float:
    """AUC of ``space`` on ``examples`` (NaN when they hold one class only)."""
    if len(examples) == 0 or len(np.unique(examples.labels)) < 2:
        return float("nan")
    scores = space.score_numpy(examples.user_ids, examples.histories, examples.item_ids)
    return float(roc_auc_score(examples.labels, scores))


def train_sesa(
    cfg: PipelineConfig,
    examples_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    data: ConceptData | None = None,
) -> SesaRun:
    """Train ``cfg.sesa.variant`` on ``examples_dir``; with ``out_dir``, write its best epoch
    to ``out_dir/best`` (see the module docstring)."""
    from recsys.concepts.checkpoint import save_sesa_checkpoint
    from recsys.training.model_factory import seed_everything

    t0 = time.perf_counter()
    sc, tc = cfg.sesa, cfg.train
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    data = data or load_concept_data(cfg, examples_dir)
    model = build_sesa_model(sc, len(data.vocab))
    tokens, lengths = model.tokenizer.encode(data.items.texts)
    c = len(data.vocab)
    tensors = _Tensors(
        tokens,
        lengths,
        torch.from_numpy(
            np.concatenate([data.users.declared_matrix(c), np.zeros((1, c), np.float32)])
        ),
        torch.from_numpy(data.items.concept_targets(np.arange(len(data.items)), c)),
        torch.from_numpy(~data.holdout & np.array([bool(ids) for ids in data.items.concepts])),
    )
    train_rows = read_examples(examples_dir, "train")
    rng = np.random.default_rng(tc.seed)
    if sc.max_train_rows is not None and len(train_rows) > sc.max_train_rows:
        train_rows = train_rows.take(
            np.sort(rng.choice(len(train_rows), sc.max_train_rows, replace=False))
        )
    valid = read_examples(examples_dir, "valid")
    arrays = _TrainArrays(train_rows, data, model, sc.history_length)
    optimizer = torch.optim.Adam(_parameter_groups(model, sc))
    name = sc.variant
    run = SesaRun(model, space_from_model(model, data, name, sc.history_length), data)
    best_state, bad_epochs, steps = None, 0, 0
    for epoch in range(tc.epochs):
        model.train()
        order = rng.permutation(len(arrays))
        losses = []
        bar = tqdm(
            range(0, len(order), tc.batch_size), desc=f"{name} epoch {epoch}", leave=False,
            disable=not tc.progress, unit="batch",
        )  # fmt: skip
        for start in bar:
            rows = order[start : start + tc.batch_size]
            if sc.history_refresh_steps and steps % sc.history_refresh_steps == 0:
                tensors.cache = _item_cache(model, tensors)
            loss, ranking = _batch_loss(model, arrays, rows, tensors, sc.concept_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(ranking)
            steps += 1
            bar.set_postfix(loss=f"{ranking:.4f}")
            if tc.max_steps is not None and steps >= tc.max_steps:
                break
        space = space_from_model(model, data, name, sc.history_length)
        auc = valid_auc(space, valid)
        run.metrics.append(
            {"epoch": float(epoch), "train_loss": float(np.mean(losses)), "valid_auc": auc}
        )
        log.info("%s epoch %d: train loss %.4f, valid AUC %.4f", name, epoch, np.mean(losses), auc)
        if best_state is None or auc > run.best_auc or np.isnan(run.best_auc):
            best_state = copy.deepcopy(model.state_dict())
            run.best_epoch, run.best_auc, run.space, bad_epochs = epoch, auc, space, 0
        else:
            bad_epochs += 1
            if bad_epochs >= tc.patience:
                break
        if tc.max_steps is not None and steps >= tc.max_steps:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.attach_vocabulary(data.vocab)
    run.seconds = time.perf_counter() - t0
    if out_dir is not None:
        save_sesa_checkpoint(Path(out_dir), model, cfg, data, run)
    return run
