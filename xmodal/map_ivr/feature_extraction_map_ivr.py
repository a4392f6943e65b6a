"""Feature extractor for MAP-IVR: precomputed features -> padded, normalised model inputs.

MAP-IVR works on precomputed features: an image feature vector per image and, per video, either
one vector v_bar or a bag of activity-proposal features with optional confidences. This
extractor pads bags to the longest one, builds the proposal mask, and applies APIVR's
normalisation with training-set statistics: every dimension is mean-centred and divided by its
range, ``x' = (x - mean) / (max - min)`` (dimensions with zero range are only centred). The
statistics are fitted with :meth:`MapIvrFeatureExtractor.fit` and saved with the extractor
(``preprocessor_config.json``, plain lists), so ``AutoFeatureExtractor`` reloads it.

For raw images and videos, see ``media_encoding_map_ivr.MapIvrMediaEncoder``, whose output feeds
this extractor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import BatchFeature, FeatureExtractionMixin


__all__ = ["MapIvrFeatureExtractor"]


def _as_float_array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}") from err
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _to_rows(features: Any, name: str) -> tuple[list[np.ndarray], bool]:
    """A batch of vectors or bags -> (list of 1-D vectors or 2-D bags, is_bag)."""
    if isinstance(features, np.ndarray) or hasattr(features, "numpy"):
        array = _as_float_array(features.numpy() if hasattr(features, "numpy") else features, name)
        if array.ndim == 2:
            return list(array), False
        if array.ndim == 3:
            return list(array), True
        raise ValueError(f"{name} must be (N, D) vectors or (N, K, D) bags, got shape {array.shape}")
    rows = [_as_float_array(row, f"{name}[{i}]") for i, row in enumerate(features)]
    if not rows:
        raise ValueError(f"{name} is empty")
    dims = {row.ndim for row in rows}
    if dims == {1}:
        return rows, False
    if dims == {2}:
        return rows, True
    raise ValueError(f"{name} must hold only vectors (D,) or only bags (K, D); got rows with ndim {sorted(dims)}")


class MapIvrFeatureExtractor(FeatureExtractionMixin):
    r"""
    Prepares precomputed MAP-IVR features: pads proposal bags, builds `proposal_mask`, and applies
    the APIVR normalisation `(x - mean) / (max - min)` with statistics fitted on a training set.

    Args:
        image_feature_dim (`int`, *optional*):
            Expected image feature size (checked when set; set by `fit`).
        video_feature_dim (`int`, *optional*):
            Expected proposal / video feature size (checked when set; set by `fit`).
        do_normalize (`bool`, defaults to `True`):
            Apply the normalisation. When `True` the statistics must have been fitted (`fit`) or
            given, otherwise calling the extractor raises a `ValueError`; `False` passes features
            through unchanged.
        image_mean, image_min, image_max (`list[float]`, *optional*):
            Per-dimension training statistics of image features.
        video_mean, video_min, video_max (`list[float]`, *optional*):
            Per-dimension training statistics of proposal features (over all valid proposals) or
            of video vectors.
    """

    model_input_names = ["image_features", "video_features", "proposal_scores", "proposal_mask"]

    def __init__(
        self,
        image_feature_dim: int | None = None,
        video_feature_dim: int | None = None,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_min: Sequence[float] | None = None,
        image_max: Sequence[float] | None = None,
        video_mean: Sequence[float] | None = None,
        video_min: Sequence[float] | None = None,
        video_max: Sequence[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_feature_dim = image_feature_dim
        self.video_feature_dim = video_feature_dim
        self.do_normalize = do_normalize
        self.image_mean = None if image_mean is None else [float(x) for x in image_mean]
        self.image_min = None if image_min is None else [float(x) for x in image_min]
        self.image_max = None if image_max is None else [float(x) for x in image_max]
        self.video_mean = None if video_mean is None else [float(x) for x in video_mean]
        self.video_min = None if video_min is None else [float(x) for x in video_min]
        self.video_max = None if video_max is None else [float(x) for x in video_max]
        for prefix, dim in (("image", image_feature_dim), ("video", video_feature_dim)):
            stats = [getattr(self, f"{prefix}_{k}") for k in ("mean", "min", "max")]
            if any(s is not None for s in stats) and any(s is None for s in stats):
                raise ValueError(f"{prefix}_mean, {prefix}_min and {prefix}_max must be given together")
            if stats[0] is not None:
                if len({len(s) for s in stats}) != 1:
                    raise ValueError(f"{prefix}_mean, {prefix}_min and {prefix}_max must have the same length")
                if dim is not None and len(stats[0]) != dim:
                    raise ValueError(f"{prefix}_mean has {len(stats[0])} values but {prefix}_feature_dim is {dim}")

    # ---- fitting ----

    @property
    def is_fitted(self) -> bool:
        return self.image_mean is not None and self.video_mean is not None

    def fit(
        self,
        image_features: Any,
        video_features: Any,
        proposal_mask: Any = None,
    ) -> MapIvrFeatureExtractor:
        """Fit the per-dimension mean, min and max on a training set.

        Args:
            image_features: ``(N, Di)`` array or list of vectors.
            video_features: ``(N, D)`` vectors, ``(N, K, D)`` bags, or a list of ``(K_i, D)`` bags;
                statistics are taken over all valid proposals.
            proposal_mask: ``(N, K)`` for padded ``(N, K, D)`` bags (padding is ignored).

        Returns:
            self (statistics stored as lists, so they are saved with the extractor).
        """
        images, image_is_bag = _to_rows(image_features, "image_features")
        if image_is_bag:
            raise ValueError("image_features must be vectors (N, D), not bags")
        image_matrix = np.stack(images)
        proposals = self._valid_proposals(video_features, proposal_mask)
        self.image_feature_dim = int(image_matrix.shape[1])
        self.video_feature_dim = int(proposals.shape[1])
        for prefix, matrix in (("image", image_matrix), ("video", proposals)):
            setattr(self, f"{prefix}_mean", matrix.mean(axis=0).tolist())
            setattr(self, f"{prefix}_min", matrix.min(axis=0).tolist())
            setattr(self, f"{prefix}_max", matrix.max(axis=0).tolist())
        return self

    @staticmethod
    def _valid_proposals(video_features: Any, proposal_mask: Any) -> np.ndarray:
        rows, is_bag = _to_rows(video_features, "video_features")
        if not is_bag:
            if proposal_mask is not None:
                raise ValueError("proposal_mask only applies to proposal bags")
            return np.stack(rows)
        parts = []
        for i, bag in enumerate(rows):
            if proposal_mask is not None:
                mask = np.asarray(proposal_mask[i], dtype=bool)
                if mask.shape != (bag.shape[0],):
                    raise ValueError(f"proposal_mask[{i}] must have shape ({bag.shape[0]},), got {mask.shape}")
                bag = bag[mask]
            parts.append(bag)
        return np.concatenate(parts)

    # ---- normalisation ----

    def _statistics(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        mean = getattr(self, f"{prefix}_mean")
        if mean is None:
            raise ValueError(
                f"MapIvrFeatureExtractor has no {prefix} statistics: call fit(image_features, video_features) "
                "on the training set first, or create it with do_normalize=False"
            )
        mean = np.asarray(mean, dtype=np.float64)
        value_range = np.asarray(getattr(self, f"{prefix}_max"), dtype=np.float64) - np.asarray(
            getattr(self, f"{prefix}_min"), dtype=np.float64
        )
        # Constant dimensions are only centred (dividing by a zero range is undefined).
        scale = np.where(value_range > 0, value_range, 1.0)
        return mean, scale

    def normalize_image_features(self, features: np.ndarray) -> np.ndarray:
        """(x - image_mean) / (image_max - image_min), per dimension (float64 in, float64 out)."""
        mean, scale = self._statistics("image")
        return (features - mean) / scale

    def normalize_video_features(self, features: np.ndarray) -> np.ndarray:
        """(x - video_mean) / (video_max - video_min), per dimension, on vectors or proposals."""
        mean, scale = self._statistics("video")
        return (features - mean) / scale

    # ---- batching ----

    def __call__(
        self,
        image_features: Any = None,
        video_features: Any = None,
        proposal_scores: Any = None,
        proposal_mask: Any = None,
        labels: Any = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Batch precomputed features for `MapIvrModel`.

        Args:
            image_features: ``(N, Di)`` array or list of vectors.
            video_features: ``(N, D)`` vectors, ``(N, K, D)`` padded bags, or a list of
                ``(K_i, D)`` bags of different lengths (padded with zeros to the longest).
            proposal_scores: per bag ``(K_i,)`` confidences or ``(K_i, C)`` class scores
                (padded with zeros; the mask excludes the padding).
            proposal_mask: ``(N, K)`` for already padded bags (default: every proposal real).
            labels: ``(N,)`` activity classes, passed through as ``labels``.
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None`` (numpy arrays).

        Returns:
            `BatchFeature` with ``image_features`` ``(N, Di)`` float32, ``video_features``
            ``(N, D)`` or ``(N, K, D)`` float32, and for bags ``proposal_mask`` ``(N, K)`` bool and
            (when given) ``proposal_scores`` ``(N, K)`` or ``(N, K, C)`` float32; plus ``labels``.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if image_features is None and video_features is None:
            raise ValueError("give image_features, video_features or both")
        data: dict[str, np.ndarray] = {}
        num_rows = []
        if image_features is not None:
            images, is_bag = _to_rows(image_features, "image_features")
            if is_bag:
                raise ValueError("image_features must be vectors (N, D), not bags")
            matrix = self._check_dim(np.stack(images), self.image_feature_dim, "image_features")
            if self.do_normalize:
                matrix = self.normalize_image_features(matrix)
            data["image_features"] = matrix.astype(np.float32)
            num_rows.append(len(matrix))
        if video_features is not None:
            data.update(self._prepare_videos(video_features, proposal_scores, proposal_mask))
            num_rows.append(len(data["video_features"]))
        elif proposal_scores is not None or proposal_mask is not None:
            raise ValueError("proposal_scores / proposal_mask need video_features")
        if labels is not None:
            data["labels"] = np.asarray(labels, dtype=np.int64)
            num_rows.append(len(data["labels"]))
        if len(set(num_rows)) > 1:
            raise ValueError(f"image_features, video_features and labels have different numbers of rows: {num_rows}")
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_dim(array: np.ndarray, expected: int | None, name: str) -> np.ndarray:
        if expected is not None and array.shape[-1] != expected:
            raise ValueError(f"{name} has feature size {array.shape[-1]}, expected {expected}")
        return array

    def _prepare_videos(self, video_features: Any, proposal_scores: Any, proposal_mask: Any) -> dict[str, np.ndarray]:
        rows, is_bag = _to_rows(video_features, "video_features")
        if not is_bag:
            if proposal_scores is not None or proposal_mask is not None:
                raise ValueError("proposal_scores / proposal_mask only apply to proposal bags")
            matrix = self._check_dim(np.stack(rows), self.video_feature_dim, "video_features")
            if self.do_normalize:
                matrix = self.normalize_video_features(matrix)
            return {"video_features": matrix.astype(np.float32)}

        longest = max(bag.shape[0] for bag in rows)
        dim = rows[0].shape[1]
        bags = np.zeros((len(rows), longest, dim), dtype=np.float64)
        mask = np.zeros((len(rows), longest), dtype=bool)
        for i, bag in enumerate(rows):
            if bag.shape[1] != dim:
                raise ValueError(f"video_features[{i}] has feature size {bag.shape[1]}, expected {dim}")
            bags[i, : bag.shape[0]] = bag
            mask[i, : bag.shape[0]] = True
        self._check_dim(bags, self.video_feature_dim, "video_features")
        if proposal_mask is not None:
            given = np.asarray(proposal_mask, dtype=bool)
            if given.shape != mask.shape:
                raise ValueError(f"proposal_mask must have shape {mask.shape}, got {given.shape}")
            mask &= given
        empty = np.flatnonzero(~mask.any(axis=1))
        if len(empty):
            raise ValueError(f"video(s) {empty.tolist()} have no valid proposal")
        if self.do_normalize:
            bags = self.normalize_video_features(bags)
        bags[~mask] = 0.0  # padding stays exactly zero after normalisation
        out = {"video_features": bags.astype(np.float32), "proposal_mask": mask}
        if proposal_scores is not None:
            out["proposal_scores"] = self._pad_scores(proposal_scores, rows, longest)
        return out

    @staticmethod
    def _pad_scores(proposal_scores: Any, rows: list[np.ndarray], longest: int) -> np.ndarray:
        scores = [_as_float_array(s, f"proposal_scores[{i}]") for i, s in enumerate(proposal_scores)]
        if len(scores) != len(rows):
            raise ValueError(f"proposal_scores has {len(scores)} rows, video_features has {len(rows)}")
        tail = scores[0].shape[1:]
        if len(tail) > 1:
            raise ValueError("proposal_scores rows must be (K,) confidences or (K, C) class scores")
        padded = np.zeros((len(rows), longest, *tail), dtype=np.float32)
        for i, (score, bag) in enumerate(zip(scores, rows)):
            if score.shape != (bag.shape[0], *tail):
                raise ValueError(
                    f"proposal_scores[{i}] must have shape {(bag.shape[0], *tail)} to match its bag, got {score.shape}"
                )
            padded[i, : bag.shape[0]] = score
        return padded
