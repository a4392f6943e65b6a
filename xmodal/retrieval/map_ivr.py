"""
MAP-IVR's retrieval: `ActivityRetriever` (image-to-video ranking by S_A, S_V and S_all with the gallery encoded once,
and the a^v index of `build_index` / `search_videos`) and its `ActivityRetrievalResult`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoFeatureExtractor, AutoModel

from xmodal.indexing import EmbeddingIndex

# Importing the package registers the Auto classes, so saved folders load without trust_remote_code.
from xmodal.map_ivr import MapIvrEncodedVideos, MapIvrFeatureExtractor, MapIvrModel

from .common import (
    _CachedRetriever,
    _check_first_stage_k,
    _check_top_k,
    _content_key,
    _first_stage,
    _pick_device,
    _top_k,
)


VIDEO_FEATURES_FILE = "video_features.safetensors"  # beside an ActivityRetriever's EmbeddingIndex files


@dataclass
class ActivityRetrievalResult:
    """
    Top-k videos of one image query under S_all, closest first (ties broken by the lower gallery index).

    Args:
        indices (`torch.LongTensor` of shape `(k,)`): gallery indices (the index's ids for `search_videos`).
        scores (`torch.FloatTensor` of shape `(k,)`): the ranking distances, equal to `s_all` (lower = closer).
        s_a (`torch.FloatTensor` of shape `(k,)`): appearance distance S_A = 1 - cos(a^u, a^v) of each hit.
        s_v (`torch.FloatTensor` of shape `(k,)`): hallucinated-video distance S_V (min over the h sampled codes).
        s_all (`torch.FloatTensor` of shape `(k,)`): S_all = (1 - lambda_v) * S_A + lambda_v * S_V.
        lambda_v (`float`): the lambda_v used.
        num_samples (`int`): the h used.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    s_a: torch.Tensor
    s_v: torch.Tensor
    s_all: torch.Tensor
    lambda_v: float
    num_samples: int


# ---------------------------------------------------------------------------------------------------------------------
# MAP-IVR
# ---------------------------------------------------------------------------------------------------------------------


class ActivityRetriever(_CachedRetriever):
    """
    Image-to-video ranking with a MAP-IVR checkpoint: S_A, S_V and S_all (lower = closer), gallery encoded once.

    Args:
        model (`MapIvrModel`): the model.
        feature_extractor (`MapIvrFeatureExtractor`, *optional*): normalises raw features as in training; `None` uses
            the features as given.
        seed (`int`, *optional*, defaults to 0): seed of the motion codes z_i ~ N(0, I) drawn for S_V, so the same
            query gives the same scores on every call.
        cache_size (`int`, *optional*, defaults to 8): encoded galleries kept.
        precision (`str`, *optional*, defaults to `"auto"`): the encoders run under bf16 autocast where the device
            computes bf16 natively, in float32 elsewhere; `"bf16"` or `"float32"` forces one. The distances S_A / S_V /
            S_all are float32 products of the unit codes either way (`xmodal.precision`).
    """

    def __init__(
        self,
        model: MapIvrModel,
        feature_extractor: MapIvrFeatureExtractor | None = None,
        seed: int = 0,
        cache_size: int = 8,
        precision: str = "auto",
    ):
        super().__init__(model, cache_size, precision)
        self.feature_extractor = feature_extractor
        self.seed = seed
        # Built by build_index (or loaded): the a^v index and the unit v_bar of each indexed video, same order/dtype.
        self._video_index: EmbeddingIndex | None = None
        self._video_bars: torch.Tensor | None = None

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, seed: int = 0, device: str | torch.device | None = None, precision: str = "auto",
        **kwargs,
    ) -> ActivityRetriever:
        """
        Load a MAP-IVR folder (e.g. `outputs/map_ivr/final`) or Hub repo id through `AutoModel` and
        `AutoFeatureExtractor` (a folder without `preprocessor_config.json` uses raw features).

        Raises:
            FileNotFoundError / ValueError naming `path` (see `load_checkpoint_config`).
        """
        _, source = cls._checkpoint(path, "map_ivr", **kwargs)
        model = AutoModel.from_pretrained(source, **kwargs)
        feature_extractor = None
        local = Path(source)
        if not local.exists() or (local / "preprocessor_config.json").is_file():
            try:
                feature_extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
            except OSError:
                feature_extractor = None  # a Hub repo without one
        return cls(model.to(_pick_device(device)), feature_extractor, seed=seed, precision=precision)

    def _normalized(self, image_features=None, video_features=None, proposal_scores=None, proposal_mask=None):
        if self.feature_extractor is None:
            return {
                k: v
                for k, v in {
                    "image_features": image_features,
                    "video_features": video_features,
                    "proposal_scores": proposal_scores,
                    "proposal_mask": proposal_mask,
                }.items()
                if v is not None
            }
        return dict(
            self.feature_extractor(
                image_features=image_features,
                video_features=video_features,
                proposal_scores=proposal_scores,
                proposal_mask=proposal_mask,
                return_tensors="pt",
            )
        )

    def encode_gallery(self, video_features: Any, proposal_scores: Any = None, proposal_mask: Any = None):
        """
        The encoded gallery (`MapIvrEncodedVideos`), from the cache when these exact features were seen before.

        Args:
            video_features: `(N, D)` pooled features or `(N, K, D)` proposal bags (array or tensor), raw (the
                checkpoint's feature extractor normalises them).
            proposal_scores, proposal_mask: as in `MapIvrModel.forward`.
        """
        parts = [np.asarray(video_features, dtype=np.float32)]
        parts += [np.asarray(x) for x in (proposal_scores, proposal_mask) if x is not None]
        key = "|".join(_content_key(p) for p in parts) + f"|{proposal_scores is None}{proposal_mask is None}"

        def encode(_positions: list[int]) -> list[Any]:
            inputs = self._normalized(
                video_features=video_features, proposal_scores=proposal_scores, proposal_mask=proposal_mask
            )
            with self._autocast():
                encoded = self.model.encode_videos(
                    inputs["video_features"], inputs.get("proposal_scores"), inputs.get("proposal_mask")
                )
            return [encoded]

        return self._cached([key], encode)[0]

    def rank_videos(
        self,
        image_features: Any,
        video_features: Any,
        top_k: int = 5,
        lambda_v: float | None = None,
        num_samples: int | None = None,
        proposal_scores: Any = None,
        proposal_mask: Any = None,
    ) -> ActivityRetrievalResult:
        """
        The `top_k` videos closest to one image query under S_all.

        Args:
            image_features: `(image_feature_dim,)` or `(1, image_feature_dim)` raw features of the query image.
            video_features: the gallery, `(N, D)` or `(N, K, D)` raw features (encoded once, cached).
            top_k: how many to return (fewer when the gallery is smaller).
            lambda_v: weight of S_V in S_all (default: the config's).
            num_samples: h, motion codes sampled for S_V (default: the config's).
            proposal_scores, proposal_mask: for proposal bags.

        Returns:
            `ActivityRetrievalResult` with indices, S_all (`scores`), S_A, S_V of the hits, closest first.
        """
        _check_top_k(top_k)
        query, lambda_v, num_samples = self._query(image_features, lambda_v, num_samples)
        gallery = self.encode_gallery(video_features, proposal_scores, proposal_mask)
        scores = self._score(query, gallery, lambda_v, num_samples)
        best = _top_k(scores.s_all[0], top_k, descending=False)
        return self._result(scores, best, best, lambda_v, num_samples)

    def _query(self, image_features: Any, lambda_v: float | None, num_samples: int | None):
        """`(normalised query (1, image_feature_dim), lambda_v, num_samples)`, checked, defaults from the config."""
        query = np.asarray(image_features, dtype=np.float32)
        if query.ndim == 1:
            query = query[None]
        if query.ndim != 2 or query.shape[0] != 1:
            raise ValueError(
                f"`image_features` must be one query, (image_feature_dim,) or (1, image_feature_dim); got {query.shape}."
            )
        config = self.model.config
        lambda_v = config.lambda_v if lambda_v is None else float(lambda_v)
        if not 0.0 <= lambda_v <= 1.0:
            raise ValueError(f"`lambda_v` must be in [0, 1], got {lambda_v}.")
        num_samples = config.num_samples if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        return self._normalized(image_features=query)["image_features"], lambda_v, num_samples

    def _score(self, query: Any, gallery: MapIvrEncodedVideos, lambda_v: float, num_samples: int):
        """`MapIvrModel.score`, motion codes drawn from a generator seeded with `seed` (the same for any gallery)."""
        generator = torch.Generator(device=self.model.device).manual_seed(self.seed)
        with self._autocast():
            return self.model.score(query, gallery, num_samples=num_samples, lambda_v=lambda_v, generator=generator)

    @staticmethod
    def _result(scores, best: torch.Tensor, indices: torch.Tensor, lambda_v: float, num_samples: int):
        return ActivityRetrievalResult(
            indices=indices.clone(),
            scores=scores.s_all[0, best].clone(),
            s_a=scores.s_a[0, best].clone(),
            s_v=scores.s_v[0, best].clone(),
            s_all=scores.s_all[0, best].clone(),
            lambda_v=lambda_v,
            num_samples=num_samples,
        )

    # ---- indexed search ----

    def build_index(
        self,
        video_features: Any,
        proposal_scores: Any = None,
        proposal_mask: Any = None,
        dtype: str = "float32",
        ids: Any = None,
        **index_params: Any,
    ) -> EmbeddingIndex:
        """
        Index a video gallery for `search_videos`: an `EmbeddingIndex` over the unit-length appearance codes a^v
        (inner product = cos(a^u, a^v) = 1 - S_A, so the index ranks by S_A exactly, up to its approximation), plus
        the unit-length pooled features v_bar that S_V needs, both in `dtype` on the CPU.

        Memory per video, torch or faiss exact index: `(appearance_dim + video_feature_dim) * 4 + 8` bytes in
        float32, `* 2 + 8` in float16 (the 8: its int64 id), e.g. 18_440 / 9_224 bytes at the default 512-d
        appearance and 4096-d features (an approximate faiss kind adds its structure: see `xmodal.indexing`).

        Args:
            video_features, proposal_scores, proposal_mask: the gallery, as in `encode_gallery` (encoded once).
            dtype: `"float32"` or `"float16"` storage (half the memory; S_A and S_V are then computed from the
                rounded codes, within ~1e-3 of the float32 distances).
            ids: `(N,)` distinct integer ids that `search_videos` returns instead of gallery positions.
            **index_params: passed to `EmbeddingIndex.build` (`backend`, `kind`, `ef_search`, `nprobe`...).

        Returns:
            The `EmbeddingIndex` (also used by `search_videos` from now on).
        """
        if dtype not in ("float32", "float16"):
            raise ValueError(f"`dtype` must be 'float32' or 'float16', got {dtype!r}.")
        gallery = self.encode_gallery(video_features, proposal_scores, proposal_mask)
        appearance = F.normalize(gallery.appearance.float().cpu(), dim=-1)
        index = EmbeddingIndex.build(appearance, ids=ids, dtype=dtype, source=self.model_fingerprint, **index_params)
        self._video_index = index
        self._video_bars = gallery.video_features.float().cpu().to(getattr(torch, dtype)).contiguous()
        return index

    @property
    def index(self) -> EmbeddingIndex | None:
        """The a^v index of `build_index` / `load_index` (None before)."""
        return self._video_index

    def save_index(self, folder: str | os.PathLike) -> None:
        """
        Write the video index to `folder`: the `EmbeddingIndex` files (safetensors + JSON, `index.faiss` for
        approximate kinds; no pickle) and `video_features.safetensors` (the unit v_bar, in the index's dtype).
        """
        if self._video_index is None:
            raise ValueError("no video index to save: call build_index(video_features) first.")
        self._video_index.save(folder)
        save_file({"video_features": self._video_bars}, str(Path(folder) / VIDEO_FEATURES_FILE))

    def load_index(self, folder: str | os.PathLike, backend: str = "auto") -> EmbeddingIndex:
        """
        Load a video index written by `save_index` (by this model's weights: see `model_fingerprint`).

        Raises:
            FileNotFoundError / ValueError naming `folder` or the file at fault, or an index built by other weights.
        """
        index = EmbeddingIndex.load(folder, backend=backend)
        self._check_index_source(index, folder)
        config = self.model.config
        if index.dim != config.appearance_dim:
            raise ValueError(
                f"the index in {str(folder)!r} holds {index.dim}-d codes; this model's a^v are "
                f"{config.appearance_dim}-d."
            )
        path = Path(folder) / VIDEO_FEATURES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"video index folder {str(folder)!r} has no {VIDEO_FEATURES_FILE}.")
        try:
            with safe_open(str(path), framework="pt") as file:
                bars = file.get_tensor("video_features")
        except Exception as error:  # safetensors raises its own error types for a broken file
            raise ValueError(f"{str(path)!r} is not a readable safetensors file of video features: {error}") from error
        if tuple(bars.shape) != (len(index), config.video_feature_dim) or str(bars.dtype) != f"torch.{index.dtype}":
            raise ValueError(
                f"{str(path)!r} holds {tuple(bars.shape)} {bars.dtype}; expected ({len(index)}, "
                f"{config.video_feature_dim}) {index.dtype}."
            )
        self._video_index, self._video_bars = index, bars
        return index

    def search_videos(
        self,
        image_features: Any,
        top_k: int = 5,
        first_stage_k: int = 100,
        lambda_v: float | None = None,
        num_samples: int | None = None,
    ) -> ActivityRetrievalResult:
        """
        The `top_k` indexed videos closest to one image query under S_all, scoring only the index's `first_stage_k`
        closest videos under S_A. Their S_A, S_V and S_all are exact (`MapIvrModel.score` on the candidates, with the
        motion codes of `rank_videos`: a generator seeded with `seed`, so the same z_i). Equal to `rank_videos` on
        the indexed gallery when `first_stage_k >= len(gallery)` (float32, exact or complete index); otherwise a
        video with a poor S_A but a good S_V can be missed (never with `lambda_v=0`, up to the index's recall).

        Args:
            image_features: `(image_feature_dim,)` or `(1, image_feature_dim)` raw features of the query image.
            top_k: how many to return (fewer when the gallery is smaller).
            first_stage_k: candidates taken from the index (at least `top_k`).
            lambda_v, num_samples: as in `rank_videos`.

        Returns:
            `ActivityRetrievalResult`; `indices` are the index's ids (gallery positions unless `ids` were given).
        """
        _check_top_k(top_k)
        _check_first_stage_k(first_stage_k)
        if self._video_index is None:
            raise ValueError("no video index: call build_index(video_features) or load_index(folder) first.")
        query, lambda_v, num_samples = self._query(image_features, lambda_v, num_samples)
        with self._autocast():
            image_appearance = F.normalize(self.model.encode_images(query).float().cpu(), dim=-1)  # a^u / ||a^u||
        candidates = _first_stage(self._video_index, image_appearance[0], max(first_stage_k, top_k))
        gallery = MapIvrEncodedVideos(
            appearance=self._video_index.get_vectors(candidates.numpy()),
            video_features=self._video_bars[candidates].float(),
        )
        scores = self._score(query, gallery, lambda_v, num_samples)
        best = _top_k(scores.s_all[0], top_k, descending=False)
        ids = torch.from_numpy(self._video_index.ids)[candidates[best]]
        return self._result(scores, best, ids, lambda_v, num_samples)
