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
retriever.search_images("red silk dress", top_k=10)        # re-ranks the index's 50 nearest (FIRST_STAGE_K)
```

MAP-IVR is a dual encoder: `ActivityRetriever` encodes the video gallery once (`MapIvrModel.encode_videos`, cached by
content) and ranks with S_A, S_V and S_all (`MapIvrModel.score`). Its inputs are precomputed features, normalised by
the checkpoint's `MapIvrFeatureExtractor` when the folder has one. For large galleries, `ActivityRetriever.build_index`
indexes the unit-length appearance codes a^v (S_A = 1 - cos(a^u, a^v) = 1 - inner product, so an inner-product index
ranks exactly by S_A) and `search_videos` scores S_V / S_all exactly on the index's `first_stage_k` closest videos
under S_A only.
The code, one module per model as the model folders (`xmodal/fashionbert/`, `xmodal/map_ivr/`):
`xmodal/retrieval/common.py` (what both retrievers share: `load_checkpoint_config`, content keys, top-k and argument
checks, the least-recently-used cache of encodings, the model fingerprint and the index's first stage),
`xmodal/retrieval/fashionbert.py` (`FashionRetriever`, `RetrievalResult`) and `xmodal/retrieval/map_ivr.py`
(`ActivityRetriever`, `ActivityRetrievalResult`).
"""

from .common import load_checkpoint_config
from .fashionbert import FashionRetriever, RetrievalResult
from .map_ivr import ActivityRetrievalResult, ActivityRetriever


__all__ = [
    "ActivityRetrievalResult",
    "ActivityRetriever",
    "FashionRetriever",
    "RetrievalResult",
    "load_checkpoint_config",
]
