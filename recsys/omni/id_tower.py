"""An ID-only two-tower (``recsys.models.two_tower.TwoTower``) trained in process on next-item
cases: the collaborative baseline of the cold-start benchmark and the source of the ID
embeddings that stage 2 distils (``id2item``).

User tower: ``s_user`` (user id) and ``s_history`` (the ids of the last N positive items);
item tower: ``s_item`` (item id) only, so an item with no training positive has nothing but
an untrained hash row. Trained with the model's own in-batch loss (log-Q corrected).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from recsys.config import EmbeddingConfig, ModelConfig
from recsys.features.batcher import table_to_batch
from recsys.features.spec import FeatureSpec
from recsys.models.two_tower import TwoTower
from recsys.omni.next_item import NextItemCases

USER, HISTORY, ITEM = "s_user", "s_history", "s_item"


def id_spec(num_users: int, num_items: int) -> FeatureSpec:
    return FeatureSpec(
        sparse=(USER, HISTORY, ITEM),
        user=(USER, HISTORY),
        item=(ITEM,),
        cardinality={USER: num_users, HISTORY: num_items, ITEM: num_items},
    )


def _table(
    user_ids: np.ndarray, history: np.ndarray, item_ids: np.ndarray, target: np.ndarray
) -> pa.Table:
    hist = [[str(item_ids[r]) for r in row if r >= 0] for row in history]
    return pa.table(
        {
            USER: pa.array([[str(u)] for u in user_ids], pa.list_(pa.string())),
            HISTORY: pa.array(hist, pa.list_(pa.string())),
            ITEM: pa.array([[str(item_ids[t])] for t in target], pa.list_(pa.string())),
            "label": pa.array(np.ones(len(target), dtype=np.int8)),
        }
    )


def train_id_tower(
    cases: NextItemCases,
    item_ids: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 3e-3,
    tower_dim: int = 32,
    progress: bool = False,
) -> TwoTower:
    """Train an ID-only ``TwoTower`` on ``cases`` (every case is a positive); eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = id_spec(len(set(cases.user_ids.tolist())), len(item_ids))
    model = TwoTower.from_config(
        ModelConfig(kind="two_tower", mlp=[64], tower_dim=tower_dim),
        EmbeddingConfig(dim=16, default_probes=2),
        spec,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batch = table_to_batch(_table(cases.user_ids, cases.history, item_ids, cases.target), spec)
    n = len(cases)
    model.train()
    steps = epochs * max(1, -(-n // batch_size))
    with tqdm(total=steps, desc="id two-tower", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = rng.permutation(n)
            for s in range(0, n, batch_size):
                rows = order[s : s + batch_size]
                sparse = _take(batch.sparse, rows)
                positives = torch.ones(len(rows), dtype=torch.bool)
                loss = model.in_batch_loss(model(sparse, positives), positives)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
    return model.eval()


def _take(kjt, rows: np.ndarray):  # noqa: ANN001, ANN202 - KeyedJaggedTensor in and out
    """The rows ``rows`` of a KJT (every key), as a new KJT."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    idx = torch.as_tensor(rows, dtype=torch.int64)
    values, lengths = [], []
    for key in kjt.keys():
        jt = kjt[key]
        offsets, vals = jt.offsets(), jt.values()
        lens = jt.lengths()[idx]
        starts = offsets[:-1][idx]
        pos = torch.repeat_interleave(starts, lens) + (
            torch.arange(int(lens.sum()))
            - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        )
        values.append(vals[pos])
        lengths.append(lens)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32)
    )


@torch.no_grad()
def id_item_vectors(model: TwoTower, item_ids: np.ndarray) -> np.ndarray:
    """``(I, T)`` unit item-tower vectors of the catalogue."""
    table = pa.table({ITEM: pa.array([[str(i)] for i in item_ids], pa.list_(pa.string()))})
    return model.item_tower(table_to_batch(table, model.side_spec("item")).sparse).numpy()


@torch.no_grad()
def id_user_queries(model: TwoTower, cases: NextItemCases, item_ids: np.ndarray) -> np.ndarray:
    """``(M, T)`` unit user-tower vectors of the cases (user id + history ids)."""
    table = _table(cases.user_ids, cases.history, item_ids, cases.target)
    batch = table_to_batch(table, model.spec)
    return model.user_tower(batch.sparse).numpy()
