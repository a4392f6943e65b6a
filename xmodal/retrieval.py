"""
Retrieval you can call: rank a gallery with any saved FashionBERT or MAP-IVR folder (or Hub repo id).

```python
from xmodal.retrieval import ActivityRetriever, FashionRetriever

retriever = FashionRetriever.from_pretrained("outputs/fashionbert/final")
result = retriever.rank_images("red silk dress with long sleeves", images, top_k=5)  # images: PIL / paths / arrays
result.indices, result.scores     # (5,) gallery indices, best first; aligned-class log-odds
retriever.rank_texts(images[0], captions, top_k=5)

activity = ActivityRetriever.from_pretrained("outputs/map_ivr/final")
hits = activity.rank_videos(image_features, video_features, top_k=5, lambda_v=0.5, num_samples=20)
hits.indices, hits.s_a, hits.s_v, hits.s_all   # distances, lower = closer
```

FashionBERT is a cross-encoder: every (text, image) pair needs one forward pass. Two things keep that affordable:

* Patch features (the frozen patch encoder's output) are computed once per image and cached, keyed by the image's
  content, so ranking many queries against one gallery encodes the gallery once.
* Galleries larger than `rerank_top_n` are ranked in two stages. Stage 1 is a cheap pre-ranking: the cosine between
  the mean of the query's word embeddings (`bert.embeddings.word_embeddings`, special tokens and padding excluded)
  and the mean of the image's projected patch embeddings (`bert.patch_embeddings.projection`). Both live in the
  model's hidden space, but FashionBERT is never trained to align them directly, so this stage is a heuristic filter
  whose recall is not guaranteed: a true match it drops cannot come back. Stage 2 scores the `rerank_top_n` best
  candidates with the cross-encoder (aligned-class log-odds). With `rerank_top_n >= len(gallery)` (or `None`) the
  ranking is exact.

MAP-IVR is a dual encoder: `ActivityRetriever` encodes the video gallery once (`MapIvrModel.encode_videos`, cached by
content) and ranks with S_A, S_V and S_all (`MapIvrModel.score`). Its inputs are precomputed features, normalised by
the checkpoint's `MapIvrFeatureExtractor` when the folder has one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor
from transformers.utils import logging as hf_logging

# Importing the package registers the Auto classes, so saved folders load without trust_remote_code.
from xmodal.fashionbert import FashionBertForImageTextRetrieval, FashionBertProcessor
from xmodal.files import file_fingerprint, local_or_repo_id, looks_local
from xmodal.map_ivr import MapIvrFeatureExtractor, MapIvrModel


__all__ = [
    "ActivityRetrievalResult",
    "ActivityRetriever",
    "FashionRetriever",
    "RetrievalResult",
    "load_checkpoint_config",
]

ImageInput = PIL.Image.Image | np.ndarray | str | os.PathLike


@dataclass
class RetrievalResult:
    """
    Top-k of one query, best first (ties broken by the lower gallery index).

    Args:
        indices (`torch.LongTensor` of shape `(k,)`): gallery indices.
        scores (`torch.FloatTensor` of shape `(k,)`): their cross-encoder scores, the aligned-class log-odds
            (higher = better match).
        num_reranked (`int`): how many gallery items the cross-encoder scored (the whole gallery when the ranking is
            exact, `rerank_top_n` after the cheap pre-ranking otherwise).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    num_reranked: int


