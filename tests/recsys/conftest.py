"""Shared fixtures for recsys tests: a small, learnable examples directory built with pyarrow.

``write_examples(dir, n_rows, seed)`` writes what ``spark_jobs/build_training_data.py`` writes
(``split=train|valid|test/part-*.parquet`` + ``manifest.json``, see docs/data-contract.md) so model and
batcher tests can run without Spark. The label is learnable: a user clicks an item mostly when
the item's concepts meet the user's interests, plus per-user and per-item biases.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.contract import STR_LIST, TS_TYPE

COUNTRIES = ("us", "de", "fr", "br", "in", "jp")
SPARSE = (
    "s_user",
    "s_user_country",
    "s_user_concepts",
    "s_history",
    "s_item",
    "s_item_creator",
    "s_item_concepts",
)
DENSE = ("d_item_popularity", "d_hour", "d_user_activity")


def _stats(values: list[list[str]], top: int = 10) -> dict[str, Any]:
    counts = Counter(v for row in values for v in row)
    lengths = Counter(len(row) for row in values)
    return {
        "distinct": len(counts),
        "top": [[v, c] for v, c in counts.most_common(top)],
        "histogram": {"length": {str(k): v for k, v in sorted(lengths.items())}},
    }


def write_examples(
    out_dir: str | Path,
    n_rows: int = 2000,
    seed: int = 0,
    *,
    rows_per_group: int = 128,
    files_per_split: int = 2,
) -> dict[str, Any]:
    """Write a small examples directory into ``out_dir`` and return its manifest.

    Rows are time-ordered; the first 80 % are ``train``, then 10 % ``valid``, 10 % ``test``.
    Each split is ``files_per_split`` files of ``rows_per_group``-row row groups.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    n_users, n_items, n_concepts = max(20, n_rows // 40), max(30, n_rows // 25), 12
    n_creators = max(5, n_items // 6)
    user_interest = [rng.choice(n_concepts, 2, replace=False) for _ in range(n_users)]
    user_country = rng.integers(0, len(COUNTRIES), n_users)
    user_bias = rng.normal(0, 0.5, n_users)
    user_activity = rng.uniform(0, 1, n_users)
    item_concepts = [
        rng.choice(n_concepts, rng.integers(1, 4), replace=False) for _ in range(n_items)
    ]
    item_creator = rng.integers(0, n_creators, n_items)
    item_pop = rng.zipf(1.6, n_items).clip(max=500).astype(np.float64)
    item_bias = rng.normal(0, 0.5, n_items)

    users = rng.integers(0, n_users, n_rows)
    items = rng.choice(n_items, n_rows, p=item_pop / item_pop.sum())
    ts = np.sort(rng.integers(1_700_000_000_000, 1_700_000_000_000 + 30 * 86_400_000, n_rows))
    match = np.array(
        [
            len(set(user_interest[u]) & set(item_concepts[i])) > 0
            for u, i in zip(users, items, strict=True)
        ]
    )
    logit = -1.2 + 2.5 * match + user_bias[users] + item_bias[items]
    label = (rng.uniform(size=n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    lt7 = np.clip(1 + rng.binomial(6, user_activity[users]), 1, 7).astype(np.int8)
    lt14 = np.clip(lt7 + rng.binomial(7, user_activity[users]), 1, 14).astype(np.int8)

    history: list[list[str]] = []
    seen: dict[int, list[str]] = {}
    for u, i, y in zip(users, items, label, strict=True):
        h = seen.setdefault(int(u), [])
        history.append(list(h[-5:]))
        if y:
            h.append(f"i{i}")

    cols: dict[str, list[list[str]]] = {
        "s_user": [[f"u{u}"] for u in users],
        "s_user_country": [[COUNTRIES[user_country[u]]] for u in users],
        "s_user_concepts": [[f"c{c}" for c in user_interest[u]] for u in users],
        "s_history": history,
        "s_item": [[f"i{i}"] for i in items],
        "s_item_creator": [[f"cr{item_creator[i]}"] for i in items],
        "s_item_concepts": [[f"c{c}" for c in item_concepts[i]] for i in items],
    }
    hour = ((ts // 3_600_000) % 24).astype(np.float32)
    table = pa.table(
        {
            "label": pa.array(label, pa.int8()),
            "user_id": pa.array([f"u{u}" for u in users]),
            "item_id": pa.array([f"i{i}" for i in items]),
            "ts": pa.array(ts, TS_TYPE),
            "lt7": pa.array(lt7, pa.int8()),
            "lt14": pa.array(lt14, pa.int8()),
            "history": pa.array(history, STR_LIST),
            # examples store s_history's values once, as ``history`` (docs/data-contract.md)
            **{c: pa.array(v, STR_LIST) for c, v in cols.items() if c != "s_history"},
            "d_item_popularity": pa.array(np.log1p(item_pop[items]).astype(np.float32)),
            "d_hour": pa.array(hour / 23.0),
            "d_user_activity": pa.array(user_activity[users].astype(np.float32)),
        }
    )
    n_train, n_valid = int(n_rows * 0.8), int(n_rows * 0.1)
    bounds = {
        "train": (0, n_train),
        "valid": (n_train, n_train + n_valid),
        "test": (n_train + n_valid, n_rows),
    }
    for split, (lo, hi) in bounds.items():
        d = out / f"split={split}"
        d.mkdir(parents=True, exist_ok=True)
        part = table.slice(lo, hi - lo)
        per_file = -(-part.num_rows // files_per_split) if part.num_rows else 0
        for k in range(files_per_split):
            piece = part.slice(k * per_file, per_file)
            pq.write_table(piece, d / f"part-{k:05d}.parquet", row_group_size=rows_per_group)

    def iso(ms: int) -> str:
        return np.datetime64(int(ms), "ms").astype(str) + "Z"

    manifest = {
        "features": {
            "sparse": list(SPARSE),
            "dense": list(DENSE),
            "user": ["s_user", "s_user_country", "s_user_concepts", "s_history"],
            "item": ["s_item", "s_item_creator", "s_item_concepts"],
            "stats": {c: _stats(v[:n_train]) for c, v in cols.items()},
        },
        "counts": {s: hi - lo for s, (lo, hi) in bounds.items()} | {"quarantined": {}},
        "label_rule": {"kind": "click", "threshold": 0.0, "drop_between": None},
        "split": {"valid_from": iso(ts[n_train]), "test_from": iso(ts[n_train + n_valid])},
        "params": {"generator": "tests/recsys/conftest.py:write_examples", "seed": seed},
        "schema": {f.name: str(f.type) for f in table.schema},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2000-row examples directory (1600 train rows in 2 files x 7 row groups)."""
    d = tmp_path_factory.mktemp("examples")
    write_examples(d, n_rows=2000, seed=0)
    return d


@pytest.fixture(scope="session")
def examples_writer():  # noqa: ANN201
    """``write_examples`` itself, for tests that need their own size or seed."""
    return write_examples


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tests run tiny matrices: one intra-op thread avoids OpenMP contention on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
