"""Embedding tables for categorical features: unified (multiplexed), hashed, collisionless.

All kinds share one interface (``FeatureEmbedding``): a ``KeyedJaggedTensor`` of raw 64-bit
hashes in, a ``KeyedTensor`` with one key per feature out, one TorchRec
``EmbeddingBagCollection`` (``.ebc``) inside. ``build_embedding`` picks the kind from
``EmbeddingConfig`` and sizes it budget-first.

Budget: ``param_budget`` (absolute) or ``budget_fraction`` (of the collisionless parameter
count ``sum_f cardinality_f * width_f``, cardinalities from the manifest); neither = the
collisionless count. When ``features`` is a subset of ``spec.sparse`` (e.g. one tower), an
absolute ``param_budget`` is scaled by the subset's share of the collisionless count, so two
towers built from one config add up to the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recsys.config import EmbeddingConfig
from recsys.embeddings.base import EmbeddingError, FeatureEmbedding
from recsys.embeddings.tables import CollisionlessEmbedding, HashedEmbedding
from recsys.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from recsys.features.spec import FeatureSpec

__all__ = [
    "CollisionlessEmbedding",
    "EmbeddingError",
    "FeatureEmbedding",
    "HashedEmbedding",
    "UnifiedEmbedding",
    "UnifiedEmbeddingConfig",
    "build_embedding",
    "collisionless_parameters",
    "embedding_from_dict",
    "feature_widths",
]


def feature_widths(cfg: EmbeddingConfig, features: Sequence[str]) -> dict[str, int]:
    """Output width of each feature: ``probes[f] * dim`` (probes default to ``default_probes``).

    Every kind gets the same widths, so baselines and unified feed the model identically;
    only unified splits a width into ``probes`` separately hashed chunks.
    """
    return {f: cfg.probes.get(f, cfg.default_probes) * cfg.dim for f in features}


def collisionless_parameters(
    cfg: EmbeddingConfig, spec: FeatureSpec, features: Sequence[str]
) -> int:
    """``sum_f cardinality_f * width_f``: the size a collisionless model of these features has."""
    widths = feature_widths(cfg, features)
    return sum(spec.cardinality_of(f) * widths[f] for f in features)


def _budget(cfg: EmbeddingConfig, spec: FeatureSpec, features: Sequence[str]) -> int:
    full = collisionless_parameters(cfg, spec, features)
    if cfg.param_budget is not None:
        total = collisionless_parameters(cfg, spec, spec.sparse)
        return int(cfg.param_budget * full / total) if total else int(cfg.param_budget)
    if cfg.budget_fraction is not None:
        return int(cfg.budget_fraction * full)
    return full


def build_embedding(
    cfg: EmbeddingConfig,
    spec: FeatureSpec,
    features: Sequence[str] | None = None,
    vocab: Mapping[str, np.ndarray] | None = None,
    device: Any = None,
) -> FeatureEmbedding:
    """The embedding of ``features`` (default: all of ``spec.sparse``) that ``cfg`` describes.

    ``vocab`` (from ``recsys.features.vocabulary.build_vocabulary``) is required for
    ``kind="collisionless"`` and ignored otherwise.
    """
    feats = list(features) if features is not None else list(spec.sparse)
    unknown = [f for f in feats if f not in spec.sparse]
    if unknown:
        raise EmbeddingError(f"features {unknown} are not sparse features of the spec")
    bad = [f for f in cfg.probes if f not in spec.sparse]
    if bad:
        raise EmbeddingError(f"embedding.probes: {bad} are not sparse features of the spec")
    widths = feature_widths(cfg, feats)
    common = {"init_scale": cfg.init_scale, "pooling": cfg.pooling}
    if cfg.kind == "collisionless":
        if vocab is None:
            raise EmbeddingError(
                "embedding.kind 'collisionless' needs vocab= "
                "(recsys.features.vocabulary.build_vocabulary(examples_dir, features))"
            )
        missing = [f for f in feats if f not in vocab]
        if missing:
            raise EmbeddingError(f"vocab has no entry for feature(s) {missing}")
        return CollisionlessEmbedding({f: vocab[f] for f in feats}, widths, device=device, **common)
    budget = _budget(cfg, spec, feats)
    if cfg.kind == "hashing":
        card = {f: spec.cardinality_of(f) for f in feats}
        return HashedEmbedding.from_budget(
            budget, card, widths, salt=cfg.salt, device=device, **common
        )
    ucfg = UnifiedEmbeddingConfig.from_budget(
        budget,
        cfg.dim,
        cfg.num_tables,
        {f: cfg.probes.get(f, cfg.default_probes) for f in feats},
        salt=cfg.salt,
        **common,
    )
    return UnifiedEmbedding(ucfg, device=device)


def embedding_from_dict(d: Mapping[str, Any], device: Any = None) -> FeatureEmbedding:
    """Rebuild an embedding from its ``config_dict()`` (weights then come from a state_dict).

    Safe after a JSON round trip with ``sort_keys=True``: feature order is stored in lists.
    """
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "unified":
        return UnifiedEmbedding(UnifiedEmbeddingConfig.from_dict(d["config"]), device=device)
    # Feature order decides output columns; ``feature_names`` keeps it when the JSON was
    # written with sorted keys (bundle.json is).
    order = d.pop("feature_names", None)
    key = {"hashing": "buckets", "collisionless": "vocab"}.get(str(kind))
    if key is not None and order is not None:
        d[key] = {f: d[key][f] for f in order}
    if kind == "hashing":
        return HashedEmbedding(device=device, **d)
    if kind == "collisionless":
        return CollisionlessEmbedding(device=device, **d)
    raise EmbeddingError(f"embedding dict: unknown kind {kind!r}")
