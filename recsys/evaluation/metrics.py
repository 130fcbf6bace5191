"""Streaming evaluation metrics: per-rank sufficient statistics, summed over ranks.

No metric here gathers predictions to one rank. Each accumulator keeps a fixed-size summary
that batches add into and ranks sum (``all_reduce``):

- ``BinaryMetrics``: log loss and lt7 squared error as sums (exact); AUC from per-label
  histograms of the predicted probability over ``bins`` equal-width bins. Pairs of a positive
  and a negative in different bins are ordered exactly; pairs inside one bin count one half,
  so the AUC is exact up to ``valid_auc_max_error`` (half the share of positive-negative pairs
  that share a bin), which is reported beside it. 65,536 bins cost 1 MiB per rank.
- ``RetrievalRecall``: recall@K of (user, positive item) pairs against the distinct items
  seen, each rank scoring its own pairs against the candidate corpus in chunks, so memory is
  ``chunk_rows × chunk_items`` scores, never pairs × corpus.

Under ``torch.distributed`` every rank calls ``compute`` (collective); without a process
group, or in a world of one, nothing is exchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

LOGLOSS_EPS = 1e-7
AUC_BINS = 1 << 16


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed element-wise over all ranks (a copy on the CPU)."""
    if _world_size() == 1:
        return values.clone()
    buf = values.to(device)
    dist.all_reduce(buf)
    return buf.cpu()


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """``(auc, max_error)`` from counts of positives and negatives per score bin (ascending).

    A positive beats every negative in a lower bin and half of those in its own bin.
    ``max_error`` bounds the distance to the exact AUC: half the share of pairs in one bin.
    NaN when one class is absent.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    neg_below = np.cumsum(neg) - neg
    pairs = n_pos * n_neg
    auc = float((pos * (neg_below + 0.5 * neg)).sum() / pairs)
    return auc, float(0.5 * (pos * neg).sum() / pairs)


class BinaryMetrics:
    """AUC, log loss and (when given) lt7 RMSE of a binary classifier, batch by batch.

    Example::

        acc = BinaryMetrics()
        for batch in batches:
            acc.update(torch.sigmoid(logits), batch.labels)   # (B,), (B,) in {0, 1}
        acc.compute(device)  # {"valid_rows", "valid_auc", "valid_auc_max_error", "valid_logloss"}
    """

    def __init__(self, bins: int = AUC_BINS) -> None:
        self.bins = bins
        self.pos = torch.zeros(bins, dtype=torch.float64)
        self.neg = torch.zeros(bins, dtype=torch.float64)
        # rows, log-loss sum, lt7 squared-error sum, lt7 rows
        self.sums = torch.zeros(4, dtype=torch.float64)

    def update(
        self,
        probs: torch.Tensor,
        labels: torch.Tensor,
        lt_sq_err: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: ``probs`` (B,) in [0, 1], ``labels`` (B,) in {0, 1}, ``lt_sq_err``
        (B,) squared lt7 errors (NaN where the row has no lt7)."""
        p = probs.detach().double().cpu().flatten()
        y = labels.detach().double().cpu().flatten()
        positive = y > 0.5
        index = (p * self.bins).long().clamp_(0, self.bins - 1)
        self.pos += torch.bincount(index[positive], minlength=self.bins).double()
        self.neg += torch.bincount(index[~positive], minlength=self.bins).double()
        q = p.clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        logloss = -(y * q.log() + (1 - y) * (1 - q).log()).sum()
        self.sums[0] += len(p)
        self.sums[1] += logloss
        if lt_sq_err is not None:
            err = lt_sq_err.detach().double().cpu().flatten()
            known = torch.isfinite(err)
            self.sums[2] += err[known].sum()
            self.sums[3] += known.sum()

    def compute(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """The metrics over every rank's rows (collective under torch.distributed)."""
        total = sum_over_ranks(torch.cat([self.pos, self.neg, self.sums]), torch.device(device))
        pos, neg, sums = (
            total[: self.bins],
            total[self.bins : 2 * self.bins],
            total[2 * self.bins :],
        )
        rows, logloss, lt_sum, lt_rows = (float(x) for x in sums)
        auc, max_error = auc_from_histograms(pos.numpy(), neg.numpy())
        out = {"valid_rows": rows, "valid_auc": auc, "valid_auc_max_error": max_error}
        if rows:
            out["valid_logloss"] = logloss / rows
        if lt_rows:
            out["valid_lt7_rmse"] = math.sqrt(lt_sum / lt_rows)
        return out


def recall_at_k(
    queries: np.ndarray,
    true_ids: np.ndarray,
    corpus: np.ndarray,
    corpus_ids: np.ndarray,
    k: int,
    *,
    chunk_rows: int = 1024,
    chunk_items: int = 65536,
) -> int:
    """How many of the ``P`` queries rank their true item in the top ``k`` of the corpus.

    Args:
        queries: ``(P, D)`` user vectors, one per (user, positive item) pair.
        true_ids: ``(P,)`` the positive item of each pair; every one must be in ``corpus_ids``.
        corpus: ``(C, D)`` candidate item vectors; ``corpus_ids`` ``(C,)`` sorted, distinct.
        k: the cut-off.

    A query's rank is the number of corpus items scored strictly higher (dot product) than its
    true item. Scores are computed ``chunk_rows × chunk_items`` at a time.
    """
    if len(queries) == 0:
        return 0
    where = np.searchsorted(corpus_ids, true_ids)
    where = np.minimum(where, len(corpus_ids) - 1)
    if not np.array_equal(corpus_ids[where], true_ids):
        missing = true_ids[corpus_ids[where] != true_ids][:3].tolist()
        raise ValueError(f"recall_at_k: true items {missing} are not in the candidate corpus")
    hits = 0
    for lo in range(0, len(queries), chunk_rows):
        q = queries[lo : lo + chunk_rows]
        true_score = np.einsum("pd,pd->p", q, corpus[where[lo : lo + chunk_rows]])
        higher = np.zeros(len(q), dtype=np.int64)
        for c in range(0, len(corpus), chunk_items):
            scores = q @ corpus[c : c + chunk_items].T  # (chunk_rows, chunk_items)
            higher += (scores > true_score[:, None]).sum(axis=1)
        hits += int((higher < k).sum())
    return hits


class RetrievalRecall:
    """Recall@K of a two-tower model, batch by batch.

    ``update`` keeps this rank's (user vector, positive item) pairs and the distinct candidate
    items it saw; ``compute`` exchanges only the candidate corpus (distinct items, the
    catalogue), never the pairs, and sums hit counts over ranks.
    """

    def __init__(self, k: int, dim: int) -> None:
        self.k, self.dim = k, dim
        self._queries: list[np.ndarray] = []
        self._true_ids: list[np.ndarray] = []
        self._items: dict[int, np.ndarray] = {}

    def update(
        self,
        users: np.ndarray,
        true_ids: np.ndarray,
        items: np.ndarray,
        item_ids: np.ndarray,
    ) -> None:
        """``users`` (P, D) and ``true_ids`` (P,): the batch's positive pairs; ``items``
        (B, D) and ``item_ids`` (B,): the batch's candidate items."""
        self._queries.append(np.asarray(users, dtype=np.float32).reshape(-1, self.dim))
        self._true_ids.append(np.asarray(true_ids, dtype=np.int64))
        for item_id, vec in zip(np.asarray(item_ids).tolist(), items, strict=True):
            self._items.setdefault(item_id, np.asarray(vec, dtype=np.float32))

    def _corpus(self) -> tuple[np.ndarray, np.ndarray]:
        local = (
            np.fromiter(self._items, dtype=np.int64, count=len(self._items)),
            np.stack(list(self._items.values()))
            if self._items
            else np.zeros((0, self.dim), np.float32),
        )
        parts = [local]
        if _world_size() > 1:
            gathered: list[object] = [None] * _world_size()
            dist.all_gather_object(gathered, local)
            parts = gathered  # type: ignore[assignment]
        ids = np.concatenate([p[0] for p in parts])
        vecs = np.concatenate([p[1] for p in parts])
        ids, first = np.unique(ids, return_index=True)
        return vecs[first], ids

    def compute(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """``{"valid_recall@K": share of pairs hit, "valid_pairs": pairs}`` over all ranks."""
        corpus, corpus_ids = self._corpus()
        queries = (
            np.concatenate(self._queries) if self._queries else np.zeros((0, self.dim), np.float32)
        )
        true_ids = np.concatenate(self._true_ids) if self._true_ids else np.zeros(0, np.int64)
        hits = recall_at_k(queries, true_ids, corpus, corpus_ids, self.k)
        total = sum_over_ranks(
            torch.tensor([hits, len(queries)], dtype=torch.float64), torch.device(device)
        )
        hits_all, pairs = float(total[0]), float(total[1])
        recall = hits_all / pairs if pairs else float("nan")
        return {f"valid_recall@{self.k}": recall, "valid_pairs": pairs}
