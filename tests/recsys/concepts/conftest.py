"""A tiny raw-logs + examples directory for concept-model tests, written with pyarrow.

Eight concepts, each with linked words; an item's title and text are made of its concepts'
words (plus filler), users declare some of their two interests, and a user clicks an item
mostly when one of its concepts is among the user's interests. One item (``i_plain``) has no
concept at all, and ``i_odd`` has non-ASCII text with a concept spelled in odd case/spacing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import PipelineConfig, parse_config

CONCEPT_WORDS = {
    "Jazz": ("saxophone", "swing", "bebop"),
    "Cooking": ("recipe", "kitchen", "simmer"),
    "Football": ("goal", "striker", "league"),
    "Travel": ("journey", "passport", "island"),
    "Science": ("experiment", "physics", "lab"),
    "History": ("empire", "ancient", "archive"),
    "Coffee": ("espresso", "barista", "roast"),
    "Yoga": ("asana", "breath", "mat"),
}
NAMES = list(CONCEPT_WORDS)


def write_concept_world(
    root: Path, n_items: int = 60, n_users: int = 30, n_rows: int = 3000, seed: int = 0
) -> Path:
    """Write ``root/raw/{items,users}.parquet`` and ``root/examples`` (train/valid/test +
    manifest); return the examples directory."""
    rng = np.random.default_rng(seed)
    raw, examples = root / "raw", root / "examples"
    raw.mkdir(parents=True)
    item_concepts = [
        list(rng.choice(len(NAMES), rng.integers(1, 3), replace=False)) for _ in range(n_items)
    ]
    titles, texts, concepts = [], [], []
    for cs in item_concepts:
        words = [str(rng.choice(CONCEPT_WORDS[NAMES[c]])) for c in cs for _ in range(3)]
        rng.shuffle(words)
        titles.append(" ".join(words[:2]).title())
        texts.append("the " + " ".join(words[2:]) + " show")
        concepts.append([NAMES[c] for c in cs])
    item_ids = [f"i{n}" for n in range(n_items)]
    item_ids += ["i_plain", "i_odd"]
    titles += ["Untitled", "Café Ñandú 東京"]
    texts += ["just some words nobody labelled", "Espresso  barista — ☕ crème brûlée"]
    concepts += [[], ["  COFFEE ", "unheard-of concept"]]
    pq.write_table(
        pa.table({"item_id": item_ids, "title": titles, "text": texts, "concepts": concepts}),
        raw / "items.parquet",
    )
    interests = [list(rng.choice(len(NAMES), 2, replace=False)) for _ in range(n_users)]
    declared = [[NAMES[c] for c in i if rng.random() < 0.6] for i in interests]
    user_ids = [f"u{n}" for n in range(n_users)]
    pq.write_table(pa.table({"user_id": user_ids, "concepts": declared}), raw / "users.parquet")
    users = rng.integers(0, n_users, n_rows)
    items = rng.integers(0, n_items, n_rows)
    match = np.array(
        [bool(set(item_concepts[i]) & set(interests[u])) for u, i in zip(users, items, strict=True)]
    )
    labels = (rng.random(n_rows) < np.where(match, 0.8, 0.1)).astype(np.int8)
    histories: dict[int, list[str]] = {}
    rows = {"train": [], "valid": [], "test": []}
    for n, (u, i, y) in enumerate(zip(users, items, labels, strict=True)):
        split = "train" if n < 0.8 * n_rows else "valid" if n < 0.9 * n_rows else "test"
        h = histories.setdefault(int(u), [])
        rows[split].append((f"u{u}", f"i{i}", int(y), list(h[-20:])))
        if y:
            h.append(f"i{i}")
    for split, part in rows.items():
        d = examples / f"split={split}"
        d.mkdir(parents=True)
        u, i, y, h = zip(*part, strict=True)
        table = pa.table(
            {
                "user_id": list(u),
                "item_id": list(i),
                "label": pa.array(y, pa.int8()),
                "history": pa.array(h, pa.list_(pa.string())),
            }
        )
        pq.write_table(table, d / "part-0.parquet")
    (examples / "manifest.json").write_text(json.dumps({"params": {"raw_dir": str(raw)}}))
    return examples


def concept_config(root: Path, **sesa: object) -> PipelineConfig:
    return parse_config(
        {
            "name": "concepts-test",
            "output_dir": str(root),
            "source": {"kind": "simulator"},
            "model": {"kind": "sesa"},
            "sesa": {
                "embed_dim": 16,
                "hidden": 16,
                "top_k": 3,
                "id_buckets": 1024,
                "lr": 0.01,
                **sesa,
            },  # fmt: skip
            "train": {
                "epochs": 15,
                "batch_size": 128,
                "patience": 4,
                "progress": False,
                "num_threads": 1,
            },  # fmt: skip
        }
    )


@pytest.fixture(scope="session")
def concept_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples directory of one tiny concept world (shared, read-only)."""
    return write_concept_world(tmp_path_factory.mktemp("concept_world"))


@pytest.fixture(scope="session")
def trained_sesa(concept_world: Path):  # noqa: ANN201 - a SesaRun
    from recsys.concepts.train import train_sesa

    return train_sesa(concept_config(concept_world.parent), concept_world)
