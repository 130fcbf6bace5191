"""The item concept vocabulary: normalised concept names with ids, display names and counts.

A concept name is normalised by NFKC, case folding, trimming and collapsing runs of whitespace
(``"  Genre:Sci-Fi "`` and ``"genre:sci-fi"`` are one concept). Concepts seen on fewer than
``min_count`` items are left out. Ids are positions in the order ``(-count, name)``, so the
most common concept is id 0 and equal inputs give equal ids.

The Spark prepare job records this vocabulary in the examples manifest (``"concepts"``:
``{"min_count", "items": [{"id", "name", "display", "count"}]}``); ``load_vocabulary`` prefers
that one and computes the same vocabulary from the raw items table when the manifest has none.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

_SPACES = re.compile(r"\s+")


def normalise_concept(name: str | None) -> str:
    """The normalised form of a concept name (``""`` for ``None`` or blank names)."""
    if not name:
        return ""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", name).casefold()).strip()


@dataclass(frozen=True)
class ConceptVocabulary:
    """Concept names (normalised), display names and item counts; id = position.

    Args:
        names: ``(C,)`` normalised names, unique.
        display: ``(C,)`` the most common original spelling of each concept.
        counts: ``(C,)`` number of items carrying the concept.
        min_count: the frequency cut-off the vocabulary was built with.
    """

    names: tuple[str, ...]
    display: tuple[str, ...]
    counts: tuple[int, ...]
    min_count: int = 1
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.display) == len(self.counts)):
            raise ValueError(
                f"ConceptVocabulary: names/display/counts lengths differ: "
                f"{len(self.names)}/{len(self.display)}/{len(self.counts)}"
            )
        self._index.update({name: i for i, name in enumerate(self.names)})
        if len(self._index) != len(self.names):
            raise ValueError("ConceptVocabulary: names are not unique")

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, name: str | None) -> int | None:
        """The id of a (raw or normalised) concept name, ``None`` when it is not in the vocabulary."""
        return self._index.get(normalise_concept(name))

    def ids_of(self, names: Iterable[str | None] | None) -> list[int]:
        """Ids of the known concepts among ``names``, in order, without duplicates."""
        out: list[int] = []
        for name in names or ():
            i = self.id_of(name)
            if i is not None and i not in out:
                out.append(i)
        return out

    @classmethod
    def from_concept_lists(
        cls, concept_lists: Iterable[Sequence[str | None] | None], min_count: int = 1
    ) -> ConceptVocabulary:
        """Count every item's concepts once (after normalising) and keep those on
        ``>= min_count`` items."""
        counts: Counter[str] = Counter()
        spellings: dict[str, Counter[str]] = {}
        for concepts in concept_lists:
            seen: set[str] = set()
            for raw in concepts or ():
                name = normalise_concept(raw)
                if not name or name in seen:
                    continue
                seen.add(name)
                counts[name] += 1
                spellings.setdefault(name, Counter())[raw.strip()] += 1
        kept = sorted(
            (n for n, c in counts.items() if c >= min_count), key=lambda n: (-counts[n], n)
        )
        display = tuple(min(spellings[n].items(), key=lambda kv: (-kv[1], kv[0]))[0] for n in kept)
        return cls(tuple(kept), display, tuple(counts[n] for n in kept), min_count)

    @classmethod
    def from_items(cls, items: pa.Table, min_count: int = 1) -> ConceptVocabulary:
        """The vocabulary of a raw ``items`` table's ``concepts`` column."""
        if "concepts" not in items.column_names:
            raise ValueError("items: no 'concepts' column to build the concept vocabulary from")
        return cls.from_concept_lists(items.column("concepts").to_pylist(), min_count)

    def to_dict(self) -> dict[str, Any]:
        """The manifest / bundle form: ``{"min_count", "items": [{"id", "name", "display",
        "count"}]}``."""
        return {
            "min_count": self.min_count,
            "items": [
                {"id": i, "name": n, "display": d, "count": c}
                for i, (n, d, c) in enumerate(
                    zip(self.names, self.display, self.counts, strict=True)
                )
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "concepts") -> ConceptVocabulary:
        """Read the form ``to_dict`` writes; errors name ``origin`` and the entry at fault."""
        try:
            rows = sorted(data["items"], key=lambda r: int(r["id"]))
            for pos, row in enumerate(rows):
                if int(row["id"]) != pos:
                    raise ValueError(f"items: ids must be 0..C-1, id {pos} is missing")
            return cls(
                tuple(normalise_concept(str(r["name"])) for r in rows),
                tuple(str(r.get("display") or r["name"]) for r in rows),
                tuple(int(r["count"]) for r in rows),
                int(data.get("min_count", 1)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{origin}: not a concept vocabulary: {type(e).__name__}: {e}"
            ) from None


def load_vocabulary(
    examples_dir: str | Path | None, items: pa.Table | None, min_count: int
) -> ConceptVocabulary:
    """The manifest's vocabulary (``examples_dir/manifest.json`` key ``concepts``) when it has
    one, else the one computed from ``items`` with ``min_count``."""
    if examples_dir is not None:
        manifest = Path(examples_dir) / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            if isinstance(data.get("concepts"), dict):
                return ConceptVocabulary.from_dict(data["concepts"], origin=f"{manifest}: concepts")
    if items is None:
        raise ValueError(
            f"{examples_dir}: the manifest has no concept vocabulary and no items table was given"
        )
    return ConceptVocabulary.from_items(items, min_count)
