"""What the concept models read: the item and user catalogues and the labelled examples.

Items come from the raw ``items`` table (``item_id``, ``title``, ``text``, ``concepts``), users
from the raw ``users`` table (``user_id``, ``concepts`` = declared interests), examples from
the prepared examples directory (``split=<name>/*.parquet`` with ``user_id``, ``item_id``,
``label`` and ``history``, the user's earlier positive item ids, oldest first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsys.concepts.vocabulary import ConceptVocabulary
from recsys.features.hashing import hash_values

# Which items have their concept labels held back from the auxiliary concept loss: a fixed
# hash of the item id, so every model and seed holds back the same items.
HOLDOUT_SALT = 0x5E5A


def item_text(title: str | None, text: str | None) -> str:
    """The text a concept encoder reads for an item: title, then description."""
    return " ".join(part for part in (title, text) if part)


@dataclass
class ItemCatalog:
    """Every item of the raw ``items`` table: ``ids (I,)``, ``texts (I,)`` and the ids of its
    known concepts (``concepts[i]``: list of vocabulary ids, possibly empty)."""

    ids: np.ndarray
    texts: list[str]
    concepts: list[list[int]]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {str(item): i for i, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """``(N,)`` int64 catalogue positions of ``item_ids``, -1 for unknown ids."""
        get = self.index.get
        return np.fromiter((get(str(i), -1) for i in item_ids), np.int64, len(item_ids))

    @classmethod
    def from_table(cls, items: pa.Table, vocab: ConceptVocabulary) -> ItemCatalog:
        cols = set(items.column_names)
        if "item_id" not in cols:
            raise ValueError("items: no 'item_id' column")
        n = items.num_rows
        titles = items.column("title").to_pylist() if "title" in cols else [None] * n
        texts = items.column("text").to_pylist() if "text" in cols else [None] * n
        concepts = items.column("concepts").to_pylist() if "concepts" in cols else [[]] * n
        return cls(
            np.array(items.column("item_id").to_pylist(), dtype=object),
            [item_text(t, x) for t, x in zip(titles, texts, strict=True)],
            [vocab.ids_of(c) for c in concepts],
        )

    def holdout(self, fraction: float) -> np.ndarray:
        """``(I,)`` bool: items whose concept labels the auxiliary loss never sees."""
        if fraction <= 0:
            return np.zeros(len(self), bool)
        u = (hash_values(self.ids, salt=HOLDOUT_SALT) % np.uint64(10_000)).astype(np.float64)
        return u < fraction * 10_000

    def concept_targets(self, positions: np.ndarray, num_concepts: int) -> np.ndarray:
        """``(N, C)`` float32 multi-hot concept labels of the items at ``positions``."""
        out = np.zeros((len(positions), num_concepts), np.float32)
        for row, pos in enumerate(positions):
            out[row, self.concepts[pos]] = 1.0
        return out


@dataclass
class UserCatalog:
    """Every user of the raw ``users`` table: ``ids (U,)`` and declared concept ids."""

    ids: np.ndarray
    declared: list[list[int]]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {str(user): i for i, user in enumerate(self.ids)}

    def positions(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(str(u), -1) for u in user_ids), np.int64, len(user_ids))

    def declared_matrix(self, num_concepts: int) -> np.ndarray:
        """``(U, C)`` float32: each user's declared concepts, weights summing to 1 (0 if none)."""
        out = np.zeros((len(self.ids), num_concepts), np.float32)
        for row, ids in enumerate(self.declared):
            if ids:
                out[row, ids] = 1.0 / len(ids)
        return out

    @classmethod
    def from_table(cls, users: pa.Table | None, vocab: ConceptVocabulary) -> UserCatalog:
        if users is None or users.num_rows == 0:
            return cls(np.array([], dtype=object), [])
        if "user_id" not in users.column_names:
            raise ValueError("users: no 'user_id' column")
        declared = (
            users.column("concepts").to_pylist()
            if "concepts" in users.column_names
            else [[]] * users.num_rows
        )
        return cls(
            np.array(users.column("user_id").to_pylist(), dtype=object),
            [vocab.ids_of(c) for c in declared],
        )


@dataclass
class Examples:
    """Labelled rows of one split: ``user_ids (N,)``, ``item_ids (N,)``, ``labels (N,)``
    float32 in {0, 1}, ``histories``: N lists of earlier positive item ids, oldest first."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    labels: np.ndarray
    histories: list[list[str]]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Examples:
        return Examples(
            self.user_ids[rows],
            self.item_ids[rows],
            self.labels[rows],
            [self.histories[r] for r in rows],
        )


def read_examples(examples_dir: str | Path, split: str) -> Examples:
    """The ``split`` rows of an examples directory, in file order."""
    path = Path(examples_dir) / f"split={split}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such split directory")
    table = ds.dataset(path, format="parquet").to_table(
        columns=["user_id", "item_id", "label", "history"]
    )
    return Examples(
        np.array(table.column("user_id").to_pylist(), dtype=object),
        np.array(table.column("item_id").to_pylist(), dtype=object),
        table.column("label").to_numpy(zero_copy_only=False).astype(np.float32),
        [h or [] for h in table.column("history").to_pylist()],
    )


def history_positions(
    histories: Sequence[Sequence[str]], catalog: ItemCatalog, length: int
) -> np.ndarray:
    """``(N, length)`` int64 catalogue positions of each row's last ``length`` history items
    (most recent last), -1 for padding and unknown items."""
    out = np.full((len(histories), length), -1, np.int64)
    get = catalog.index.get
    for row, history in enumerate(histories):
        recent = history[-length:] if length else []
        for col, item in enumerate(recent):
            out[row, col] = get(str(item), -1)
    return out


def raw_dir_of(examples_dir: str | Path, default: str | Path | None = None) -> Path:
    """The raw logs directory of an examples directory: ``default`` when it holds
    ``items.parquet``, else the ``params.raw_dir`` its manifest records."""
    if default is not None and (Path(default) / "items.parquet").is_file():
        return Path(default)
    manifest = Path(examples_dir) / "manifest.json"
    try:
        raw = json.loads(manifest.read_text())["params"]["raw_dir"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise FileNotFoundError(
            f"{manifest}: cannot find the raw logs (params.raw_dir): {type(e).__name__}: {e}"
        ) from None
    return Path(raw)


def read_raw_tables(raw_dir: str | Path) -> tuple[pa.Table, pa.Table | None]:
    """``(items, users)`` of a raw logs directory (``users`` is ``None`` when absent)."""
    raw = Path(raw_dir)
    items_path = raw / "items.parquet"
    if not items_path.is_file():
        raise FileNotFoundError(f"{items_path}: no items table")
    columns = [
        c for c in ("item_id", "title", "text", "concepts") if c in pq.read_schema(items_path).names
    ]
    items = pq.read_table(items_path, columns=columns)
    users_path = raw / "users.parquet"
    users = pq.read_table(users_path, columns=None) if users_path.is_file() else None
    if users is not None:
        users = users.select([c for c in ("user_id", "concepts") if c in users.column_names])
    return items, users
