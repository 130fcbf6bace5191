"""Contrastive losses of the omni-modal encoder: InfoNCE with a learnable temperature,
Matryoshka prefixes, sequence-to-item with log-Q correction and ID-to-item alignment.

Every loss takes unnormalised ``(B, D)`` embeddings and applies itself to each L2-normalised
Matryoshka prefix (``prefixes``, e.g. 16/32/64), averaging over prefixes, so a prefix can serve
a cheaper tier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.omni.encoders import unit_prefix

MAX_LOG_SCALE = math.log(100.0)


class LogitScale(nn.Module):
    """Learnable inverse temperature ``exp(log_scale)`` (CLIP), clamped to at most 100."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()


def _same_id_mask(ids: torch.Tensor | None, n: int) -> torch.Tensor:
    """``(n, n)`` True where row i and column j (i != j) hold the same item: not a negative."""
    if ids is None:
        return torch.zeros((n, n), dtype=torch.bool)
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(n, dtype=torch.bool)


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: torch.Tensor,
    *,
    ids: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE of ``B`` aligned pairs ``query[i] <-> key[i]`` (unit vectors ``(B, d)``).

    Logits ``scale * query @ key.T``; the other rows are the negatives, except rows holding
    the same item (``ids (B,)``, masked). ``log_q (B,)``: log sampling probability of each
    key, subtracted from its column (log-Q correction, query -> key direction only).
    ``symmetric`` adds the key -> query direction. Fewer than two rows: zero.
    """
    n = query.shape[0]
    if n < 2:
        return (query.sum() + key.sum()) * 0.0
    logits = scale * query @ key.T
    hidden = _same_id_mask(ids, n)
    labels = torch.arange(n)
    forward = logits if log_q is None else logits - log_q[None, :]
    loss = F.cross_entropy(forward.masked_fill(hidden, float("-inf")), labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T.masked_fill(hidden, float("-inf")), labels))
    return loss


def matryoshka_info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: torch.Tensor,
    prefixes: Sequence[int],
    **kwargs: object,
) -> torch.Tensor:
    """``info_nce`` on each normalised prefix of ``query``/``key`` ``(B, D)``, averaged."""
    losses = [
        info_nce(unit_prefix(query, w), unit_prefix(key, w), scale, **kwargs)  # type: ignore[arg-type]
        for w in prefixes
    ]
    return torch.stack(losses).mean()


def modality_pair_loss(
    views: torch.Tensor,
    valid: torch.Tensor,
    scale: torch.Tensor,
    prefixes: Sequence[int],
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-modal InfoNCE over every pair of views an item has.

    ``views (V, B, D)``: the item embedded from ``V`` views (each modality alone, all
    together); ``valid (V, B)`` bool: whether the item has that view. For each pair of views
    the loss runs over the rows valid in both; pairs are averaged (weighted by rows).
    """
    total, rows = views.new_zeros(()), 0
    num_views = views.shape[0]
    for a in range(num_views):
        for b in range(a + 1, num_views):
            both = valid[a] & valid[b]
            k = int(both.sum())
            if k < 2:
                continue
            sub_ids = None if ids is None else ids[both]
            loss = matryoshka_info_nce(views[a][both], views[b][both], scale, prefixes, ids=sub_ids)
            total, rows = total + loss * k, rows + k
    if rows == 0:
        return views.sum() * 0.0
    return total / rows


def mean_history(items: torch.Tensor, history: torch.Tensor, width: int) -> torch.Tensor:
    """Query of each row: the normalised mean of its history items' normalised prefixes.

    ``items (U, D)`` embeddings of the unique items of a batch; ``history (B, N)`` int64 rows
    into ``items`` (-1 = padding). Returns ``(B, width)`` unit vectors (zeros for an empty
    history).
    """
    unit = unit_prefix(items, width)
    mask = (history >= 0).to(unit.dtype)
    gathered = unit[history.clamp(min=0)] * mask[..., None]
    return F.normalize(gathered.sum(1), dim=-1)


def seq2item_loss(
    items: torch.Tensor,
    history: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor,
    prefixes: Sequence[int],
    log_q: torch.Tensor | None,
    ids: torch.Tensor,
) -> torch.Tensor:
    """Sequence-to-item: the mean of the last N history items predicts the next item.

    ``items (U, D)``, ``history (B, N)`` and ``target (B,)`` rows into ``items``; the other
    targets of the batch are the negatives (same item masked), ``log_q (B,)`` corrects for
    popular targets appearing often as negatives. Averaged over Matryoshka prefixes.
    """
    losses = []
    for w in prefixes:
        query = mean_history(items, history, w)
        key = unit_prefix(items[target], w)
        losses.append(info_nce(query, key, scale, ids=ids, log_q=log_q, symmetric=False))
    return torch.stack(losses).mean()


def id2item_loss(
    omni: torch.Tensor,
    id_vectors: torch.Tensor,
    projection: nn.Module,
    scale: torch.Tensor,
) -> torch.Tensor:
    """ID-to-item: the projected omni embedding ``projection(omni) (B, T)`` of each item is
    contrasted with its collaborative ID embedding ``id_vectors (B, T)`` against the other
    items' (both directions)."""
    return info_nce(F.normalize(projection(omni), dim=-1), F.normalize(id_vectors, dim=-1), scale)
