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

FashionBERT is a cross-encoder: every (text, image) pair needs one forward pass. Three things keep that affordable:

* Patch features (the frozen patch encoder's output) are computed once per image and cached, keyed by the image's
  content, so ranking many queries against one gallery encodes the gallery once.
* Galleries larger than `rerank_top_n` are ranked in two stages. Stage 1 pre-ranks every item cheaply; stage 2 scores
  the `rerank_top_n` best candidates with the cross-encoder (aligned-class log-odds). With
  `rerank_top_n >= len(gallery)` (or `None`) the ranking is exact. Stage 1 depends on the checkpoint:
  - with dual-encoder heads (a model trained with `--contrastive_projection_dim`, i.e.
    `config.contrastive_projection_dim` set), the trained one: the dot product of the unit-length text and image
    embeddings (`bert.get_text_embeddings` / `bert.get_image_embeddings`, the image ones cached with the patch
    features), which the image-text contrastive task trains to rank matches first;
  - without them, a heuristic: the cosine between the mean of the query's word embeddings
    (`bert.embeddings.word_embeddings`, special tokens and padding excluded) and the mean of the image's projected
    patch embeddings (`bert.patch_embeddings.projection`). Both live in the model's hidden space, but FashionBERT is
    never trained to align them directly, so this is a filter whose recall is not guaranteed.
  Either way a true match that stage 1 drops cannot come back.
* For catalogues searched many times, `FashionRetriever.build_index(images)` puts the image embeddings in an
  `xmodal.indexing.EmbeddingIndex` (faiss or torch; saved with `save_index`, no pickle) and
  `search_images(text, top_k, first_stage_k)` re-ranks only the index's `first_stage_k` nearest with the
  cross-encoder (equal to the exhaustive cross-encoder ranking when `first_stage_k >= len(gallery)`). The same for
  captions: `build_text_index(texts)` and `search_texts(image, ...)`. Both need dual-encoder heads.

```python
retriever.build_index(catalogue_paths)              # image embeddings, once
retriever.save_index("outputs/catalogue_index")      # later: retriever.load_index("outputs/catalogue_index")
retriever.search_images("red silk dress", top_k=10, first_stage_k=100)
```

MAP-IVR is a dual encoder: `ActivityRetriever` encodes the video gallery once (`MapIvrModel.encode_videos`, cached by
content) and ranks with S_A, S_V and S_all (`MapIvrModel.score`). Its inputs are precomputed features, normalised by
the checkpoint's `MapIvrFeatureExtractor` when the folder has one. For large galleries, `ActivityRetriever.build_index`
indexes the unit-length appearance codes a^v (S_A = 1 - cos(a^u, a^v) = 1 - inner product, so an inner-product index
ranks exactly by S_A) and `search_videos` scores S_V / S_all exactly on the index's `first_stage_k` closest videos
under S_A only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

# Importing the package registers the Auto classes, so saved folders load without trust_remote_code.
from xmodal.fashionbert import FashionBertForImageTextRetrieval, FashionBertProcessor
from xmodal.files import file_fingerprint, local_or_repo_id, looks_local
from xmodal.indexing import EmbeddingIndex
from xmodal.map_ivr import MapIvrEncodedVideos, MapIvrFeatureExtractor, MapIvrModel


__all__ = [
    "ActivityRetrievalResult",
    "ActivityRetriever",
    "FashionRetriever",
    "RetrievalResult",
    "load_checkpoint_config",
]

ImageInput = PIL.Image.Image | np.ndarray | str | os.PathLike
VIDEO_FEATURES_FILE = "video_features.safetensors"  # beside an ActivityRetriever's EmbeddingIndex files


@dataclass
class RetrievalResult:
    """
    Top-k of one query, best first (ties broken by the lower gallery index).

    Args:
        indices (`torch.LongTensor` of shape `(k,)`): gallery indices (the index's ids for `search_images` /
            `search_texts`: gallery positions unless `ids` were given to `build_index`).
        scores (`torch.FloatTensor` of shape `(k,)`): the score they are ranked by (higher = better match): the fused
            score of the two stages (`FashionBertModel.fuse_scores`) when the model's config has a `fusion_weight`,
            else the cross-encoder's aligned-class log-odds.
        num_reranked (`int`): how many gallery items the cross-encoder scored (the whole gallery when the ranking is
            exact, `rerank_top_n` after the cheap pre-ranking, or the index's first-stage candidates).
        log_odds (`torch.FloatTensor` of shape `(k,)`): the cross-encoder's aligned-class log-odds of each hit.
        similarity (`torch.FloatTensor` of shape `(k,)`, *optional*): with dual-encoder heads, the cosine of the hit's
            and the query's embeddings (the first stage's score); None without them.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    num_reranked: int
    log_odds: torch.Tensor | None = None
    similarity: torch.Tensor | None = None


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


def _check_first_stage_k(first_stage_k: int) -> None:
    if isinstance(first_stage_k, bool) or not isinstance(first_stage_k, int) or first_stage_k < 1:
        raise ValueError(f"`first_stage_k` must be a positive int, got {first_stage_k!r}.")


def _first_stage(index: EmbeddingIndex, query: torch.Tensor, count: int) -> torch.Tensor:
    """Row numbers of the index's `count` nearest to `query` (one vector), sorted back into gallery order."""
    positions, _ = index.search_positions(query.reshape(1, -1).float(), count)
    positions = positions[0][positions[0] >= 0]
    # Gallery order, so ties in the exact second-stage score still go to the lower gallery index.
    return torch.sort(torch.from_numpy(positions)).values


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
        self._fingerprint: str | None = None

    @property
    def model_fingerprint(self) -> str:
        """
        SHA-256 of the model's weights (every parameter and buffer: name, dtype, shape, values), computed once.
        Indexes record it (`EmbeddingIndex.source`) and `load_index` refuses an index built by other weights, whose
        embeddings would not be comparable with this model's queries.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = "sha256:" + digest.hexdigest()
        return self._fingerprint

    def _check_index_source(self, index: EmbeddingIndex, folder: str | os.PathLike) -> None:
        if index.source is not None and index.source != self.model_fingerprint:
            raise ValueError(
                f"the index in {str(folder)!r} was built by another model ({index.source[:19]}...; this model is "
                f"{self.model_fingerprint[:19]}...): its embeddings do not match this model's queries; build it again."
            )

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
    optional cheap pre-ranking, optional embedding indexes when the model has dual-encoder heads; see the module
    docstring).

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
        # Cached per image: (patch features (P, D) float32 CPU, first-stage vector float32 CPU: the image embedding
        # (contrastive_projection_dim,) with dual-encoder heads, else the heuristic's (hidden_size,)).
        super().__init__(model, cache_size)
        self.processor = processor
        self.rerank_top_n = rerank_top_n
        self.batch_size = batch_size
        # Built by build_index / build_text_index (or loaded): the index and the gallery it ranks.
        self._image_index: EmbeddingIndex | None = None
        self._indexed_images: list[Any] | None = None
        self._text_index: EmbeddingIndex | None = None
        self._indexed_texts: list[str] | None = None

    @property
    def has_dual_encoder(self) -> bool:
        """Whether the model has trained dual-encoder heads (`config.contrastive_projection_dim` set)."""
        return self.model.config.contrastive_projection_dim is not None

    def _require_dual_encoder(self, what: str) -> None:
        if not self.has_dual_encoder:
            raise ValueError(
                f"{what} needs a FashionBERT with dual-encoder heads, and this checkpoint has none "
                "(`contrastive_projection_dim` is None): train one with the quick recipe (`python train.py`, which trains "
                "them) or `--contrastive_projection_dim 256`, or use rank_images / rank_texts."
            )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        rerank_top_n: int | None = 100,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        cache_size: int = 100_000,
        **kwargs,
    ) -> FashionRetriever:
        """
        Load a FashionBERT folder (e.g. `outputs/fashionbert/final`, what `python train.py` writes) or Hub repo id.

        The config and processor come through `AutoConfig` / `AutoProcessor` (registered by `import xmodal`); the
        weights load into `FashionBertForImageTextRetrieval` (a pretraining checkpoint's MLM/MPM heads are unused).

        Args:
            path: folder or repo id.
            rerank_top_n, batch_size, cache_size: as in the class.
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
        return cls(model.to(_pick_device(device)), processor, rerank_top_n=rerank_top_n, batch_size=batch_size,
                   cache_size=cache_size)  # fmt: skip

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
        """Patch features and first-stage vectors of `images`, in batches of `batch_size`."""
        bert = self.model.bert
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixel_values = self.processor.image_processor(chunk, return_tensors="pt")["pixel_values"]
            features = bert.get_patch_features(pixel_values.to(self.model.device, self.model.dtype))
            if self.has_dual_encoder:  # the trained image embedding
                vectors = F.normalize(bert.get_image_embeddings(patch_features=features).float(), dim=-1)
            else:  # the heuristic: mean projected patch feature
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
            `(patch_features, prerank_vectors)`: `(N, num_patches, patch_feature_dim)` and `(N, E)` float32 CPU
            tensors. The second, L2-normalised, is the first-stage vector: the dual-encoder image embedding
            (E = `contrastive_projection_dim`) when the model has the heads, else the heuristic's mean projected
            patch feature (E = `hidden_size`; see the module docstring).
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
        """
        First-stage text vectors, `(num_texts, E)` float32 CPU, L2-normalised: the dual-encoder text embeddings when
        the model has the heads, else the mean word embedding over real, non-special tokens.
        """
        ids = encoded["input_ids"]
        if self.has_dual_encoder:
            device = self.model.device
            types = encoded.get("token_type_ids")
            embeddings = self.model.bert.get_text_embeddings(
                ids.to(device), encoded["attention_mask"].to(device), None if types is None else types.to(device)
            )
            return F.normalize(embeddings.float().cpu(), dim=-1)
        tokenizer = self.processor.tokenizer
        special = torch.tensor(tokenizer.all_special_ids, dtype=ids.dtype)
        keep = encoded["attention_mask"].bool() & ~torch.isin(ids, special)
        keep = torch.where(keep.any(dim=1, keepdim=True), keep, encoded["attention_mask"].bool())  # empty text
        embeddings = self.model.bert.embeddings.word_embeddings(ids.to(self.model.device)).float().cpu()
        summed = (embeddings * keep.unsqueeze(-1)).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp_min(1)
        return F.normalize(summed, dim=-1)

    def _rerank_scores(
        self, encoded: dict[str, torch.Tensor], features: torch.Tensor, text_indices, image_indices,
        similarity: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(scores, log_odds)` of the pairs: the cross-encoder's log-odds, and the score they are ranked by (fused with
        the first stage's `similarity` when the model has a fusion weight, else the log-odds themselves).
        """
        log_odds = self.model.score_pairs(
            encoded["input_ids"],
            encoded["attention_mask"],
            features,
            torch.as_tensor(text_indices, dtype=torch.long),
            torch.as_tensor(image_indices, dtype=torch.long),
            token_type_ids=encoded.get("token_type_ids"),
            batch_size=self.batch_size,
        )
        if similarity is None or self.model.config.fusion_weight is None:
            return log_odds, log_odds
        return self.model.bert.fuse_scores(log_odds, similarity.float()).cpu(), log_odds

    def _candidates(self, prescores: torch.Tensor, top_k: int) -> torch.Tensor:
        """All positions when the gallery is small enough, else the pre-ranking's best `max(rerank_top_n, top_k)`."""
        size = prescores.numel()
        if self.rerank_top_n is None or size <= self.rerank_top_n:
            return torch.arange(size)
        # Sorted back into gallery order, so ties in the cross-encoder score still go to the lower gallery index.
        return torch.sort(_top_k(prescores, max(self.rerank_top_n, top_k), descending=True)).values

    @staticmethod
    def _finish(
        ids: torch.Tensor, scores: torch.Tensor, log_odds: torch.Tensor, similarity: torch.Tensor | None, top_k: int
    ) -> RetrievalResult:
        """The `top_k` best of the scored candidates `ids` (ties to the earlier candidate)."""
        best = _top_k(scores, min(top_k, ids.numel()), descending=True)
        return RetrievalResult(
            indices=ids[best].clone(), scores=scores[best].clone(), num_reranked=int(ids.numel()),
            log_odds=log_odds[best].clone(), similarity=None if similarity is None else similarity[best].float().clone(),
        )  # fmt: skip

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
        similarity = prescores[candidates] if self.has_dual_encoder else None
        scores, log_odds = self._rerank_scores(encoded, features, torch.zeros_like(candidates), candidates, similarity)
        return self._finish(candidates, scores, log_odds, similarity, top_k)

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
        similarity = prescores[candidates] if self.has_dual_encoder else None
        scores, log_odds = self._rerank_scores(encoded, features, candidates, torch.zeros_like(candidates), similarity)
        return self._finish(candidates, scores, log_odds, similarity, top_k)

    # ---- indexed search (dual-encoder heads) ----

    def build_index(
        self, images: Sequence[ImageInput], ids: Any = None, show_progress: bool = False, **index_params: Any
    ) -> EmbeddingIndex:
        """
        Index the image embeddings of a gallery for `search_images` (kept on the retriever; `save_index` writes it).

        The embeddings come from the cached patch features (`encode_images`, chunk by chunk), so images already seen
        are not re-encoded by the patch encoder. The retriever keeps a reference to `images` to re-rank candidates
        with the cross-encoder (their patch features come from the cache, or are recomputed when evicted).
        Memory per image: the index's vector (`contrastive_projection_dim` * 4 bytes, * 2 with `dtype="float16"`,
        plus 8 for its id; see `xmodal.indexing` for approximate kinds) and the reference to the image (a path is
        cheap; an in-memory image stays alive). Building goes through `encode_images`, so the gallery's patch
        features also enter the LRU cache (at most `cache_size` images).

        Args:
            images: the gallery (PIL images, `(H, W, 3)` arrays or file paths; file paths are what `save_index` can
                store for `load_index`).
            ids: `(N,)` distinct integer ids that `search_images` returns instead of gallery positions.
            show_progress: a progress bar over the images encoded.
            **index_params: passed to `EmbeddingIndex.build` (`backend`, `kind`, `dtype`, `ef_search`, `nprobe`...).

        Returns:
            The `EmbeddingIndex` (also used by `search_images` from now on); its `source` is `model_fingerprint`.

        Raises:
            ValueError: the model has no dual-encoder heads (train with `--contrastive_projection_dim`), or bad
                images / ids / parameters.
        """
        self._require_dual_encoder("build_index")
        if isinstance(images, (str, os.PathLike, PIL.Image.Image)) or len(images) == 0:
            raise ValueError("`images` must be a non-empty list of images (PIL images, arrays or file paths).")
        images, step = list(images), self.batch_size * 16  # bounds the patch features held at once
        vectors = []
        with tqdm(total=len(images), desc="Indexing images", unit="image", disable=not show_progress) as bar:
            for start in range(0, len(images), step):
                vectors.append(self.encode_images(images[start : start + step])[1])
                bar.update(len(vectors[-1]))
        self._image_index = EmbeddingIndex.build(torch.cat(vectors), ids=ids, source=self.model_fingerprint, **index_params)
        self._indexed_images = images
        return self._image_index

    @torch.no_grad()
    def build_text_index(
        self, texts: Sequence[str], ids: Any = None, show_progress: bool = False, **index_params: Any
    ) -> EmbeddingIndex:
        """
        Index the text embeddings of candidate captions for `search_texts` (as `build_index`, for texts).

        Args:
            texts: the captions.
            ids: `(N,)` distinct integer ids that `search_texts` returns instead of positions in `texts`.
            show_progress: a progress bar over the captions encoded.
            **index_params: passed to `EmbeddingIndex.build`.
        """
        self._require_dual_encoder("build_text_index")
        if isinstance(texts, str) or len(texts) == 0 or not all(isinstance(t, str) for t in texts):
            raise ValueError("`texts` must be a non-empty list of strings.")
        texts = list(texts)
        vectors = []
        with tqdm(total=len(texts), desc="Indexing captions", unit="caption", disable=not show_progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                vectors.append(self._text_vectors(self._tokenize(texts[start : start + self.batch_size])))
                bar.update(len(vectors[-1]))
        self._text_index = EmbeddingIndex.build(torch.cat(vectors), ids=ids, source=self.model_fingerprint, **index_params)
        self._indexed_texts = texts
        return self._text_index

    @property
    def index(self) -> EmbeddingIndex | None:
        """The image index of `build_index` / `load_index` (None before)."""
        return self._image_index

    @property
    def text_index(self) -> EmbeddingIndex | None:
        """The caption index of `build_text_index` / `load_text_index` (None before)."""
        return self._text_index

    def save_index(self, folder: str | os.PathLike) -> None:
        """
        Write the image index to `folder` (`EmbeddingIndex.save`: safetensors + JSON, no pickle) and `gallery.json`:
        the image file paths when the gallery was given as paths (so `load_index(folder)` needs nothing else), else
        `null` (pass `images=` to `load_index`).
        """
        if self._image_index is None:
            raise ValueError("no image index to save: call build_index(images) first.")
        self._image_index.save(folder)
        paths = None
        if all(isinstance(image, (str, os.PathLike)) for image in self._indexed_images):
            paths = [os.fspath(image) for image in self._indexed_images]
        (Path(folder) / "gallery.json").write_text(json.dumps({"paths": paths}) + "\n")

    def load_index(
        self, folder: str | os.PathLike, images: Sequence[ImageInput] | None = None, backend: str = "auto"
    ) -> EmbeddingIndex:
        """
        Load an image index written by `save_index` (it must come from a model with the same embedding size).

        Args:
            folder: the folder.
            images: the indexed gallery, in the same order (default: the file paths saved in `gallery.json`).
            backend: as in `EmbeddingIndex.load`.

        Raises:
            FileNotFoundError / ValueError naming `folder` (see `EmbeddingIndex.load`), a size mismatch, an index built
                by other weights (`model_fingerprint`), or no images.
        """
        self._require_dual_encoder("load_index")
        index = self._load_checked(folder, backend)
        if images is None:
            gallery = Path(folder) / "gallery.json"
            try:
                images = json.loads(gallery.read_text())["paths"] if gallery.is_file() else None
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{str(gallery)!r} is not a gallery file: {error}") from error
            if images is None:
                raise ValueError(
                    f"the index in {str(folder)!r} was built from in-memory images: pass `images=` (the same gallery, "
                    "in the same order) to load_index."
                )
        if isinstance(images, (str, os.PathLike)) or len(images) != len(index):
            raise ValueError(f"the index in {str(folder)!r} has {len(index)} images; got a gallery of "
                             f"{1 if isinstance(images, (str, os.PathLike)) else len(images)}.")  # fmt: skip
        self._image_index, self._indexed_images = index, list(images)
        return index

    def save_text_index(self, folder: str | os.PathLike) -> None:
        """Write the caption index to `folder` (`EmbeddingIndex.save`) and the captions to `texts.json`."""
        if self._text_index is None:
            raise ValueError("no text index to save: call build_text_index(texts) first.")
        self._text_index.save(folder)
        (Path(folder) / "texts.json").write_text(json.dumps({"texts": self._indexed_texts}) + "\n")

    def load_text_index(self, folder: str | os.PathLike, backend: str = "auto") -> EmbeddingIndex:
        """Load a caption index written by `save_text_index` (captions from its `texts.json`)."""
        self._require_dual_encoder("load_text_index")
        index = self._load_checked(folder, backend)
        path = Path(folder) / "texts.json"
        try:
            texts = json.loads(path.read_text())["texts"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{str(path)!r} is missing or not a caption file: {error}") from error
        if not isinstance(texts, list) or len(texts) != len(index) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{str(path)!r} must list {len(index)} captions (the index's size).")
        self._text_index, self._indexed_texts = index, texts
        return index

    def _load_checked(self, folder: str | os.PathLike, backend: str) -> EmbeddingIndex:
        index = EmbeddingIndex.load(folder, backend=backend)
        self._check_index_source(index, folder)
        expected = self.model.config.contrastive_projection_dim
        if index.dim != expected:
            raise ValueError(
                f"the index in {str(folder)!r} holds {index.dim}-d vectors; this model's embeddings are {expected}-d."
            )
        return index

    def search_images(self, text: str, top_k: int = 10, first_stage_k: int = 100) -> RetrievalResult:
        """
        The `top_k` indexed images that best match `text`: the index's `first_stage_k` nearest to the text embedding,
        re-ranked by the cross-encoder. Equal to `rank_images(text, gallery, top_k)` with `rerank_top_n=None` when
        `first_stage_k >= len(gallery)` (and the index is exact or finds every item).

        Args:
            text: the query description.
            top_k: how many to return (fewer when the gallery is smaller).
            first_stage_k: candidates taken from the index (at least `top_k` are taken).

        Returns:
            `RetrievalResult`: `indices` are the index's ids (gallery positions unless `ids` were given), cross-encoder
            scores, best first (ties to the lower gallery position), `num_reranked` = candidates scored.
        """
        self._require_dual_encoder("search_images")
        _check_top_k(top_k)
        _check_first_stage_k(first_stage_k)
        if not isinstance(text, str):
            raise ValueError(f"`text` must be a string, got {type(text).__name__}.")
        if self._image_index is None:
            raise ValueError("no image index: call build_index(images) or load_index(folder) first.")
        encoded = self._tokenize([text])
        text_vector = self._text_vectors(encoded)[0]
        candidates = _first_stage(self._image_index, text_vector, max(first_stage_k, top_k))
        features, vectors = self.encode_images([self._indexed_images[p] for p in candidates.tolist()])
        similarity = vectors @ text_vector
        scores, log_odds = self._rerank_scores(
            encoded, features, torch.zeros_like(candidates), torch.arange(candidates.numel()), similarity
        )
        return self._finish(torch.from_numpy(self._image_index.ids)[candidates], scores, log_odds, similarity, top_k)

    def search_texts(self, image: ImageInput, top_k: int = 10, first_stage_k: int = 100) -> RetrievalResult:
        """
        The `top_k` indexed captions (`build_text_index`) that best describe `image`: the index's `first_stage_k`
        nearest to the image embedding, re-ranked by the cross-encoder (as `search_images`, the other way round).

        Returns:
            `RetrievalResult` with the caption index's ids (positions in its `texts` unless `ids` were given).
        """
        self._require_dual_encoder("search_texts")
        _check_top_k(top_k)
        _check_first_stage_k(first_stage_k)
        if self._text_index is None:
            raise ValueError("no text index: call build_text_index(texts) or load_text_index(folder) first.")
        features, vectors = self.encode_images([image])
        candidates = _first_stage(self._text_index, vectors[0], max(first_stage_k, top_k))
        encoded = self._tokenize([self._indexed_texts[p] for p in candidates.tolist()])
        similarity = self._text_vectors(encoded) @ vectors[0]
        scores, log_odds = self._rerank_scores(
            encoded, features, torch.arange(candidates.numel()), torch.zeros_like(candidates), similarity
        )
        return self._finish(torch.from_numpy(self._text_index.ids)[candidates], scores, log_odds, similarity, top_k)


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
        # Built by build_index (or loaded): the a^v index and the unit v_bar of each indexed video, same order/dtype.
        self._video_index: EmbeddingIndex | None = None
        self._video_bars: torch.Tensor | None = None

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
