"""The rule that turns raw-table columns into sparse (``s_*``) feature columns.

One definition, read two ways:

- forward (Spark prepare job): :func:`entity_features` lists the features an ``items`` or
  ``users`` table yields from its schema, and :func:`context_features` those of an event; the
  job builds one Spark expression per :class:`SparseFeature` (``spark_jobs/build_training_data``);
- backward (batch embedding, the server): :func:`sparse_feature_columns` builds the ``s_*``
  columns a model needs from a pandas frame or Arrow table of raw rows, applying the same
  :class:`SparseFeature` with :func:`derive_values`.

The rule (docs/data-contract.md, "Sparse column naming rule")::

    s_item    = [item_id]            s_user  = [user_id]          s_history = history
    s_item_concepts = items.concepts s_user_concepts = users.concepts
    s_item_X  = [items.X]            s_user_X = [users.X]   for every other string column X
    s_hour    = ["0".."23"] of ts    s_weekday = ["Mon".."Sun"] of ts (UTC)

Examples store ``s_history``'s values once, as ``history`` (:func:`example_column` names the
column a reader takes a feature's values from).

String columns that are not features: the id, ``concepts``, ``created_ts``, the configured
text columns (``prepare.text_columns``) and names starting with ``_``. Values become strings;
a null value becomes an empty list; ids are stripped of surrounding spaces; ``concepts`` is a
list (null and empty entries dropped) or one ``"a|b|c"`` string (MovieLens genres).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "ColumnKind",
    "Derivation",
    "FeatureRuleError",
    "SparseFeature",
    "arrow_column_kinds",
    "check_feature_columns",
    "context_features",
    "derive_values",
    "entity_features",
    "example_column",
    "feature_source",
    "sparse_feature_columns",
]

ENTITY_KINDS = ("item", "user")
CONCEPTS = "concepts"
HISTORY = "history"
TS = "ts"
CONCEPT_SEPARATOR = "|"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# String columns of an entity table that are never categorical features.
NOT_CATEGORICAL = frozenset({CONCEPTS, "created_ts"})
STR_LIST = pa.list_(pa.string())


class FeatureRuleError(ValueError):
    """A feature that cannot be built from the given columns; names the feature and column."""


class Derivation(StrEnum):
    """How one raw value becomes a list of strings."""

    ID = "id"  # [str(v).strip(" ")]; null or "" -> []
    VALUE = "value"  # [str(v)]; null -> []
    CONCEPTS = "concepts"  # list -> its non-empty strings; "a|b" -> ["a", "b"]; null -> []
    LIST = "list"  # list -> its non-null strings as they are; null -> []
    HOUR = "hour"  # timestamp -> [UTC hour "0".."23"]; null -> []
    WEEKDAY = "weekday"  # timestamp -> [UTC "Mon".."Sun"]; null -> []


class ColumnKind(StrEnum):
    """What the forward rule needs to know about a raw column's type."""

    STRING = "string"
    LIST = "list"
    OTHER = "other"


@dataclass(frozen=True)
class SparseFeature:
    """Feature ``name`` (``list<string>``) is ``derivation`` applied to raw column ``column``."""

    name: str
    column: str
    derivation: Derivation


def entity_features(
    kind: str,
    column_kinds: Mapping[str, ColumnKind | str],
    text_columns: Iterable[str] = (),
) -> list[SparseFeature]:
    """The ``s_*`` features of ``kind`` (``"item"``/``"user"``) rows with ``column_kinds``.

    ``column_kinds``: the raw table's columns in schema order (``{}`` when there is no table:
    only the id, history and concepts features then). Order of the result: the id feature,
    ``s_history`` (users), ``s_<kind>_concepts``, then one feature per categorical string
    column in schema order. ``s_history`` and the id come from the event row in the prepare
    job; the others from the entity row.
    """
    _check_kind(kind)
    id_column = f"{kind}_id"
    features = [SparseFeature(f"s_{kind}", id_column, Derivation.ID)]
    if kind == "user":
        features.append(SparseFeature("s_history", HISTORY, Derivation.LIST))
    features.append(SparseFeature(f"s_{kind}_{CONCEPTS}", CONCEPTS, Derivation.CONCEPTS))
    skip = {id_column, *NOT_CATEGORICAL, *text_columns}
    for column, col_kind in column_kinds.items():
        if ColumnKind(col_kind) is ColumnKind.STRING and column not in skip:
            if not column.startswith("_"):
                features.append(SparseFeature(f"s_{kind}_{column}", column, Derivation.VALUE))
    return features


# Features that examples do not store as their own column: the column that holds their values
# as they are (``s_history`` would be a second copy of ``history``, a third of the output).
STORED_AS = {"s_history": HISTORY}


def example_column(name: str) -> str:
    """The examples column that holds feature ``name``'s values (``history`` for
    ``s_history``, the feature's own name for every other feature)."""
    return STORED_AS.get(name, name)


def context_features() -> list[SparseFeature]:
    """The event-context features: ``s_hour`` and ``s_weekday`` of the event's ``ts``."""
    return [
        SparseFeature("s_hour", TS, Derivation.HOUR),
        SparseFeature("s_weekday", TS, Derivation.WEEKDAY),
    ]


