"""Export a training checkpoint as a versioned model bundle (``recsys.bundle``)."""

from __future__ import annotations

from pathlib import Path

from recsys.bundle import _factory, export_bundle
from recsys.config import PipelineConfig
from recsys.training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_model_weights,
    read_state,
)


def export(
    cfg: PipelineConfig,
    checkpoint: str | Path,
    bundle_root: str | Path,
    *,
    version: str | None = None,
) -> Path:
    """Write ``bundle_root/<version>`` from ``checkpoint`` (a checkpoint directory such as
    ``best``, or a run directory, whose ``best`` is used) and return its path.

    The sharded checkpoint is read whole in this process into the unsharded model. The
    bundle's ``bundle.json`` records the model kind and its JSON constructor arguments
    (embedding config, feature spec with salt and sizes, model config), the feature spec,
    the run's validation metrics and ``cfg``; ``weights.pt`` is the full ``state_dict``.
    ``model.kind: sesa`` checkpoints (``recsys.concepts.checkpoint``) become ``sesa`` bundles.
    """
    if cfg.model.kind == "sesa":
        from recsys.concepts.checkpoint import export_sesa

        return export_sesa(cfg, checkpoint, bundle_root, version=version)
    path = checkpoint_path(checkpoint)
    state, _ = read_state(path)
    if state.kind != cfg.model.kind:
        raise CheckpointError(
            f"{path}: holds a {state.kind!r} model but model.kind is {cfg.model.kind!r}"
        )
    kwargs = state.model_kwargs
    model = _factory(state.kind)(**kwargs)
    model.load_state_dict(load_model_weights(path))
    model.eval()
    metrics = {
        "best_epoch": state.best_epoch,
        "metric_name": state.metric_name,
        "best_metric": state.best_metric,
        "epochs": state.metrics,
        "steps": state.step,
    }
    return export_bundle(
        bundle_root,
        model,
        state.kind,
        kwargs,
        version=version,
        features={
            **kwargs["spec"],
            "embeddings": {k: v for k, v in kwargs.items() if k.endswith("embedding")},
        },
        metrics=metrics,
        config=cfg.model_dump(mode="json"),
    )
