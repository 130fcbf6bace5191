"""Resume counts its position in examples: another batch size trains the rest of the epoch."""

from __future__ import annotations

import json
from pathlib import Path

from recsys.config import PipelineConfig, parse_config
from recsys.features.batcher import ExampleBatcher
from recsys.features.spec import FeatureSpec
from recsys.training import train
from recsys.training.checkpoint import read_state


def _cfg(**train_kw: object) -> PipelineConfig:
    return parse_config(
        {
            "name": "t",
            "source": {"kind": "simulator"},
            "embedding": {"dim": 8},
            "model": {"kind": "ranker", "mlp": [16], "cross_layers": 1},
            "train": {"epochs": 1, "progress": False, **train_kw},
        }
    )


def _rows(batcher: ExampleBatcher) -> list[tuple[str, str, float]]:
    """Every row the batcher yields, as (user, item, hour) in order."""
    out = []
    for batch in batcher:
        hours = batch.dense[:, 1].tolist()
        out += list(zip(batch.user_ids.tolist(), batch.item_ids.tolist(), hours, strict=True))
    return out


def test_skip_examples_continues_the_epochs_order_at_any_batch_size(examples_dir: Path) -> None:
    spec = FeatureSpec.from_manifest(json.loads((examples_dir / "manifest.json").read_text()))

    def batcher(batch_size: int) -> ExampleBatcher:
        b = ExampleBatcher(examples_dir, "train", spec, batch_size, shuffle=True, seed=3)
        b.set_epoch(2)
        return b

    whole = _rows(batcher(8))
    assert len(whole) == 1600
    later = batcher(64)
    later.skip_examples(480)  # 60 batches of 8 were trained before the interruption
    rest = _rows(later)
    assert whole[:480] + rest == whole
    assert _rows(batcher(8))[:480] == whole[:480]


def test_resuming_with_a_larger_batch_trains_each_remaining_example_of_the_epoch_once(
    examples_dir: Path, tmp_path: Path
) -> None:
    interrupted = train(_cfg(batch_size=8, max_steps=60), examples_dir, tmp_path)
    assert interrupted.steps == 60
    saved, _ = read_state(tmp_path / "checkpoint")
    assert saved.epoch_examples == 480
    resumed = train(_cfg(batch_size=64), examples_dir, tmp_path)
    # 1120 rows left: 17 full batches of 64 and one of 32; not 7/8 of the epoch skipped
    assert resumed.steps == 60 + 18
    assert resumed.metrics[0]["train_examples"] == 1600.0
    state, _ = read_state(tmp_path / "checkpoint")
    assert state.fingerprint["train.batch_size"] == 64  # later checkpoints are the new run's
