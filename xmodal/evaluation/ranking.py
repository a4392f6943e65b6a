# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Small, generic ranking helpers shared by the retrieval protocols (numpy only).

- `rank_of_ground_truth`: 1-based rank of each query's ground-truth candidate, ties broken
  pessimistically (a candidate scoring the same as the ground truth is ranked above it).
- `recall_at_k`: % of queries whose ground truth is ranked within the top K.
- `average_ranks` / `mann_whitney_auc`: ROC AUC through the Mann-Whitney U statistic.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


__all__ = ["rank_of_ground_truth", "recall_at_k", "average_ranks", "mann_whitney_auc"]


def _finite_scores(scores, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if np.isnan(array).any():
        where = np.argwhere(np.isnan(array))[0].tolist()
        raise ValueError(f"{name} contains NaN (first at index {where}); a scorer must return numbers")
    return array


def rank_of_ground_truth(scores, ground_truth=None, higher_is_better: bool = True) -> np.ndarray:
    """Rank (1 = best) of the ground-truth candidate in each row of `scores`.

    Ties are broken pessimistically: rank = 1 + number of *other* candidates whose score is at least
    as good as the ground truth's. A scorer that returns a constant therefore gets the worst rank,
    never a lucky one.

    Args:
        scores: (num_queries, num_candidates) array.
        ground_truth: (num_queries,) column of the ground truth in each row; default column 0.
        higher_is_better: False for distances (lower = closer).

    Returns:
        (num_queries,) int64 array of ranks in [1, num_candidates].
    """
    s = _finite_scores(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (num_queries, num_candidates), got shape {s.shape}")
    num_queries, num_candidates = s.shape
    if ground_truth is None:
        gt = np.zeros(num_queries, dtype=np.int64)
    else:
        gt = np.asarray(ground_truth, dtype=np.int64).reshape(-1)
        if gt.shape[0] != num_queries:
            raise ValueError(f"ground_truth has {gt.shape[0]} entries for {num_queries} score rows")
        if num_queries and (gt.min() < 0 or gt.max() >= num_candidates):
            raise ValueError(f"ground_truth positions must be in [0, {num_candidates}), got {gt.min()}..{gt.max()}")
    if not higher_is_better:
        s = -s
    gt_scores = s[np.arange(num_queries), gt][:, None]
    at_least_as_good = (s >= gt_scores).sum(axis=1)  # includes the ground truth itself
    return at_least_as_good.astype(np.int64)


def recall_at_k(ranks, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Percentage of queries whose ground truth has rank <= k, for each k."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise ValueError("recall_at_k needs at least one query")
    return {int(k): float(100.0 * np.mean(r <= k)) for k in ks}


def average_ranks(values) -> np.ndarray:
    """1-based ranks of `values` in ascending order, tied values sharing their average rank
    (what `scipy.stats.rankdata(method="average")` returns)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    # Group g occupies sorted positions [start_g + 1, start_g + count_g]; its average rank is the midpoint.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts + 1) / 2.0)[inverse]


def mann_whitney_auc(positive_scores, negative_scores) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie),
    computed from the Mann-Whitney U statistic: (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg),
    where R_pos is the sum of the positives' average ranks among all scores."""
    pos = _finite_scores(positive_scores, "positive_scores").reshape(-1)
    neg = _finite_scores(negative_scores, "negative_scores").reshape(-1)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"AUC needs positives and negatives, got {pos.size} and {neg.size}")
    ranks = average_ranks(np.concatenate([pos, neg]))
    rank_sum = ranks[: pos.size].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))
