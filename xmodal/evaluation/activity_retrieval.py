"""MAP-IVR evaluation: rank the test videos for each image query and report mAP@K (APIVR's protocol).

Every test image is a query; every test video is in the gallery; a video is relevant to a query when it has
the query's activity class. Rankings come from `MapIvrModel.score` under S_A, S_V and S_all (distances,
lower = closer), each ranked separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


__all__ = ["mean_average_precision_at_k", "average_precision_at_k", "evaluate_activity_retrieval"]

DEFAULT_KS = (10, 20, 50, 100)
_NORMALIZATIONS = ("hits", "relevant")
# Queries ranked at once: bounds the (queries x gallery) argsort to ~16M entries.
_SORT_BUDGET = 1 << 24


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return tuple(int(k) for k in ks)


def _relevance(order: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """(Q, M) bool: is the video at each rank of the class of its query? Index -1 (no video) is never relevant."""
    valid = order >= 0
    labels = gallery_labels[np.where(valid, order, 0)]
    return (labels == query_labels[:, None]) & valid


def average_precision_at_k(
    relevance: np.ndarray, ks: Sequence[int] = DEFAULT_KS, num_relevant: np.ndarray | None = None, normalization: str = "hits"
) -> dict[int, np.ndarray]:
    """Per-query AP@K from a ranked relevance matrix.

    Args:
        relevance: `(Q, M)` bool, `relevance[q, r - 1]` = the video at rank r is relevant to query q.
        ks: the K values. Ranks beyond M count as not relevant.
        num_relevant: `(Q,)` relevant videos in the whole gallery (needed for `normalization="relevant"`).
        normalization: `"hits"` or `"relevant"` (see `mean_average_precision_at_k`).

    Returns:
        `{K: (Q,) float64 AP@K}`.
    """
    ks = _check_ks(ks)
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    relevance = np.asarray(relevance, dtype=bool)
    if relevance.ndim != 2:
        raise ValueError(f"relevance must be (Q, M), got shape {relevance.shape}")
    hits = np.cumsum(relevance, axis=1)  # relevant videos within the top r
    precision_at_hits = np.where(relevance, hits / np.arange(1, relevance.shape[1] + 1), 0.0)
    summed = np.cumsum(precision_at_hits, axis=1)
    out = {}
    for k in ks:
        column = min(k, relevance.shape[1]) - 1
        if column < 0:
            out[k] = np.zeros(relevance.shape[0])
            continue
        if normalization == "hits":
            denominator = hits[:, column].astype(np.float64)
        else:
            if num_relevant is None:
                raise ValueError("normalization='relevant' needs num_relevant")
            denominator = np.minimum(k, np.asarray(num_relevant)).astype(np.float64)
        out[k] = np.divide(summed[:, column], denominator, out=np.zeros(relevance.shape[0]), where=denominator > 0)
    return out


def mean_average_precision_at_k(
    distances: Any = None,
    query_labels: Any = None,
    gallery_labels: Any = None,
    ks: Sequence[int] = DEFAULT_KS,
    rankings: Any = None,
    normalization: str = "hits",
    return_per_query: bool = False,
) -> dict[str, Any]:
    """mAP@K of image-to-video retrieval (APIVR's protocol).

    For each query the gallery is ranked by ascending distance (ties broken by gallery index, lower first:
    a stable sort), or taken from `rankings`. A video is relevant when its label equals the query's. Then

        AP@K = (1 / H_K) * sum over ranks r <= K at which a relevant video appears of precision@r,
        precision@r = (relevant videos in the top r) / r,

    where H_K is the number of relevant videos in the top K (`normalization="hits"`, APIVR's definition, the
    default). AP@K is 0 when no relevant video is in the top K. mAP@K is the mean of AP@K over all queries.
    The alternative `normalization="relevant"` divides by min(K, R) instead, R = relevant videos in the whole
    gallery, which also penalises relevant videos missing from the top K (it never exceeds the "hits" value).
    A K larger than the gallery uses the whole gallery.

    Args:
        distances: `(Q, N)` array or tensor, lower = closer (e.g. `MapIvrScores.s_all`).
        query_labels: `(Q,)` class of each query.
        gallery_labels: `(N,)` class of each gallery video.
        ks: the K values (default 10, 20, 50, 100).
        rankings: instead of `distances`, `(Q, M)` gallery indices best first (M <= N, e.g. the top-k of
            `MapIvrModel.rank`); ranks beyond M count as not relevant; -1 marks an empty slot.
        normalization: `"hits"` (default) or `"relevant"`, see above.
        return_per_query: also return `per_query` = `{K: (Q,) AP@K}`.

    Returns:
        `{"mAP@10": float, ..., "num_queries": Q, "num_gallery": N}` (+ `"per_query"`), values in [0, 1].
    """
    ks = _check_ks(ks)
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    if (distances is None) == (rankings is None):
        raise ValueError("give exactly one of distances or rankings")
    if query_labels is None or gallery_labels is None:
        raise ValueError("query_labels and gallery_labels are required")
    query_labels = _as_numpy(query_labels).reshape(-1)
    gallery_labels = _as_numpy(gallery_labels).reshape(-1)
    num_queries, num_gallery = len(query_labels), len(gallery_labels)
    if num_queries == 0 or num_gallery == 0:
        raise ValueError(f"need at least one query and one gallery video, got {num_queries} and {num_gallery}")
    depth = min(max(ks), num_gallery)

    if distances is not None:
        distances = _as_numpy(distances)
        if distances.shape != (num_queries, num_gallery):
            raise ValueError(f"distances must have shape (num_queries, num_gallery) = ({num_queries}, {num_gallery}), got {distances.shape}")
        if np.isnan(distances).any():
            row, col = np.argwhere(np.isnan(distances))[0]
            raise ValueError(f"distances contain NaN (first at query {row}, video {col})")
        rows_per_block = max(1, _SORT_BUDGET // num_gallery)
        order = np.concatenate(
            [
                np.argsort(distances[start : start + rows_per_block], axis=1, kind="stable")[:, :depth]
                for start in range(0, num_queries, rows_per_block)
            ]
        )
    else:
        order = _as_numpy(rankings)
        if order.ndim != 2 or order.shape[0] != num_queries or not np.issubdtype(order.dtype, np.integer):
            raise ValueError(f"rankings must be an integer array of shape ({num_queries}, M), got {order.dtype} {order.shape}")
        if order.size and (order.min() < -1 or order.max() >= num_gallery):
            raise ValueError(f"rankings must hold gallery indices in [0, {num_gallery}) (or -1 for an empty slot)")
        for q, row in enumerate(order):
            seen = row[row >= 0]
            if len(np.unique(seen)) != len(seen):
                raise ValueError(f"rankings row {q} lists a gallery video twice")
        order = order[:, :depth]

    relevance = _relevance(order, query_labels, gallery_labels)
    num_relevant = (gallery_labels[None, :] == query_labels[:, None]).sum(1) if normalization == "relevant" else None
    per_query = average_precision_at_k(relevance, ks, num_relevant, normalization)
    result: dict[str, Any] = {f"mAP@{k}": float(per_query[k].mean()) for k in ks}
    result["num_queries"], result["num_gallery"] = num_queries, num_gallery
    if return_per_query:
        result["per_query"] = per_query
    return result


def evaluate_activity_retrieval(
    model,
    test_dataset,
    num_samples: int | None = None,
    lambda_v: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    feature_extractor=None,
    query_column: str | None = "is_query",
    normalization: str = "hits",
    precision: str = "auto",
) -> dict[str, float]:
    """Scores every test query image against the whole test video gallery and reports mAP@K.

    `model.score` (a `MapIvrModel`) is called once for the whole gallery (it chunks internally) with a CPU
    generator seeded by `seed`, so the h hallucinated videos per query, and therefore S_V and S_all, are
    reproducible.

    Args:
        model: a `MapIvrModel`.
        test_dataset: activity rows (`image_features`, `video_features`, `label`, optional `proposal_scores`,
            `proposal_mask`). Every row's video is in the gallery; queries are the rows whose `query_column` is
            true (all rows when the column is absent or `query_column=None`).
        num_samples: h, the hallucinated videos per query (default: the model config's).
        lambda_v: weight of S_V in S_all (default: the model config's).
        seed: seed of the motion codes z.
        batch_size: gallery chunk size passed to `model.score` (default: the config's `score_chunk_size`).
        ks: the K of mAP@K.
        feature_extractor: a fitted `MapIvrFeatureExtractor` applied to the features first (use the one the
            model was trained with); None uses the features as stored.
        normalization: AP@K normalisation, see `mean_average_precision_at_k`.
        precision: "auto" (the encoders under bf16 autocast where the device computes bf16 natively, float32
            elsewhere), "bf16" or "float32" (`xmodal.precision`); the distances are float32 either way.

    Returns:
        flat dict: `"s_a/mAP@10"`, ..., `"s_v/mAP@K"`, `"s_all/mAP@K"` (in [0, 1]), `"num_queries"`,
        `"num_gallery"`, `"num_samples"`, `"lambda_v"`.
    """
    import torch

    from xmodal.data.activity_sources import activity_arrays

    arrays = activity_arrays(test_dataset)
    labels = arrays["labels"]
    if query_column is not None and query_column in test_dataset.column_names:
        is_query = np.asarray(test_dataset.select_columns([query_column]).with_format("numpy")[:][query_column], dtype=bool)
    else:
        is_query = np.ones(len(labels), dtype=bool)
    if not is_query.any():
        raise ValueError(f"no query rows: column {query_column!r} is false everywhere")
    image_features, video_features = arrays["image_features"][is_query], arrays["video_features"]
    proposal_scores, proposal_mask = arrays["proposal_scores"], arrays["proposal_mask"]
    if feature_extractor is not None:
        prepared = feature_extractor(
            image_features=image_features,
            video_features=video_features,
            proposal_scores=proposal_scores,
            proposal_mask=proposal_mask,
            return_tensors="np",
        )
        image_features, video_features = prepared["image_features"], prepared["video_features"]
        proposal_scores, proposal_mask = prepared.get("proposal_scores"), prepared.get("proposal_mask")

    def tensor(x, dtype=torch.float32):
        return None if x is None else torch.as_tensor(np.asarray(x)).to(dtype)

    num_samples = model.config.num_samples if num_samples is None else num_samples
    lambda_v = model.config.lambda_v if lambda_v is None else lambda_v
    from xmodal.precision import scoring_autocast

    with scoring_autocast(precision, model.device):
        scores = model.score(
            tensor(image_features),
            tensor(video_features),
            num_samples=num_samples,
            lambda_v=lambda_v,
            generator=torch.Generator().manual_seed(seed),
            proposal_scores=tensor(proposal_scores),
            proposal_mask=tensor(proposal_mask, torch.bool),
            chunk_size=batch_size,
        )
    query_labels = labels[is_query]
    result: dict[str, float] = {}
    for name in ("s_a", "s_v", "s_all"):
        metrics = mean_average_precision_at_k(getattr(scores, name), query_labels, labels, ks, normalization=normalization)
        result.update({f"{name}/{key}": value for key, value in metrics.items() if key.startswith("mAP@")})
    result.update(num_queries=int(is_query.sum()), num_gallery=len(labels), num_samples=int(num_samples), lambda_v=float(lambda_v))
    return result
