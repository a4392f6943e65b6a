"""The papers' retrieval protocols and metrics (also as offline `evaluate` modules under `metrics/`)."""

from .activity_retrieval import average_precision_at_k, evaluate_activity_retrieval, mean_average_precision_at_k
from .fashion_retrieval import (
    FashionRetrievalResult,
    build_matching_pairs,
    build_retrieval_protocol,
    evaluate_fashion_retrieval,
    evaluate_pair_scorer,
    matching_metrics_from_scores,
    retrieval_metrics_from_scores,
)

__all__ = [
    "FashionRetrievalResult",
    "average_precision_at_k",
    "build_matching_pairs",
    "build_retrieval_protocol",
    "evaluate_activity_retrieval",
    "evaluate_fashion_retrieval",
    "evaluate_pair_scorer",
    "matching_metrics_from_scores",
    "mean_average_precision_at_k",
    "retrieval_metrics_from_scores",
]
