"""Which example columns are features, and what the models need to know about them.

``FeatureSpec.from_manifest`` checks the manifest's feature statistics before any model is sized
from them: a distinct count must be a whole number in ``[0, MAX_CARDINALITY]`` and no larger
than the feature's value count; a feature whose vocabulary is empty (distinct count 0 in the
stats split, e.g. ``s_user_concepts`` on MovieLens, which declares no user concepts) carries no
information and is dropped from the spec with a log line rather than trained.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The most distinct values a manifest may claim for one feature. Above it the statistic is
# corrupt, not data: a collisionless table of 2**31 rows of 16 float32 is already 128 GiB, and
# a count of 1e12 would ask for tens of terabytes. Pass ``max_cardinality`` to raise it.
MAX_CARDINALITY = 1 << 31


class SpecError(ValueError):
    """A manifest or spec dict that cannot describe the features; names the key at fault."""


@dataclass(frozen=True)
class FeatureSpec:
    """The feature columns of an examples directory, read from its ``manifest.json``.

    Attributes:
        sparse: ``list<string>`` columns (``s_*``), in the order every batch keys them.
        dense: ``float32`` columns (``d_*``), in the order of ``Batch.dense``'s columns.
        user: user-side sparse columns (``s_user``, ``s_history``, ``s_user_*``).
        item: item-side sparse columns (``s_item``, ``s_item_*``).
        cardinality: distinct values per sparse column (manifest ``stats[col].distinct``);
            sizes collisionless tables and budget fractions. Columns without stats are absent.
        dense_scale: ``(mean, std)`` per dense column (manifest ``dense_stats``); featurisation
            standardises those columns to ``(x - mean) / std`` (nulls -> 0, i.e. the mean).
            Raw dense features such as item age in days (up to hundreds) otherwise reach the
            DCN-v2 cross layers unscaled, whose products then overflow the logits. Columns
            without stats (or with std 0) are passed through unchanged.
    """

    sparse: tuple[str, ...]
    dense: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    item: tuple[str, ...] = ()
    cardinality: Mapping[str, int] = field(default_factory=dict)
    dense_scale: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sparse", "dense", "user", "item"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"FeatureSpec.{name}: expected a sequence of column names")
            object.__setattr__(self, name, tuple(value))
        for side in ("user", "item"):
            unknown = [c for c in getattr(self, side) if c not in self.sparse]
            if unknown:
                raise SpecError(f"FeatureSpec.{side}: {unknown} are not sparse features")
        card = {k: int(v) for k, v in self.cardinality.items()}
        negative = {k: v for k, v in card.items() if v < 0}
        if negative:
            raise SpecError(f"FeatureSpec.cardinality: negative counts {negative}")
        object.__setattr__(self, "cardinality", card)
        unknown = [c for c in self.dense_scale if c not in self.dense]
        if unknown:
            raise SpecError(f"FeatureSpec.dense_scale: {unknown} are not dense features")
        scale: dict[str, tuple[float, float]] = {}
        for c, ms in self.dense_scale.items():
            try:
                mean, std = (float(v) for v in ms)
            except (TypeError, ValueError):
                raise SpecError(
                    f"FeatureSpec.dense_scale[{c!r}]: expected (mean, std), got {ms!r}"
                ) from None
            scale[c] = (mean, std)
        object.__setattr__(self, "dense_scale", scale)

    def __hash__(self) -> int:
        return hash((self.sparse, self.dense, self.user, self.item))

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        *,
        origin: str = "manifest",
        max_cardinality: int = MAX_CARDINALITY,
    ) -> FeatureSpec:
        """Build from a parsed ``manifest.json`` (see docs/data-contract.md for its keys).

        ``origin`` (the manifest's path) starts every error message. Features whose stats say
        they have no values (distinct 0) are left out, with an INFO log line naming them;
        a negative, fractional, non-numeric or absurd (> ``max_cardinality``, or more than
        the feature's value count) distinct count, or non-finite / negative dense stats, is a
        ``SpecError`` naming the feature.
        """
        try:
            feats = manifest["features"]
            sparse = feats["sparse"]
        except (KeyError, TypeError):
            raise SpecError(f"{origin}: missing features.sparse") from None
        if isinstance(sparse, str) or not isinstance(sparse, list | tuple):
            raise SpecError(f"{origin}: features.sparse must be a list of column names")
        stats = feats.get("stats") or {}
        card: dict[str, int] = {}
        for col in sparse:
            s = stats.get(col)
            if isinstance(s, Mapping) and s.get("distinct") is not None:
                card[col] = _distinct_count(s, f"{origin}: features.stats.{col}", max_cardinality)
        empty = [c for c in sparse if card.get(c) == 0]
        if empty:
            log.info(
                "%s: dropping feature(s) %s: empty vocabulary (distinct 0 in the %s split)",
                origin,
                ", ".join(empty),
                feats.get("stats_split", "stats"),
            )
        kept = tuple(c for c in sparse if c not in empty)
        if not kept:
            raise SpecError(f"{origin}: every sparse feature has an empty vocabulary: {empty}")
        dense = tuple(feats.get("dense") or ())
        return cls(
            sparse=kept,
            dense=dense,
            user=tuple(c for c in feats.get("user") or () if c not in empty),
            item=tuple(c for c in feats.get("item") or () if c not in empty),
            cardinality={c: n for c, n in card.items() if n > 0},
            dense_scale=_dense_scale(dense, feats.get("dense_stats") or {}, origin),
        )

    @classmethod
    def from_manifest_file(
        cls, path: str | Path, *, max_cardinality: int = MAX_CARDINALITY
    ) -> FeatureSpec:
        """Read ``path`` (a ``manifest.json``) and build the spec; errors name the file."""
        path = Path(path)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest; run the prepare stage first") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SpecError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(manifest, Mapping):
            raise SpecError(f"{path}: top level must be an object")
        return cls.from_manifest(manifest, origin=str(path), max_cardinality=max_cardinality)

    def cardinality_of(self, column: str) -> int:
        """Distinct values of ``column``; a ``SpecError`` naming it when the manifest had none."""
        if column not in self.cardinality:
            raise SpecError(
                f"feature {column!r}: no distinct count in the manifest stats "
                "(needed to size collisionless / budget-fraction tables)"
            )
        return self.cardinality[column]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for bundle.json); ``from_dict`` inverts it."""
        return {
            "sparse": list(self.sparse),
            "dense": list(self.dense),
            "user": list(self.user),
            "item": list(self.item),
            "cardinality": dict(self.cardinality),
            "dense_scale": {c: list(ms) for c, ms in self.dense_scale.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        if "sparse" not in d:
            raise SpecError("FeatureSpec dict: missing key 'sparse'")
        return cls(
            sparse=tuple(d["sparse"]),
            dense=tuple(d.get("dense", ())),
            user=tuple(d.get("user", ())),
            item=tuple(d.get("item", ())),
            cardinality=dict(d.get("cardinality", {})),
            dense_scale={c: tuple(ms) for c, ms in (d.get("dense_scale") or {}).items()},
        )


def _whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (JSON may write 1e3), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _distinct_count(stats: Mapping[str, Any], where: str, max_cardinality: int) -> int:
    """The checked ``distinct`` of one sparse feature's stats; ``where`` names them."""
    raw = stats["distinct"]
    distinct = _whole_number(raw)
    if distinct is None or distinct < 0:
        raise SpecError(f"{where}.distinct is {raw!r}, expected a whole number >= 0")
    if distinct > max_cardinality:
        raise SpecError(
            f"{where}.distinct is {raw!r}, above the limit of {max_cardinality:,} distinct "
            "values per feature (a corrupt statistic; see recsys.features.spec.MAX_CARDINALITY)"
        )
    values = _whole_number(stats.get("values"))
    if stats.get("values") is not None and (values is None or values < 0):
        raise SpecError(f"{where}.values is {stats['values']!r}, expected a whole number >= 0")
    if values is not None and distinct > values:
        raise SpecError(f"{where}.distinct is {distinct}, more than its {values} values")
    return distinct


def _dense_scale(
    dense: tuple[str, ...], dstats: Mapping[str, Any], origin: str
) -> dict[str, tuple[float, float]]:
    """``(mean, std)`` per dense column with usable stats; std 0 or absent: left unscaled."""
    scale: dict[str, tuple[float, float]] = {}
    for col in dense:
        s = dstats.get(col)
        if not isinstance(s, Mapping) or s.get("mean") is None or not s.get("std"):
            continue
        try:
            mean, std = float(s["mean"]), float(s["std"])
        except (TypeError, ValueError):
            raise SpecError(
                f"{origin}: features.dense_stats.{col} has mean {s.get('mean')!r}, "
                f"std {s.get('std')!r}; expected numbers"
            ) from None
        if not (math.isfinite(mean) and math.isfinite(std)) or std < 0:
            raise SpecError(
                f"{origin}: features.dense_stats.{col} has mean {mean!r}, std {std!r}; "
                "expected a finite mean and a finite std >= 0"
            )
        scale[col] = (mean, std)
    return scale
