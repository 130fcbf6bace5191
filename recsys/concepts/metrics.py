"""Offline metrics of concept models: AUC, per-user NDCG@k, concept precision@k, and the
explanation baselines (an item's most popular concept, its concept most clicked by the user)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import ndcg_score, roc_auc_score

from recsys.concepts.data import ItemCatalog
from recsys.concepts.space import ConceptSpace


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (NaN with one class only)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def per_user_ndcg(
    user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10
) -> float:
    """Mean over users with at least one positive and one negative row of NDCG@k of their
    rows ranked by ``scores`` (labels as gains; scikit-learn's ``ndcg_score``)."""
    frame = pd.DataFrame({"u": user_ids, "y": labels, "s": scores})
    values = []
    for _, rows in frame.groupby("u", sort=False):
        y = rows["y"].to_numpy()
        if y.min() == y.max():
            continue
        values.append(ndcg_score(y[None, :], rows["s"].to_numpy()[None, :], k=k))
    return float(np.mean(values)) if values else float("nan")


def concept_precision(
    space: ConceptSpace, items: ItemCatalog, mask: np.ndarray, k: int = 5
) -> dict[str, float]:
    """Concept prediction on the items of ``mask`` that have known concepts: ``precision@k``
    (hits / k), ``recall@k`` (hits / number of true concepts) and ``items``."""
    rows = np.flatnonzero(mask & np.array([bool(c) for c in items.concepts]))
    if len(rows) == 0:
        return {f"precision@{k}": float("nan"), f"recall@{k}": float("nan"), "items": 0}
    ranked = space.item_concept_ranking(items.ids[rows], k)
    hits = np.array(
        [len(set(r.tolist()) & set(items.concepts[p])) for r, p in zip(ranked, rows, strict=True)]
    )
    sizes = np.array([len(items.concepts[p]) for p in rows])
    return {
        f"precision@{k}": float(np.mean(hits / k)),
        f"recall@{k}": float(np.mean(hits / sizes)),
        "items": int(len(rows)),
    }


def popular_concept(items: ItemCatalog, counts: Sequence[int], item_id: str) -> int | None:
    """Baseline explanation: the item's concept carried by the most items (ties: lower id)."""
    pos = items.index.get(str(item_id))
    if pos is None or not items.concepts[pos]:
        return None
    return min(items.concepts[pos], key=lambda c: (-counts[c], c))


def history_concept(
    items: ItemCatalog, counts: Sequence[int], item_id: str, history: Sequence[str]
) -> int | None:
    """Baseline explanation: the item's concept that occurs most among the concepts of the
    user's history items (ties and no overlap: the more popular concept)."""
    pos = items.index.get(str(item_id))
    if pos is None or not items.concepts[pos]:
        return None
    seen: Counter[int] = Counter()
    for h in history:
        hp = items.index.get(str(h))
        if hp is not None:
            seen.update(items.concepts[hp])
    return min(items.concepts[pos], key=lambda c: (-seen[c], -counts[c], c))
