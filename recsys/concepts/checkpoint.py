"""SESA checkpoints and bundles: the trained model, then a versioned bundle with its space.

A SESA checkpoint is ``<out_dir>/best/``: ``sesa.pt`` (the ``state_dict``, loaded with
``weights_only=True``) and ``sesa.json`` (constructor arguments, vocabulary, where the raw logs
and examples were, the run's metrics). Both are written under temporary names and renamed.

A ``sesa`` bundle (``recsys.bundle``) holds the model weights plus the frozen space
(``recsys.concepts.space.space_files``: vocabulary, scalars, the sparse concept vectors of every
item, users' declared concepts), each checksum-verified by ``load_bundle``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from recsys.atomic import atomic_file, write_json
from recsys.bundle import (
    Bundle,
    BundleError,
    export_bundle,
    load_bundle,
    newest_version,
    version_dirs,
)
from recsys.concepts.space import ConceptSpace, read_space_files, space_files
from recsys.concepts.vocabulary import ConceptVocabulary
from recsys.config import PipelineConfig
from recsys.models.sesa import SesaModel, sesa_from_kwargs

BEST = "best"
WEIGHTS, META = "sesa.pt", "sesa.json"
KIND = "sesa"


def save_sesa_checkpoint(
    out_dir: Path, model: SesaModel, cfg: PipelineConfig, data: Any, run: Any
) -> Path:
    """Write ``out_dir/best/{sesa.pt, sesa.json}`` (each through a temporary name)."""
    best = out_dir / BEST
    best.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with atomic_file(best / WEIGHTS) as fh:
        fh.write(buffer.getvalue())
    write_json(
        best / META,
        {
            "kind": KIND,
            "model_kwargs": {**model.kwargs(), "vocabulary": data.vocab.to_dict()},
            "raw_dir": str(data.raw_dir),
            "examples_dir": str(data.examples_dir),
            "history_length": cfg.sesa.history_length,
            "variant": cfg.sesa.variant,
            "best_epoch": run.best_epoch,
            "best_metric": run.best_auc,
            "metric_name": "valid_auc",
            "epochs": run.metrics,
        },
    )
    return best


def load_sesa_checkpoint(checkpoint: str | Path) -> tuple[SesaModel, dict[str, Any]]:
    """``(model in eval mode, sesa.json)`` of a checkpoint directory (or a run directory,
    whose ``best`` is used); errors name the file."""
    path = Path(checkpoint)
    if not (path / META).is_file() and (path / BEST / META).is_file():
        path = path / BEST
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
        kwargs = dict(meta["model_kwargs"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: not a SESA checkpoint: {type(e).__name__}: {e}") from None
    model = sesa_from_kwargs(**kwargs)
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


def export_sesa(
    cfg: PipelineConfig,
    checkpoint: str | Path,
    bundle_root: str | Path,
    *,
    version: str | None = None,
) -> Path:
    """Write a ``sesa`` bundle version from a SESA checkpoint; returns its directory."""
    from recsys.concepts.train import load_concept_data, space_from_model

    model, meta = load_sesa_checkpoint(checkpoint)
    data = load_concept_data(cfg, meta["examples_dir"])
    if len(data.vocab) != model.num_concepts:
        raise ValueError(
            f"{checkpoint}: model has {model.num_concepts} concepts, the data's vocabulary "
            f"{len(data.vocab)}"
        )
    vocab_stored = ConceptVocabulary.from_dict(meta["model_kwargs"]["vocabulary"])
    if vocab_stored.names != data.vocab.names:
        raise ValueError(f"{checkpoint}: the concept vocabulary differs from the training run's")
    space = space_from_model(model, data, meta.get("variant", "sesa"), int(meta["history_length"]))
    return export_space_bundle(space, model, bundle_root, version=version, metrics=meta, config=cfg)


def export_space_bundle(
    space: ConceptSpace,
    model: SesaModel,
    bundle_root: str | Path,
    *,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> Path:
    """Export ``model`` with the frozen ``space`` as a ``sesa`` bundle version."""
    kwargs = {**model.kwargs(), "vocabulary": space.vocabulary.to_dict()}
    return export_bundle(
        bundle_root,
        model,
        KIND,
        kwargs,
        version=version,
        features={"concepts": len(space.vocabulary), "items": len(space.item_ids)},
        metrics={k: v for k, v in (metrics or {}).items() if k != "model_kwargs"},
        config=config.model_dump(mode="json") if config is not None else None,
        extra_files=space_files(space),
    )


def load_space(bundle: str | Path | Bundle) -> ConceptSpace:
    """The ``ConceptSpace`` of a verified ``sesa`` bundle (a version directory, a bundle root
    whose newest version is used, or a loaded ``Bundle``). Items the bundle does not hold are
    encoded from their text by the bundle's model."""
    if not isinstance(bundle, Bundle):
        path = Path(bundle)
        if not (path / "bundle.json").is_file() and version_dirs(path):
            path = newest_version(path)
        bundle = load_bundle(path)
    kind = bundle.meta["model"]["kind"]
    if kind != KIND:
        raise BundleError(f"{bundle.path}: a {kind!r} bundle, not a {KIND!r} one")
    model: SesaModel = bundle.model  # type: ignore[assignment]

    def encoder(texts: list[str]):  # noqa: ANN202 - (vectors, bias)
        v, b, _ = model.encode_texts(list(texts))
        return v, b

    return read_space_files(bundle.path, encoder=encoder)
