"""Which example columns are features, and what the models need to know about them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
        object.__setattr__(self, "cardinality", {k: int(v) for k, v in self.cardinality.items()})
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
    def from_manifest(cls, manifest: Mapping[str, Any]) -> FeatureSpec:
        """Build from a parsed ``manifest.json`` (see docs/data-contract.md for its keys)."""
        try:
            feats = manifest["features"]
            sparse = feats["sparse"]
        except (KeyError, TypeError):
            raise SpecError("manifest: missing features.sparse") from None
        stats = feats.get("stats") or {}
        card: dict[str, int] = {}
        for col in sparse:
            s = stats.get(col)
            if isinstance(s, Mapping) and s.get("distinct") is not None:
                try:
                    card[col] = int(s["distinct"])
                except (TypeError, ValueError):
                    raise SpecError(
                        f"manifest: features.stats.{col}.distinct is {s['distinct']!r}, "
                        "expected an int"
                    ) from None
        dense = tuple(feats.get("dense") or ())
        dstats = feats.get("dense_stats") or {}
        scale: dict[str, tuple[float, float]] = {}
        for col in dense:
            s = dstats.get(col)
            if not isinstance(s, Mapping) or s.get("mean") is None or not s.get("std"):
                continue
            try:
                scale[col] = (float(s["mean"]), float(s["std"]))
            except (TypeError, ValueError):
                raise SpecError(
                    f"manifest: features.dense_stats.{col} has mean {s.get('mean')!r}, "
                    f"std {s.get('std')!r}; expected numbers"
                ) from None
        return cls(
            sparse=tuple(sparse),
            dense=dense,
            user=tuple(feats.get("user") or ()),
            item=tuple(feats.get("item") or ()),
            cardinality=card,
            dense_scale=scale,
        )

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
