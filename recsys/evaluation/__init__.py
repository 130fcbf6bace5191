"""Offline evaluation.

- ``metrics``: streaming accumulators the trainer's validation uses (merged over ranks);
- ``offline``: AUC, GAUC, log loss, NE, calibration, user bootstrap, paired comparison;
- ``scoring``: bundle -> score table (rankers) or retrieval ranks (two-tower);
- ``summary``: slices, LT from logs, retrieval metrics, plot data;
- ``ab``: simulated A/B of a bundle's ranking policy against baselines, measured by LT;
- ``report``: ``report.html`` + PNG plots;
- ``evaluate``: the ``evaluate`` stage (``evaluate_bundle``, ``compare_bundles``).

Only ``metrics`` is imported here, so training does not load scikit-learn or matplotlib.
"""

from recsys.evaluation.metrics import BinaryMetrics, RetrievalRecall, recall_at_k

__all__ = ["BinaryMetrics", "RetrievalRecall", "recall_at_k"]
