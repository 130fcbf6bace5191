"""Next-item data from raw logs: chronological positive sequences, a time split, cold items.

``next_item_data(events, items, positive, split_ms, history_length)`` turns the positive events
of raw logs into what both training (stage 2 of the omni encoder, an ID two-tower) and the
cold-start evaluation need:

- ``train``: every training positive with the user's last ``N`` earlier positives (its
  history), in catalogue rows;
- ``test``: every positive at or after ``split_ms`` whose user has at least one earlier
  positive, with that history (training and earlier test positives alike: the user's real
  past at that moment);
- ``warm``: catalogue rows with at least one training positive; a test target outside it is
  *cold* (no training interaction taught any model about it).

``recall_at_k`` ranks every catalogue item for each query and reports recall@K on the cold and
warm targets separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch


@dataclass
class NextItemCases:
    """``M`` (user, history, target) cases; ``history (M, N)`` catalogue rows, oldest first,
    -1 padded; ``target (M,)`` rows; ``user_ids (M,)`` object array."""

    user_ids: np.ndarray
    history: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])


@dataclass
class NextItemData:
    """Training and test cases over one catalogue (``item_ids (I,)``, the items table order)."""

    item_ids: np.ndarray
    train: NextItemCases
    test: NextItemCases
    warm: np.ndarray  # (I,) bool: has a training positive

    @property
    def test_cold(self) -> np.ndarray:
        """``(M,)`` bool: the test target had no training positive."""
        return ~self.warm[self.test.target]


def _cases(
    users: np.ndarray, rows: np.ndarray, keep: np.ndarray, n: int, need_history: bool
) -> NextItemCases:
    """Cases at the positions ``keep`` of user-grouped chronological ``(users, rows)``."""
    hist, tgt, uid = [], [], []
    start = 0
    for end in np.flatnonzero(np.r_[users[1:] != users[:-1], True]) + 1:
        for t in range(start, end):
            if not keep[t] or (need_history and t == start):
                continue
            past = rows[max(start, t - n) : t]
            row = np.full(n, -1, dtype=np.int64)
            row[: len(past)] = past
            hist.append(row)
            tgt.append(rows[t])
            uid.append(users[t])
        start = end
    return NextItemCases(
        np.asarray(uid, dtype=object),
        np.stack(hist) if hist else np.zeros((0, n), np.int64),
        np.asarray(tgt, dtype=np.int64),
    )


def next_item_data(
    events: pa.Table,
    items: pa.Table,
    positive: pa.ChunkedArray | np.ndarray,
    split_ms: int,
    history_length: int,
) -> NextItemData:
    """Cases from the ``positive (E,)`` bool rows of ``events`` (``user_id``, ``item_id``,
    ``ts``), split at ``split_ms``. Events of items missing from ``items`` are dropped."""
    pos = events.filter(pa.array(np.asarray(positive, dtype=bool)))
    item_ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
    index = pc.index_in(pos.column("item_id"), value_set=pa.array(item_ids.tolist(), pa.string()))
    known = pc.is_valid(index)
    pos, index = pos.filter(known), index.filter(known)
    users = np.asarray(pos.column("user_id").to_pylist(), dtype=object)
    ts = pos.column("ts").cast(pa.int64()).to_numpy()
    rows = index.to_numpy().astype(np.int64)
    order = np.lexsort((ts, users))
    users, ts, rows = users[order], ts[order], rows[order]
    is_train = ts < split_ms
    warm = np.zeros(len(item_ids), dtype=bool)
    warm[rows[is_train]] = True
    return NextItemData(
        item_ids=item_ids,
        train=_cases(users, rows, is_train, history_length, need_history=False),
        test=_cases(users, rows, ~is_train, history_length, need_history=True),
        warm=warm,
    )


def history_queries(item_vectors: np.ndarray, history: np.ndarray) -> np.ndarray:
    """``(M, D)`` unit queries: the normalised mean of the history rows' unit vectors."""
    vecs = torch.nn.functional.normalize(torch.as_tensor(item_vectors, dtype=torch.float32), dim=-1)
    mask = torch.as_tensor(history >= 0, dtype=torch.float32)
    summed = (vecs[torch.as_tensor(history).clamp(min=0)] * mask[..., None]).sum(1)
    return torch.nn.functional.normalize(summed, dim=-1).numpy()


def target_ranks(queries: np.ndarray, item_vectors: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(M,)`` 0-based rank of each target among all ``I`` items by dot product (ties count
    against the target)."""
    q = torch.as_tensor(queries, dtype=torch.float32)
    v = torch.as_tensor(item_vectors, dtype=torch.float32)
    ranks = []
    for s in range(0, len(q), 2048):
        scores = q[s : s + 2048] @ v.T
        own = scores[torch.arange(scores.shape[0]), torch.as_tensor(target[s : s + 2048])]
        ranks.append((scores >= own[:, None]).sum(1) - 1)
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def recall_at_k(ranks: np.ndarray, cold: np.ndarray, ks: Sequence[int] = (10, 50)) -> dict:
    """``{"cold": {"recall@10": ..}, "warm": {..}, "all": {..}}`` plus case counts."""
    out: dict[str, dict[str, float]] = {}
    for name, mask in (("cold", cold), ("warm", ~cold), ("all", np.ones_like(cold))):
        sub = ranks[mask]
        out[name] = {
            f"recall@{k}": float((sub < k).mean()) if len(sub) else float("nan") for k in ks
        }
        out[name]["cases"] = int(len(sub))
    return out
