"""Offline evaluation: metrics accumulated batch by batch and merged over ranks."""

from recsys.evaluation.metrics import BinaryMetrics, RetrievalRecall, recall_at_k

__all__ = ["BinaryMetrics", "RetrievalRecall", "recall_at_k"]