def feature_source(name: str) -> SparseFeature:
    """The raw column and derivation behind feature ``name`` (the rule read backwards).

    Raises ``FeatureRuleError`` for a name the rule cannot produce (e.g. Criteo's
    ``s_cat_1``: such features must be present in the frame as they are).
    """
    for feature in context_features():
        if feature.name == name:
            return feature
    if name == "s_history":
        return SparseFeature(name, HISTORY, Derivation.LIST)
    for kind in ENTITY_KINDS:
        prefix = f"s_{kind}"
        if name == prefix:
            return SparseFeature(name, f"{kind}_id", Derivation.ID)
        if name == f"{prefix}_{CONCEPTS}":
            return SparseFeature(name, CONCEPTS, Derivation.CONCEPTS)
        if name.startswith(prefix + "_") and len(name) > len(prefix) + 1:
            return SparseFeature(name, name[len(prefix) + 1 :], Derivation.VALUE)
    raise FeatureRuleError(
        f"feature {name!r}: not derivable from raw columns (the rule knows s_item*, s_user*, "
        "s_history, s_hour, s_weekday); the input must carry the column itself"
    )


def arrow_column_kinds(schema: pa.Schema) -> dict[str, ColumnKind]:
    """``ColumnKind`` of each field of an Arrow schema, in schema order."""
    kinds = {}
    for field in schema:
        t = field.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            kinds[field.name] = ColumnKind.STRING
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            kinds[field.name] = ColumnKind.LIST
        else:
            kinds[field.name] = ColumnKind.OTHER
    return kinds


def _check_kind(kind: str) -> None:
    if kind not in ENTITY_KINDS:
        raise FeatureRuleError(f"kind must be one of {ENTITY_KINDS}, got {kind!r}")


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return None


def _timestamp(value: Any, feature: SparseFeature) -> pd.Timestamp:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        ts = pd.Timestamp(int(value), unit="ms", tz="UTC")  # epoch ms, as in the examples
    else:
        try:
            ts = pd.Timestamp(value)
        except (TypeError, ValueError):
            raise FeatureRuleError(
                f"{feature.name}: column {feature.column!r} holds {value!r}, not a timestamp"
            ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def derive_values(feature: SparseFeature, value: Any) -> list[str]:
    """``feature``'s list of strings for one raw ``value`` of ``feature.column``."""
    if _is_null(value):
        return []
    how = feature.derivation
    if how is Derivation.ID:
        text = str(value).strip(" ")
        return [text] if text else []
    if how is Derivation.VALUE:
        return [str(value)]
    if how is Derivation.CONCEPTS:
        if isinstance(value, str):
            return [v for v in value.split(CONCEPT_SEPARATOR) if v]
        values = _as_list(value)
        return [] if values is None else [str(v) for v in values if not _is_null(v) and v != ""]
    if how is Derivation.LIST:
        values = _as_list(value)
        if values is None:
            raise FeatureRuleError(
                f"{feature.name}: column {feature.column!r} holds {value!r}, not a list"
            )
        return [str(v) for v in values if not _is_null(v)]
    ts = _timestamp(value, feature)
    return [str(ts.hour)] if how is Derivation.HOUR else [WEEKDAYS[ts.dayofweek]]


def _column_values(frame: pd.DataFrame | pa.Table, column: str) -> list[Any]:
    if isinstance(frame, pa.Table):
        return frame.column(column).to_pylist()
    return frame[column].tolist()


def _list_column(values: Sequence[Any], name: str) -> pa.Array:
    rows = []
    for value in values:
        if _is_null(value):
            rows.append([])
            continue
        items = _as_list(value)
        if items is None:
            raise FeatureRuleError(f"{name}: expected lists of strings, got {value!r}")
        rows.append([str(v) for v in items if not _is_null(v)])
    return pa.array(rows, STR_LIST)


def check_feature_columns(features: Sequence[str], columns: Sequence[str]) -> None:
    """Raise ``FeatureRuleError`` naming the first of ``features`` that input ``columns``
    provide neither as the feature column itself nor as its raw column."""
    for name in features:
        if name in columns:
            continue
        feature = feature_source(name)
        if feature.column not in columns:
            raise FeatureRuleError(
                f"feature {name!r} needs column {feature.column!r} (or {name!r} itself); "
                f"the input has {sorted(columns)}"
            )


def sparse_feature_columns(
    frame: pd.DataFrame | pa.Table, features: Sequence[str]
) -> dict[str, pa.Array]:
    """``list<string>`` arrays of ``features`` for the rows of ``frame``.

    A feature column already in ``frame`` (an examples row) is taken as it is (nulls become
    empty lists); otherwise it is derived from its raw column (:func:`feature_source`). A
    feature whose column is in neither form raises ``FeatureRuleError`` naming both.
    """
    names = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
    check_feature_columns(features, names)
    out: dict[str, pa.Array] = {}
    for name in features:
        if name in names:
            out[name] = _list_column(_column_values(frame, name), name)
            continue
        feature = feature_source(name)
        values = _column_values(frame, feature.column)
        out[name] = pa.array([derive_values(feature, v) for v in values], STR_LIST)
    return out