@dataclass
class ActivityRetrievalResult:
    """
    Top-k videos of one image query under S_all, closest first (ties broken by the lower gallery index).

    Args:
        indices (`torch.LongTensor` of shape `(k,)`): gallery indices.
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
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_checkpoint_config(path: str | os.PathLike, expected_model_type: str | None = None, **kwargs):
    """
    The config of a saved folder or Hub repo id through `AutoConfig`, with errors that name `path`.

    Args:
        path: a local folder or a Hub repo id (`owner/name`).
        expected_model_type: `"fashionbert"` or `"map_ivr"`; a folder of another model is a `ValueError`.
        **kwargs: passed to `AutoConfig.from_pretrained` (`revision`, `local_files_only`, `token`...).

    Raises:
        FileNotFoundError: `path` looks local (`xmodal.files.looks_local`: exists, is absolute, starts with `.`/`~`
            or has more than one `/`) but has no `config.json`, or is neither a local folder nor a reachable repo.
        ValueError: the checkpoint is not of `expected_model_type`.
    """
    text, source = str(path), local_or_repo_id(path)
    if looks_local(path) and not (Path(source) / "config.json").is_file():
        what = "is not a folder" if not Path(source).is_dir() else "has no config.json"
        raise FileNotFoundError(f"checkpoint {text!r} {what}: pass a folder written by train.py / save_pretrained.")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"could not load a checkpoint from {text!r}: {error}") from error
    if expected_model_type is not None and config.model_type != expected_model_type:
        raise ValueError(
            f"checkpoint {text!r} is a {config.model_type!r} model, not {expected_model_type!r}."
        )
    return config


def _content_key(item: Any) -> str:
    """A key that is equal for equal image content (PIL, array, tensor) or for the same unchanged file (path)."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, (str, os.PathLike)):
        digest.update(f"path:{file_fingerprint(item)}".encode())
    elif isinstance(item, PIL.Image.Image):
        digest.update(f"pil:{item.mode}:{item.size}".encode())
        digest.update(item.tobytes())
    else:
        array = np.ascontiguousarray(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item))
        digest.update(f"array:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _top_k(scores: torch.Tensor, top_k: int, descending: bool) -> torch.Tensor:
    """Positions of the `top_k` best scores, ties to the lower position (stable sort)."""
    order = torch.sort(scores, descending=descending, stable=True).indices
    return order[:top_k]


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")


def _pick_device(device: str | torch.device | None) -> str | torch.device:
    """`device`, or CUDA when available, else CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs only errors inside the block (e.g. no load report about expected unused weights)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


class _CachedRetriever:
    """
    What both retrievers share: the model in eval mode on its device, and a least-recently-used cache of encoded
    inputs keyed by their content (`_content_key`), at most `cache_size` entries.
    """

    def __init__(self, model: torch.nn.Module, cache_size: int):
        self.model = model.eval()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def _checkpoint(path: str | os.PathLike, model_type: str, **kwargs) -> tuple[Any, str]:
        """`(config, source)`: the checked config of a `model_type` folder or repo id, and what to load it from."""
        return load_checkpoint_config(path, model_type, **kwargs), local_or_repo_id(path)

    def clear_cache(self) -> None:
        """Forget every cached encoding."""
        self._cache.clear()

    def _cached(self, keys: Sequence[str], encode: Callable[[list[int]], Sequence[Any]]) -> list[Any]:
        """
        The cached values of `keys`, in order; `encode(positions)` computes the values of the keys not cached (the
        first position of each, once), which are then cached. The least recently used entries beyond `cache_size`
        are dropped after the call.
        """
        missing: dict[str, int] = {}
        for position, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = position
        computed = dict(zip(missing, encode(list(missing.values())))) if missing else {}
        values = [computed[key] if key in computed else self._cache[key] for key in keys]
        for key, value in zip(keys, values):
            self._cache[key] = value
            self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return values


# ---------------------------------------------------------------------------------------------------------------------
# FashionBERT
# ---------------------------------------------------------------------------------------------------------------------


class FashionRetriever(_CachedRetriever):
    """
    Text-to-image and image-to-text ranking with a FashionBERT checkpoint (cross-encoder, cached patch features,
    optional cheap pre-ranking; see the module docstring).

    Args:
        model (`FashionBertForImageTextRetrieval`): the matcher (any FashionBERT checkpoint loads into it).
        processor (`FashionBertProcessor`): its image processor and tokenizer.
        rerank_top_n (`int` or `None`, *optional*, defaults to 100): galleries larger than this are pre-ranked cheaply
            and only the best `rerank_top_n` go through the cross-encoder; `None` always scores everything.
        batch_size (`int`, *optional*, defaults to 64): pairs per cross-encoder forward pass (and images per patch
            encoder pass).
        cache_size (`int`, *optional*, defaults to 100_000): images whose features are kept (least recently used
            dropped first).
    """

    def __init__(
        self,
        model: FashionBertForImageTextRetrieval,
        processor: FashionBertProcessor,
        rerank_top_n: int | None = 100,
        batch_size: int = 64,
        cache_size: int = 100_000,
    ):
        if rerank_top_n is not None and (isinstance(rerank_top_n, bool) or rerank_top_n < 1):
            raise ValueError(f"`rerank_top_n` must be a positive int or None, got {rerank_top_n!r}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
        # Cached per image: (patch features (P, D) float32 CPU, pre-ranking vector (H,) float32 CPU).
        super().__init__(model, cache_size)
        self.processor = processor
        self.rerank_top_n = rerank_top_n
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        rerank_top_n: int | None = 100,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> FashionRetriever:
        """
        Load a FashionBERT folder (e.g. `outputs/fashionbert/final`, what `python train.py` writes) or Hub repo id.

        The config and processor come through `AutoConfig` / `AutoProcessor` (registered by `import xmodal`); the
        weights load into `FashionBertForImageTextRetrieval` (a pretraining checkpoint's MLM/MPM heads are unused).

        Args:
            path: folder or repo id.
            rerank_top_n, batch_size: as in the class.
            device: where the model runs (default: CUDA when available, else CPU).
            **kwargs: passed to every `from_pretrained` (`revision`, `local_files_only`, `token`...).

        Raises:
            FileNotFoundError / ValueError naming `path` (see `load_checkpoint_config`), or when it has no processor.
        """
        config, source = cls._checkpoint(path, "fashionbert", **kwargs)
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs)
        except (OSError, ValueError, TypeError) as error:
            raise FileNotFoundError(f"checkpoint {str(path)!r} has no usable processor: {error}") from error
        if not isinstance(processor, FashionBertProcessor):
            raise ValueError(f"checkpoint {str(path)!r} has a {type(processor).__name__}, not a FashionBertProcessor.")
        with _quiet_transformers():  # a pretraining checkpoint's MLM/MPM heads are expected leftovers here
            model = FashionBertForImageTextRetrieval.from_pretrained(source, config=config, **kwargs)
        return cls(model.to(_pick_device(device)), processor, rerank_top_n=rerank_top_n, batch_size=batch_size)

    # ---- features ----

    def _open(self, image: ImageInput, index: int) -> Any:
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image {index} ({str(image)!r}) is not a file.")
            try:
                with PIL.Image.open(image) as opened:
                    return opened.convert("RGB")
            except (OSError, ValueError) as error:
                raise ValueError(f"image {index} ({str(image)!r}) could not be read: {error}") from error
        return image

    @torch.no_grad()
    def _encode_uncached(self, images: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Patch features and pre-ranking vectors of `images`, in batches of `batch_size`."""
        bert = self.model.bert
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixel_values = self.processor.image_processor(chunk, return_tensors="pt")["pixel_values"]
            features = bert.get_patch_features(pixel_values.to(self.model.device, self.model.dtype))
            projected = bert.patch_embeddings.projection(features.to(bert.patch_embeddings.projection.weight.dtype))
            vectors = F.normalize(projected.mean(dim=1).float(), dim=-1)
            out.extend(zip(features.float().cpu(), vectors.cpu()))
        return out

    def encode_images(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Patch features of `images`, from the cache where possible (only unseen images go through the patch encoder).

        Args:
            images: PIL images, `(H, W, 3)` arrays or image file paths.

        Returns:
            `(patch_features, prerank_vectors)`: `(N, num_patches, patch_feature_dim)` and `(N, hidden_size)` float32
            CPU tensors (the second L2-normalised, for the cheap pre-ranking).
        """
        if isinstance(images, (str, os.PathLike, PIL.Image.Image)) or len(images) == 0:
            raise ValueError("`images` must be a non-empty list of images (PIL images, arrays or file paths).")
        keys = []
        for index, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
                raise FileNotFoundError(f"image {index} ({str(image)!r}) is not a file.")
            try:
                keys.append(_content_key(image))
            except (OSError, TypeError, ValueError) as error:
                raise ValueError(f"image {index} ({type(image).__name__}) cannot be used: {error}") from error
        entries = self._cached(
            keys, lambda positions: self._encode_uncached([self._open(images[p], p) for p in positions])
        )
        return torch.stack([e[0] for e in entries]), torch.stack([e[1] for e in entries])

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.processor(text=texts, return_tensors="pt")

    @torch.no_grad()
    def _text_vectors(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pre-ranking text vectors: mean word embedding over real, non-special tokens, L2-normalised."""
        ids = encoded["input_ids"]
        tokenizer = self.processor.tokenizer
        special = torch.tensor(tokenizer.all_special_ids, dtype=ids.dtype)
        keep = encoded["attention_mask"].bool() & ~torch.isin(ids, special)
        keep = torch.where(keep.any(dim=1, keepdim=True), keep, encoded["attention_mask"].bool())  # empty text
        embeddings = self.model.bert.embeddings.word_embeddings(ids.to(self.model.device)).float().cpu()
        summed = (embeddings * keep.unsqueeze(-1)).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp_min(1)
        return F.normalize(summed, dim=-1)

    def _cross_scores(
        self, encoded: dict[str, torch.Tensor], features: torch.Tensor, text_indices, image_indices
    ) -> torch.Tensor:
        return self.model.score_pairs(
            encoded["input_ids"],
            encoded["attention_mask"],
            features,
            torch.as_tensor(text_indices, dtype=torch.long),
            torch.as_tensor(image_indices, dtype=torch.long),
            token_type_ids=encoded.get("token_type_ids"),
            batch_size=self.batch_size,
        )

    def _candidates(self, prescores: torch.Tensor, top_k: int) -> torch.Tensor:
        """All positions when the gallery is small enough, else the pre-ranking's best `max(rerank_top_n, top_k)`."""
        size = prescores.numel()
        if self.rerank_top_n is None or size <= self.rerank_top_n:
            return torch.arange(size)
        # Sorted back into gallery order, so ties in the cross-encoder score still go to the lower gallery index.
        return torch.sort(_top_k(prescores, max(self.rerank_top_n, top_k), descending=True)).values

    def _finish(self, candidates: torch.Tensor, scores: torch.Tensor, top_k: int) -> RetrievalResult:
        best = _top_k(scores, top_k, descending=True)
        return RetrievalResult(
            indices=candidates[best].clone(), scores=scores[best].clone(), num_reranked=int(candidates.numel())
        )

    # ---- ranking ----

    def rank_images(self, text: str, images: Sequence[ImageInput], top_k: int = 5) -> RetrievalResult:
        """
        The `top_k` images of `images` that best match `text`.

        Args:
            text: the query description.
            images: the gallery (PIL images, `(H, W, 3)` arrays or file paths); features are cached across calls.
            top_k: how many to return (fewer when the gallery is smaller).

        Returns:
            `RetrievalResult` (indices into `images`, cross-encoder scores, best first).
        """
        _check_top_k(top_k)
        if not isinstance(text, str):
            raise ValueError(f"`text` must be a string, got {type(text).__name__}.")
        features, vectors = self.encode_images(images)
        encoded = self._tokenize([text])
        prescores = vectors @ self._text_vectors(encoded)[0]
        candidates = self._candidates(prescores, top_k)
        scores = self._cross_scores(encoded, features, torch.zeros_like(candidates), candidates)
        return self._finish(candidates, scores, min(top_k, candidates.numel()))

    def rank_texts(self, image: ImageInput, texts: Sequence[str], top_k: int = 5) -> RetrievalResult:
        """
        The `top_k` texts of `texts` that best describe `image`.

        Args:
            image: the query image (PIL image, `(H, W, 3)` array or file path); its features are cached.
            texts: the candidate captions.
            top_k: how many to return (fewer when there are fewer texts).

        Returns:
            `RetrievalResult` (indices into `texts`, cross-encoder scores, best first).
        """
        _check_top_k(top_k)
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("`texts` must be a non-empty list of strings.")
        features, vectors = self.encode_images([image])
        encoded = self._tokenize(list(texts))
        prescores = self._text_vectors(encoded) @ vectors[0]
        candidates = self._candidates(prescores, top_k)
        scores = self._cross_scores(encoded, features, candidates, torch.zeros_like(candidates))
        return self._finish(candidates, scores, min(top_k, candidates.numel()))


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
    """

    def __init__(
        self,
        model: MapIvrModel,
        feature_extractor: MapIvrFeatureExtractor | None = None,
        seed: int = 0,
        cache_size: int = 8,
    ):
        super().__init__(model, cache_size)
        self.feature_extractor = feature_extractor
        self.seed = seed

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, seed: int = 0, device: str | torch.device | None = None, **kwargs
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
        return cls(model.to(_pick_device(device)), feature_extractor, seed=seed)

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
            return [
                self.model.encode_videos(
                    inputs["video_features"], inputs.get("proposal_scores"), inputs.get("proposal_mask")
                )
            ]

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
        query = np.asarray(image_features, dtype=np.float32)
        if query.ndim == 1:
            query = query[None]
        if query.ndim != 2 or query.shape[0] != 1:
            raise ValueError(
                f"`image_features` must be one query, (image_feature_dim,) or (1, image_feature_dim); got {query.shape}."
            )
        config = self.model.config
        lambda_v = config.lambda_v if lambda_v is None else float(lambda_v)
        num_samples = config.num_samples if num_samples is None else int(num_samples)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        gallery = self.encode_gallery(video_features, proposal_scores, proposal_mask)
        query = self._normalized(image_features=query)["image_features"]
        generator = torch.Generator(device=self.model.device).manual_seed(self.seed)
        scores = self.model.score(
            query, gallery, num_samples=num_samples, lambda_v=lambda_v, generator=generator
        )
        best = _top_k(scores.s_all[0], top_k, descending=False)
        return ActivityRetrievalResult(
            indices=best.clone(),
            scores=scores.s_all[0, best].clone(),
            s_a=scores.s_a[0, best].clone(),
            s_v=scores.s_v[0, best].clone(),
            s_all=scores.s_all[0, best].clone(),
            lambda_v=lambda_v,
            num_samples=num_samples,
        )
