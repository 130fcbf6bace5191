"""Build the model a config names, from the feature spec an examples directory records."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from recsys.config import PipelineConfig
from recsys.features.spec import FeatureSpec
from recsys.features.vocabulary import build_vocabulary
from recsys.models.ranker import Ranker
from recsys.models.two_tower import TwoTower


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_spec(examples_dir: str | Path) -> FeatureSpec:
    """The feature spec recorded in ``examples_dir/manifest.json`` (errors name the file)."""
    return FeatureSpec.from_manifest_file(Path(examples_dir) / "manifest.json")


def build_model(
    cfg: PipelineConfig, spec: FeatureSpec, examples_dir: str | Path | None = None
) -> Ranker | TwoTower:
    """The model ``cfg.model.kind`` names, built from config (uses the torch RNG).

    Collisionless tables need the training split's vocabulary, read from ``examples_dir``.
    """
    if cfg.model.kind == "sesa":
        raise ValueError(
            "model.kind 'sesa' is trained by recsys.concepts.train.train_sesa (`recsys train` "
            "dispatches it there), not by the TorchRec trainer"
        )
    vocab = None
    if cfg.embedding.kind == "collisionless":
        if examples_dir is None:
            raise ValueError("embedding.kind 'collisionless' needs the examples directory")
        vocab = build_vocabulary(examples_dir, list(spec.sparse))
    if cfg.model.kind == "ranker":
        return Ranker.from_config(cfg.model, cfg.embedding, spec, vocab=vocab)
    return TwoTower.from_config(cfg.model, cfg.embedding, spec, vocab=vocab)
