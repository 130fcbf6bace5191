r"""The item concept vocabulary: normalised concept names with ids, display names and counts.

A concept name is normalised by ONE rule, the Spark prepare job's (``concept_counts`` in
``spark_jobs/build_training_data.py``: ``lower(trim(regexp_replace(raw, '(?U)\s+', ' ')))``):
every run of Unicode white space (``White_Space``: tabs, newlines, NBSP, ideographic space, ...)
becomes one space, spaces are stripped from both ends, letters are lower-cased
(``"  Genre:Sci-Fi "`` and ``"genre:sci-fi"`` are one concept). No compatibility folding (a
full-width ``"ＪＡＺＺ"`` is ``"ｊａｚｚ"``, not ``"jazz"``) and no case folding beyond
lower-casing (``"Straße"`` stays ``"straße"``): Spark SQL has neither, and a vocabulary that
the job and the library spell differently would give concepts two ids.
``tests/recsys/concepts/test_normalise_spark.py`` runs the job's ``concept_counts`` on odd
strings and checks that this module gives the same names, display names and counts.

Concepts seen on fewer than ``min_count`` items are left out. Ids are positions in the order
``(-count, name)``, so the most common concept is id 0 and equal inputs give equal ids.

The Spark prepare job records this vocabulary in the examples manifest (``"concepts"``:
``{"min_count", "items": [{"id", "name", "display", "count"}]}``); ``load_vocabulary`` prefers
that one and computes the same vocabulary from the raw items table when the manifest has none.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

# Unicode White_Space, what Java's ``(?U)\s`` matches (Python's ``\s`` also matches the
# separators U+001C..U+001F, which are not white space to Java).
_WHITE_SPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def trim_spaces(text: str) -> str:
    """``text`` without the ASCII spaces at both ends (Spark SQL's ``trim``)."""
    return text.strip(" ")


def normalise_concept(name: str | None) -> str:
    """The normalised form of a concept name (``""`` for ``None`` or blank names): white-space
    runs -> one space, stripped, lower-cased (the module docstring's rule)."""
    if not name:
        return ""
    return trim_spaces(_WHITE_SPACE.sub(" ", name)).lower()


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
        """Count the items carrying each normalised concept and each (concept, spelling with
        spaces trimmed), as the Spark job does, and keep the concepts on ``>= min_count``
        items (``recsys.features.vocabulary.concept_vocabulary`` picks ids and display names
        for both)."""
        from recsys.features.vocabulary import concept_vocabulary

        per_concept: Counter[str] = Counter()
        per_spelling: dict[str, Counter[str]] = {}
        for concepts in concept_lists:
            pairs = {(normalise_concept(raw), trim_spaces(raw)) for raw in concepts or () if raw}
            pairs = {(name, spelling) for name, spelling in pairs if name}
            per_concept.update({name for name, _ in pairs})
            for name, spelling in pairs:
                per_spelling.setdefault(name, Counter())[spelling] += 1
        return cls.from_dict(concept_vocabulary(per_concept, per_spelling, min_count))

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
