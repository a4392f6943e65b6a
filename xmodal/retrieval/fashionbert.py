"""
FashionBERT's retrieval: `FashionRetriever` (cross-encoder ranking with cached patch features, the cheap pre-ranking,
image and caption indexes with dual-encoder heads) and its `RetrievalResult`. The overview is the `xmodal.retrieval`
package docstring.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoProcessor

# Importing the package registers the Auto classes, so saved folders load without trust_remote_code.
from xmodal.fashionbert import FashionBertForImageTextRetrieval, FashionBertProcessor
from xmodal.indexing import EmbeddingIndex

from .common import (
    ImageInput,
    _CachedRetriever,
    _check_first_stage_k,
    _check_top_k,
    _content_key,
    _first_stage,
    _pick_device,
    _quiet_transformers,
    _top_k,
)


# The first stage's candidates `search_images` / `search_texts` re-rank by default (app.py's --rerank_top_n): the
# smallest depth whose re-ranked top 10 keeps >= 95 % of the exhaustive top 10 (every catalogue image re-ranked by the
# fused score), measured on the quickstart's model over app.py's 10,000-product catalogue, 16 caption queries: depth 10
# keeps 57.5 %, 20 80.0 %, 30 89.4 %, 50 97.5 %, 100 and 200 100 % (bench/results/rerank_depth.json).
FIRST_STAGE_K = 50


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


# ---------------------------------------------------------------------------------------------------------------------
# FashionBERT
# ---------------------------------------------------------------------------------------------------------------------


class FashionRetriever(_CachedRetriever):
    """
    Text-to-image and image-to-text ranking with a FashionBERT checkpoint (cross-encoder, cached patch features,
    optional cheap pre-ranking, optional embedding indexes when the model has dual-encoder heads; see the
    `xmodal.retrieval` docstring).

    Args:
        model (`FashionBertForImageTextRetrieval`): the matcher (any FashionBERT checkpoint loads into it).
        processor (`FashionBertProcessor`): its image processor and tokenizer.
        rerank_top_n (`int` or `None`, *optional*, defaults to 100): galleries larger than this are pre-ranked cheaply
            and only the best `rerank_top_n` go through the cross-encoder; `None` always scores everything.
        batch_size (`int`, *optional*, defaults to 64): pairs per cross-encoder forward pass (and images per patch
            encoder pass).
        cache_size (`int`, *optional*, defaults to 100_000): images whose features are kept (least recently used
            dropped first).
        precision (`str`, *optional*, defaults to `"auto"`): `"auto"` runs the model (patch features, embeddings,
            cross-encoder) under bf16 autocast where its device computes bf16 natively (a CUDA GPU with bf16, a CPU with
            AVX-512-BF16 or AMX units) and in float32 elsewhere; `"bf16"` or `"float32"` forces one (`xmodal.precision`).
            Cached features, embeddings, similarities and scores are float32 either way.
    """

    def __init__(
        self,
        model: FashionBertForImageTextRetrieval,
        processor: FashionBertProcessor,
        rerank_top_n: int | None = 100,
        batch_size: int = 64,
        cache_size: int = 100_000,
        precision: str = "auto",
    ):
        if rerank_top_n is not None and (isinstance(rerank_top_n, bool) or rerank_top_n < 1):
            raise ValueError(f"`rerank_top_n` must be a positive int or None, got {rerank_top_n!r}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
        # Cached per image: (patch features (P, D) float32 CPU, first-stage vector float32 CPU: the image embedding
        # (contrastive_projection_dim,) with dual-encoder heads, else the heuristic's (hidden_size,)).
        super().__init__(model, cache_size, precision)
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
        precision: str = "auto",
        **kwargs,
    ) -> FashionRetriever:
        """
        Load a FashionBERT folder (e.g. `outputs/fashionbert/final`, what `python train.py` writes) or Hub repo id.

        The config and processor come through `AutoConfig` / `AutoProcessor` (registered by `import xmodal`); the
        weights load into `FashionBertForImageTextRetrieval` (a pretraining checkpoint's MLM/MPM heads are unused).

        Args:
            path: folder or repo id.
            rerank_top_n, batch_size, cache_size, precision: as in the class.
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
                   cache_size=cache_size, precision=precision)  # fmt: skip

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

    def _patch_batch(self, images: list[Any]) -> torch.Tensor:
        """Patch features of one batch of opened images, on the model's device (call under no_grad and `_autocast`)."""
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return self.model.bert.get_patch_features(pixel_values.to(self.model.device, self.model.dtype))

    @torch.no_grad()
    def _encode_uncached(self, images: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Patch features and first-stage vectors of `images`, in batches of `batch_size`."""
        bert = self.model.bert
        out = []
        for start in range(0, len(images), self.batch_size):
            with self._autocast():
                features = self._patch_batch(images[start : start + self.batch_size])
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
            patch feature (E = `hidden_size`; see the `xmodal.retrieval` docstring).
        """
        entries = self._cached(
            self._keys(images), lambda positions: self._encode_uncached([self._open(images[p], p) for p in positions])
        )
        return torch.stack([e[0] for e in entries]), torch.stack([e[1] for e in entries])

    def _keys(self, images: Sequence[ImageInput], prefix: str = "") -> list[str]:
        """The cache keys of `images` (`_content_key`), with errors that name the image."""
        if isinstance(images, (str, os.PathLike, PIL.Image.Image)) or len(images) == 0:
            raise ValueError("`images` must be a non-empty list of images (PIL images, arrays or file paths).")
        keys = []
        for index, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
                raise FileNotFoundError(f"image {index} ({str(image)!r}) is not a file.")
            try:
                keys.append(prefix + _content_key(image))
            except (OSError, TypeError, ValueError) as error:
                raise ValueError(f"image {index} ({type(image).__name__}) cannot be used: {error}") from error
        return keys

    @torch.no_grad()
    def _candidate_features(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """
        Patch features alone, `(N, num_patches, patch_feature_dim)` float32 CPU (cached under their own keys): what
        re-ranking indexed candidates needs, whose embeddings the index already holds.
        """

        def encode(positions: list[int]) -> list[torch.Tensor]:
            opened = [self._open(images[p], p) for p in positions]
            out = []
            for start in range(0, len(opened), self.batch_size):
                with self._autocast():
                    out.extend(self._patch_batch(opened[start : start + self.batch_size]).float().cpu())
            return out

        return torch.stack(self._cached(self._keys(images, prefix="patches:"), encode))

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
            with self._autocast():
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
        with self._autocast():
            log_odds = self.model.score_pairs(
                encoded["input_ids"],
                encoded["attention_mask"],
                features,
                torch.as_tensor(text_indices, dtype=torch.long),
                torch.as_tensor(image_indices, dtype=torch.long),
                token_type_ids=encoded.get("token_type_ids"),
                batch_size=self.batch_size,
            ).float()
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

    def search_images(self, text: str, top_k: int = 10, first_stage_k: int = FIRST_STAGE_K) -> RetrievalResult:
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
        # The candidates' embeddings come from the index: only their patch features are computed (or cached).
        features = self._candidate_features([self._indexed_images[p] for p in candidates.tolist()])
        similarity = self._image_index.get_vectors(candidates.numpy()) @ text_vector
        scores, log_odds = self._rerank_scores(
            encoded, features, torch.zeros_like(candidates), torch.arange(candidates.numel()), similarity
        )
        return self._finish(torch.from_numpy(self._image_index.ids)[candidates], scores, log_odds, similarity, top_k)

    def search_texts(self, image: ImageInput, top_k: int = 10, first_stage_k: int = FIRST_STAGE_K) -> RetrievalResult:
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
        similarity = self._text_index.get_vectors(candidates.numpy()) @ vectors[0]  # the captions' embeddings, indexed
        scores, log_odds = self._rerank_scores(
            encoded, features, torch.arange(candidates.numel()), torch.zeros_like(candidates), similarity
        )
        return self._finish(torch.from_numpy(self._text_index.ids)[candidates], scores, log_odds, similarity, top_k)
