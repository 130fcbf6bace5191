"""Export a training checkpoint as a versioned model bundle (``recsys.bundle``)."""

from __future__ import annotations

from pathlib import Path

from recsys.bundle import _factory, export_bundle
from recsys.config import PipelineConfig
from recsys.training.checkpoint import BEST, CheckpointError, read_checkpoint


def export(
    cfg: PipelineConfig,
    checkpoint: str | Path,
    bundle_root: str | Path,
    *,
    version: str | None = None,
) -> Path:
    """Write ``bundle_root/<version>`` from ``checkpoint`` (a ``best.pt``/``checkpoint.pt``
    file, or a run directory, whose ``best.pt`` is used) and return its path.

    The bundle's ``bundle.json`` records the model kind and its JSON constructor arguments
    (embedding config, feature spec with salt and sizes, model config), the feature spec,
    the run's validation metrics and ``cfg``; ``weights.pt`` is the unsharded ``state_dict``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / BEST
    state = read_checkpoint(path)
    if "model" not in state or "progress" not in state:
        raise CheckpointError(f"{path}: not rank 0's checkpoint file (no model weights)")
    progress = state["progress"]
    kind, kwargs = progress["kind"], progress["kwargs"]
    if kind != cfg.model.kind:
        raise CheckpointError(
            f"{path}: holds a {kind!r} model but model.kind is {cfg.model.kind!r}"
        )
    model = _factory(kind)(**kwargs)
    model.load_state_dict(state["model"])
    model.eval()
    metrics = {
        "best_epoch": progress["best_epoch"],
        "metric_name": progress["metric_name"],
        "best_metric": progress["best_metric"],
        "epochs": progress["metrics"],
        "steps": progress["step"],
    }
    return export_bundle(
        bundle_root,
        model,
        kind,
        kwargs,
        version=version,
        features={
            **kwargs["spec"],
            "embeddings": {k: v for k, v in kwargs.items() if k.endswith("embedding")},
        },
        metrics=metrics,
        config=cfg.model_dump(mode="json"),
    )
