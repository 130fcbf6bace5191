"""The ranker with and without match features, as the SESA and omni benchmarks compare it."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sklearn.metrics import roc_auc_score

from recsys.config import PipelineConfig
from recsys.evaluation.scoring import score_model_split
from recsys.models.match import MatchFeature
from recsys.training import train
from recsys.training.checkpoint import BEST, load_model_weights
from recsys.training.model_factory import build_model, read_spec


def ranker_test_auc(
    cfg: PipelineConfig, exdir: Path, match: Sequence[MatchFeature]
) -> dict[str, float]:
    """Test AUC of the best-validation ranker trained on ``exdir`` with ``match`` features
    (none: the plain ranker), scored by the library's offline scoring."""
    model_cfg = cfg.model.model_copy(update={"num_match": len(match)})
    cfg = cfg.model_copy(update={"model": model_cfg})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="match-ranker-") as tmp:
        result = train(cfg, exdir, tmp, resume=False, match_features=match)
        spec = read_spec(exdir)
        model = build_model(cfg, spec, exdir)
        model.load_state_dict(load_model_weights(Path(tmp) / BEST))
    model.eval()
    scores = score_model_split(model, spec, exdir, "test", progress=False, match_features=match)
    return {
        "auc": float(roc_auc_score(scores["label"], scores["score"])),
        "valid_auc": float(result.best_metric or float("nan")),
        "seconds": round(time.perf_counter() - t0, 1),
    }
