"""xmodal.retrieval on tiny saved checkpoints: exact top-k against brute force, caching, two-stage ranking, errors."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from xmodal import MapIvrConfig, MapIvrModel
from xmodal.indexing import EmbeddingIndex, faiss_available
from xmodal.retrieval import ActivityRetriever, FashionRetriever

from tiny_fashionbert import golden_fashionbert_with_heads, save_tiny_fashionbert_folders, score_matrix

# Exactness tests: rankings compared with float32 brute force (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")


FAISS_MISSING = "faiss is not installed (`pip install faiss-cpu`, part of the `test` extra): faiss backend not tested"


GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
FASHIONBERT = GOLDEN / "fashionbert_pretraining"  # tiny: hidden 32, 2 layers, 16 px images, 4x4 patches
MAP_IVR = GOLDEN / "map_ivr"  # tiny: 6-d images, 8-d videos, with a fitted feature extractor
TEXTS = ["red dress", "blue coat with pockets", "a", "black leather jacket long sleeves", "white shirt", "grey skirt"]


def random_images(count: int, seed: int = 0, size: int = 20) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def fashion() -> FashionRetriever:
    return FashionRetriever.from_pretrained(FASHIONBERT, rerank_top_n=None, batch_size=4)


def brute_force_scores(retriever: FashionRetriever, texts: list[str], images: list[PIL.Image.Image]) -> torch.Tensor:
    """`(len(texts), len(images))` log-odds, one plain forward pass per pair from pixels."""
    scores = torch.empty(len(texts), len(images))
    with torch.no_grad():
        for t, text in enumerate(texts):
            for i, image in enumerate(images):
                inputs = retriever.processor(images=[image], text=[text], return_tensors="pt")
                inputs.pop("patch_mask")
                scores[t, i] = retriever.model(**inputs).logits[0]
    return scores


def expected_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices[:k]


def test_rank_images_is_the_exact_top_k_of_brute_force(fashion):
    images = random_images(7)
    result = fashion.rank_images(TEXTS[0], images, top_k=4)
    scores = brute_force_scores(fashion, [TEXTS[0]], images)[0]
    assert result.indices.tolist() == expected_top_k(scores, 4).tolist()
    torch.testing.assert_close(result.scores, scores[result.indices], rtol=1e-5, atol=1e-5)
    assert result.num_reranked == 7
    assert fashion.rank_images(TEXTS[0], images, top_k=50).indices.numel() == 7  # k capped at the gallery


def test_rank_texts_is_the_exact_top_k_of_brute_force(fashion):
    image = random_images(1, seed=3)[0]
    result = fashion.rank_texts(image, TEXTS, top_k=3)
    scores = brute_force_scores(fashion, TEXTS, [image])[:, 0]
    assert result.indices.tolist() == expected_top_k(scores, 3).tolist()
    torch.testing.assert_close(result.scores, scores[result.indices], rtol=1e-5, atol=1e-5)


def test_gallery_features_are_computed_once_and_cached(monkeypatch):
    retriever = FashionRetriever.from_pretrained(FASHIONBERT, batch_size=4)
    encoded = []
    original = retriever.model.bert.get_patch_features

    def counting(pixel_values, *args, **kwargs):
        encoded.append(pixel_values.shape[0])
        return original(pixel_values, *args, **kwargs)

    monkeypatch.setattr(retriever.model.bert, "get_patch_features", counting)
    images = random_images(6)
    first = retriever.rank_images(TEXTS[1], images, top_k=3)
    assert encoded == [4, 2]  # 6 images in batches of 4
    second = retriever.rank_images(TEXTS[3], images, top_k=3)
    retriever.rank_texts(images[2], TEXTS, top_k=2)
    copies = [image.copy() for image in images]  # equal content, other objects: still cached
    again = retriever.rank_images(TEXTS[1], copies, top_k=3)
    assert encoded == [4, 2]
    assert torch.equal(first.indices, again.indices) and torch.equal(first.scores, again.scores)
    assert second.indices.numel() == 3
    retriever.rank_images(TEXTS[1], images + random_images(1, seed=9), top_k=3)
    assert encoded == [4, 2, 1]  # only the new image
    retriever.clear_cache()
    retriever.rank_images(TEXTS[1], images[:1], top_k=1)
    assert encoded == [4, 2, 1, 1]


def test_image_file_paths_are_cached_like_images(fashion, tmp_path):
    images = random_images(3, seed=5)
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    from_paths = fashion.rank_images(TEXTS[4], paths, top_k=3)
    from_images = fashion.rank_images(TEXTS[4], images, top_k=3)
    assert torch.equal(from_paths.indices, from_images.indices)
    torch.testing.assert_close(from_paths.scores, from_images.scores, rtol=0, atol=0)


def test_two_stage_equals_full_reranking_when_rerank_top_n_covers_the_gallery(fashion):
    images = random_images(7, seed=1)
    full = fashion.rank_images(TEXTS[3], images, top_k=5)
    covered = FashionRetriever(fashion.model, fashion.processor, rerank_top_n=7).rank_images(TEXTS[3], images, top_k=5)
    assert covered.num_reranked == 7
    assert torch.equal(covered.indices, full.indices)
    # Same pairs, scored in other batches: equal up to the last bits of the matrix products (thread-count dependent).
    torch.testing.assert_close(covered.scores, full.scores, rtol=1e-5, atol=1e-5)
    texts_full = fashion.rank_texts(images[0], TEXTS, top_k=4)
    texts_covered = FashionRetriever(fashion.model, fashion.processor, rerank_top_n=6).rank_texts(images[0], TEXTS, top_k=4)
    assert torch.equal(texts_covered.indices, texts_full.indices)


def test_two_stage_reranks_the_cheap_pre_ranking_top_n(fashion):
    images = random_images(7, seed=2)
    two_stage = FashionRetriever(fashion.model, fashion.processor, rerank_top_n=3).rank_images(TEXTS[3], images, top_k=2)
    assert two_stage.num_reranked == 3
    # Stage 1 by hand: cosine of the mean word embedding of the real tokens and the mean projected patch feature.
    bert = fashion.model.bert
    with torch.no_grad():
        ids = fashion.processor(text=[TEXTS[3]], return_tensors="pt")["input_ids"][0][1:-1]  # drop [CLS], [SEP]
        text_vector = bert.embeddings.word_embeddings(ids).mean(0)
        pixels = fashion.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        image_vectors = bert.patch_embeddings.projection(bert.get_patch_features(pixels)).mean(1)
        prescores = F.cosine_similarity(image_vectors, text_vector[None], dim=-1)
    candidates = set(torch.sort(prescores, descending=True, stable=True).indices[:3].tolist())
    full = brute_force_scores(fashion, [TEXTS[3]], images)[0]
    expected = sorted(candidates, key=lambda i: (-full[i].item(), i))[:2]
    assert two_stage.indices.tolist() == expected
    torch.testing.assert_close(two_stage.scores, full[two_stage.indices], rtol=1e-5, atol=1e-5)


def test_fashion_errors_name_the_problem(fashion, tmp_path):
    with pytest.raises(FileNotFoundError, match="outputs/missing/final"):
        FashionRetriever.from_pretrained("outputs/missing/final")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        FashionRetriever.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="is a 'map_ivr' model, not 'fashionbert'"):
        FashionRetriever.from_pretrained(MAP_IVR)
    with pytest.raises(ValueError, match="top_k"):
        fashion.rank_images("dress", random_images(2), top_k=0)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        fashion.rank_images("dress", [str(tmp_path / "nope.png")])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        fashion.rank_images("dress", [str(tmp_path / "broken.png")])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        fashion.rank_texts(random_images(1)[0], "one string")


# ------------------------------------------------------------------------------------------------------------ MAP-IVR


def activity_features(seed: int = 0, num_videos: int = 9):
    rng = np.random.default_rng(seed)
    return rng.normal(size=6).astype(np.float32), rng.normal(size=(num_videos, 3, 8)).astype(np.float32)


def test_rank_videos_matches_brute_force_scores():
    retriever = ActivityRetriever.from_pretrained(MAP_IVR, seed=7)
    query, videos = activity_features()
    result = retriever.rank_videos(query, videos, top_k=4, lambda_v=0.3, num_samples=5)

    image_inputs = retriever.feature_extractor(image_features=query[None], return_tensors="pt")
    video_inputs = retriever.feature_extractor(video_features=videos, return_tensors="pt")
    generator = torch.Generator().manual_seed(7)
    scores = retriever.model.score(
        image_inputs["image_features"], video_inputs["video_features"], num_samples=5, lambda_v=0.3,
        generator=generator, proposal_mask=video_inputs.get("proposal_mask"),
    )  # fmt: skip
    s_all = scores.s_all[0]
    best = torch.sort(s_all, stable=True).indices[:4]
    assert result.indices.tolist() == best.tolist()
    torch.testing.assert_close(result.s_all, s_all[best], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.s_a, scores.s_a[0, best], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.s_v, scores.s_v[0, best], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.s_all, 0.7 * result.s_a + 0.3 * result.s_v, rtol=1e-6, atol=1e-6)
    assert torch.equal(result.scores, result.s_all)
    assert (result.lambda_v, result.num_samples) == (0.3, 5)
    # lambda_v = 0 ranks by S_A alone.
    by_appearance = retriever.rank_videos(query, videos, top_k=9, lambda_v=0.0)
    assert by_appearance.indices.tolist() == torch.sort(scores.s_a[0], stable=True).indices.tolist()


def test_video_gallery_is_encoded_once_and_scores_are_repeatable(monkeypatch):
    retriever = ActivityRetriever.from_pretrained(MAP_IVR)
    calls = []
    original = retriever.model.encode_videos
    monkeypatch.setattr(retriever.model, "encode_videos", lambda *a, **k: calls.append(1) or original(*a, **k))
    query, videos = activity_features()
    first = retriever.rank_videos(query, videos, top_k=3)
    second = retriever.rank_videos(query, videos.copy(), top_k=3)
    assert len(calls) == 1
    assert torch.equal(first.indices, second.indices) and torch.equal(first.s_all, second.s_all)
    retriever.rank_videos(query, videos[:5], top_k=3)
    assert len(calls) == 2


def test_activity_checkpoint_without_feature_extractor_uses_raw_features(tmp_path):
    torch.manual_seed(0)
    config = MapIvrConfig(
        image_feature_dim=6, video_feature_dim=8, appearance_dim=4, motion_dim=4, latent_dim=3,
        encoder_hidden_sizes=[5], decoder_hidden_sizes=[7], num_labels=3, num_samples=4,
    )  # fmt: skip
    MapIvrModel(config).save_pretrained(tmp_path / "raw")
    retriever = ActivityRetriever.from_pretrained(tmp_path / "raw")
    assert retriever.feature_extractor is None
    query, videos = activity_features(num_videos=5)
    result = retriever.rank_videos(query, videos, top_k=5)
    scores = retriever.model.score(query[None], videos, generator=torch.Generator().manual_seed(0))
    assert result.indices.tolist() == torch.sort(scores.s_all[0], stable=True).indices.tolist()


def test_activity_errors_name_the_problem():
    with pytest.raises(ValueError, match="is a 'fashionbert' model, not 'map_ivr'"):
        ActivityRetriever.from_pretrained(FASHIONBERT)
    retriever = ActivityRetriever.from_pretrained(MAP_IVR)
    query, videos = activity_features()
    with pytest.raises(ValueError, match="one query"):
        retriever.rank_videos(np.stack([query, query]), videos)
    with pytest.raises(ValueError, match="num_samples"):
        retriever.rank_videos(query, videos, num_samples=0)
    with pytest.raises(ValueError, match="lambda_v"):
        retriever.rank_videos(query, videos, lambda_v=1.5)


# ------------------------------------------------------------------------------- indexed search (dual-encoder heads)

BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason=FAISS_MISSING))]


@pytest.fixture(scope="module")
def dual() -> FashionRetriever:
    """The tiny golden FashionBERT with (randomly initialised) dual-encoder heads: contrastive_projection_dim=8."""
    model, processor = golden_fashionbert_with_heads(projection_dim=8)
    return FashionRetriever(model, processor, rerank_top_n=None, batch_size=4)


def test_rank_images_pre_ranks_with_the_trained_embeddings_when_the_model_has_heads(dual):
    images = random_images(7, seed=2)
    two_stage = FashionRetriever(dual.model, dual.processor, rerank_top_n=3).rank_images(TEXTS[3], images, top_k=2)
    assert two_stage.num_reranked == 3
    bert = dual.model.bert
    with torch.no_grad():
        encoded = dual.processor(text=[TEXTS[3]], return_tensors="pt")
        text = bert.get_text_embeddings(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))
        pixels = dual.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        prescores = bert.get_image_embeddings(pixel_values=pixels) @ text[0]
    candidates = set(torch.sort(prescores, descending=True, stable=True).indices[:3].tolist())
    full = brute_force_scores(dual, [TEXTS[3]], images)[0]
    assert two_stage.indices.tolist() == sorted(candidates, key=lambda i: (-full[i].item(), i))[:2]
    torch.testing.assert_close(two_stage.scores, full[two_stage.indices], rtol=1e-5, atol=1e-5)


def test_a_fusion_weight_saved_in_the_config_ranks_every_search_by_the_fused_score(tmp_path):
    saved = save_tiny_fashionbert_folders(tmp_path)
    retriever = FashionRetriever.from_pretrained(tmp_path / "fashionbert_fused", rerank_top_n=None, batch_size=4)
    assert retriever.model.config.fusion_weight == saved["fused"].config.fusion_weight == 0.4  # through config.json
    images = random_images(6, seed=8, size=16)
    expected = score_matrix(saved["fused"], saved["processor"], TEXTS, images)
    for t, text in enumerate(TEXTS):
        ranked = retriever.rank_images(text, images, top_k=6)
        assert ranked.indices.tolist() == expected_top_k(expected[t], 6).tolist()
        torch.testing.assert_close(ranked.scores, expected[t, ranked.indices], rtol=1e-5, atol=1e-5)
        # scores = (1 - w) * exp(logit_scale) * similarity + w * log_odds, with both parts reported
        scale = retriever.model.bert.logit_scale.exp()
        torch.testing.assert_close(ranked.scores, 0.6 * scale * ranked.similarity + 0.4 * ranked.log_odds, rtol=1e-5, atol=1e-5)
    texts_ranked = retriever.rank_texts(images[2], TEXTS, top_k=3)
    torch.testing.assert_close(texts_ranked.scores, expected[texts_ranked.indices, 2], rtol=1e-5, atol=1e-5)
    retriever.build_index(images, backend="torch")  # the indexed search fuses the same way
    searched = retriever.search_images(TEXTS[1], top_k=4, first_stage_k=6)
    torch.testing.assert_close(searched.scores, expected[1, searched.indices], rtol=1e-5, atol=1e-5)
    retriever.build_text_index(TEXTS, backend="torch")
    searched = retriever.search_texts(images[3], top_k=2, first_stage_k=len(TEXTS))
    torch.testing.assert_close(searched.scores, expected[searched.indices, 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_images_equals_exhaustive_ranking_when_first_stage_covers_the_gallery(dual, backend):
    images = random_images(9, seed=4)
    index = dual.build_index(images, backend=backend)
    assert (len(index), index.dim, index.backend) == (9, 8, backend)
    for text in TEXTS[:3]:
        exhaustive = dual.rank_images(text, images, top_k=5)
        searched = dual.search_images(text, top_k=5, first_stage_k=9)
        assert searched.num_reranked == 9
        assert searched.indices.tolist() == exhaustive.indices.tolist()
        torch.testing.assert_close(searched.scores, exhaustive.scores, rtol=1e-5, atol=1e-5)
    # A smaller first stage re-ranks the embedding's nearest only.
    partial = dual.search_images(TEXTS[0], top_k=2, first_stage_k=4)
    assert partial.num_reranked == 4 and partial.indices.numel() == 2


def test_search_images_returns_ids_and_the_index_round_trips(dual, tmp_path):
    images = random_images(6, seed=6)
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    ids = np.array([50, 10, 40, 20, 60, 30])
    dual.build_index(paths, ids=ids)
    before = dual.search_images(TEXTS[1], top_k=6, first_stage_k=6)
    exhaustive = dual.rank_images(TEXTS[1], images, top_k=6)
    assert before.indices.tolist() == ids[exhaustive.indices.numpy()].tolist()
    dual.save_index(tmp_path / "index")
    assert not any(p.suffix in (".pkl", ".bin", ".pt") for p in (tmp_path / "index").iterdir())
    other = FashionRetriever(dual.model, dual.processor, batch_size=4)
    other.load_index(tmp_path / "index")  # the gallery's paths come from gallery.json
    after = other.search_images(TEXTS[1], top_k=6, first_stage_k=6)
    assert after.indices.tolist() == before.indices.tolist()
    torch.testing.assert_close(after.scores, before.scores, rtol=1e-5, atol=1e-5)
    # An in-memory gallery needs its images again.
    dual.build_index(images)
    dual.save_index(tmp_path / "memory")
    with pytest.raises(ValueError, match="pass `images=`"):
        other.load_index(tmp_path / "memory")
    with pytest.raises(ValueError, match="has 6 images; got a gallery of 2"):
        other.load_index(tmp_path / "memory", images=images[:2])
    other.load_index(tmp_path / "memory", images=images)
    assert other.search_images(TEXTS[2], top_k=3, first_stage_k=6).indices.tolist() == (
        dual.rank_images(TEXTS[2], images, top_k=3).indices.tolist()
    )


def test_an_index_built_by_other_weights_is_refused(dual, tmp_path):
    """Indexes record the model's fingerprint; another model's queries would not be comparable with them."""
    images = random_images(4, seed=9)
    dual.build_index(images)
    dual.build_text_index(TEXTS)
    assert dual.index.source == dual.text_index.source == dual.model_fingerprint
    assert dual.model_fingerprint.startswith("sha256:") and len(dual.model_fingerprint) == 7 + 64
    dual.save_index(tmp_path / "images")
    dual.save_text_index(tmp_path / "texts")
    same = FashionRetriever(dual.model, dual.processor)
    assert same.model_fingerprint == dual.model_fingerprint
    same.load_index(tmp_path / "images", images=images)
    other_model, processor = golden_fashionbert_with_heads(projection_dim=8, seed=1)  # other heads, same sizes
    other = FashionRetriever(other_model, processor)
    assert other.model_fingerprint != dual.model_fingerprint
    with pytest.raises(ValueError, match="was built by another model"):
        other.load_index(tmp_path / "images", images=images)
    with pytest.raises(ValueError, match="was built by another model"):
        other.load_text_index(tmp_path / "texts")


def test_search_texts_equals_exhaustive_ranking_when_first_stage_covers_the_captions(dual, tmp_path):
    image = random_images(1, seed=8)[0]
    dual.build_text_index(TEXTS)
    exhaustive = dual.rank_texts(image, TEXTS, top_k=4)
    searched = dual.search_texts(image, top_k=4, first_stage_k=len(TEXTS))
    assert searched.indices.tolist() == exhaustive.indices.tolist()
    torch.testing.assert_close(searched.scores, exhaustive.scores, rtol=1e-5, atol=1e-5)
    dual.save_text_index(tmp_path / "texts")
    other = FashionRetriever(dual.model, dual.processor, batch_size=4)
    other.load_text_index(tmp_path / "texts")
    assert other.search_texts(image, top_k=4, first_stage_k=6).indices.tolist() == exhaustive.indices.tolist()


def test_threads_searching_one_retriever_get_what_one_thread_gets(dual):
    from concurrent.futures import ThreadPoolExecutor

    images = random_images(12, seed=5)
    # A cache smaller than the candidates: threads evict each other's entries while they search (a served demo).
    retriever = FashionRetriever(dual.model, dual.processor, batch_size=4, cache_size=3)
    retriever.build_index(images)
    queries = TEXTS * 4
    alone = [retriever.search_images(q, top_k=4, first_stage_k=6).indices.tolist() for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda q: retriever.search_images(q, top_k=4, first_stage_k=6).indices.tolist(), queries))
    assert together == alone
    assert len(retriever._cache) <= 3


def test_indexed_search_errors(dual, fashion, tmp_path):
    images = random_images(3)
    for call in (
        lambda: fashion.build_index(images),
        lambda: fashion.search_images("dress"),
        lambda: fashion.build_text_index(TEXTS),
        lambda: fashion.load_index(tmp_path),
    ):
        with pytest.raises(ValueError, match="--contrastive_projection_dim"):
            call()
    fresh = FashionRetriever(dual.model, dual.processor, batch_size=4)
    with pytest.raises(ValueError, match="call build_index"):
        fresh.search_images("dress")
    with pytest.raises(ValueError, match="call build_text_index"):
        fresh.search_texts(images[0])
    with pytest.raises(ValueError, match="call build_index"):
        fresh.save_index(tmp_path / "nothing")
    fresh.build_index(images)
    with pytest.raises(ValueError, match="first_stage_k"):
        fresh.search_images("dress", first_stage_k=0)
    with pytest.raises(ValueError, match="top_k"):
        fresh.search_images("dress", top_k=0)
    with pytest.raises(FileNotFoundError, match="no index.json"):
        fresh.load_index(tmp_path, images=images)
    EmbeddingIndex.build(np.eye(4, dtype=np.float32), backend="torch").save(tmp_path / "other_dim")
    with pytest.raises(ValueError, match="4-d vectors; this model's embeddings are 8-d"):
        fresh.load_index(tmp_path / "other_dim", images=images[:1] * 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_videos_equals_rank_videos_when_first_stage_covers_the_gallery(backend):
    retriever = ActivityRetriever.from_pretrained(MAP_IVR, seed=3)
    _, videos = activity_features(num_videos=12)
    index = retriever.build_index(videos, backend=backend)
    assert (len(index), index.dim, index.backend) == (12, retriever.model.config.appearance_dim, backend)
    for seed in range(3):
        query, _ = activity_features(seed=seed + 10)
        exhaustive = retriever.rank_videos(query, videos, top_k=5, lambda_v=0.4, num_samples=6)
        searched = retriever.search_videos(query, top_k=5, first_stage_k=12, lambda_v=0.4, num_samples=6)
        assert searched.indices.tolist() == exhaustive.indices.tolist()
        for field in ("scores", "s_a", "s_v", "s_all"):
            torch.testing.assert_close(getattr(searched, field), getattr(exhaustive, field), rtol=1e-6, atol=1e-6)
        assert (searched.lambda_v, searched.num_samples) == (0.4, 6)


def test_search_videos_recall_and_s_a_first_stage():
    retriever = ActivityRetriever.from_pretrained(MAP_IVR)
    _, videos = activity_features(seed=1, num_videos=40)
    retriever.build_index(videos, backend="torch")
    recalls = []
    for seed in range(5):
        query, _ = activity_features(seed=seed + 20)
        # lambda_v = 0 ranks by S_A alone, which the index ranks exactly: any first stage >= top_k is exact.
        by_appearance = retriever.rank_videos(query, videos, top_k=5, lambda_v=0.0)
        assert retriever.search_videos(query, top_k=5, first_stage_k=5, lambda_v=0.0).indices.tolist() == (
            by_appearance.indices.tolist()
        )
        exhaustive = set(retriever.rank_videos(query, videos, top_k=5, lambda_v=0.5).indices.tolist())
        searched = retriever.search_videos(query, top_k=5, first_stage_k=20, lambda_v=0.5)
        assert searched.indices.numel() == 5
        recalls.append(len(exhaustive & set(searched.indices.tolist())) / 5)
    assert np.mean(recalls) >= 0.8, recalls  # half the gallery by S_A keeps most of the S_all top 5 (measured 0.92)


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_index_float16_round_trip(tmp_path, backend):
    retriever = ActivityRetriever.from_pretrained(MAP_IVR, seed=5)
    query, videos = activity_features(seed=2, num_videos=10)
    ids = np.arange(10) + 100
    retriever.build_index(videos, dtype="float16", ids=ids, backend=backend)
    assert retriever.index.dtype == "float16"
    before = retriever.search_videos(query, top_k=4, first_stage_k=10)
    exact = retriever.rank_videos(query, videos, top_k=10)
    torch.testing.assert_close(before.s_all, exact.s_all[: 4], rtol=0, atol=2e-3)  # fp16 codes: ~1e-3 off
    assert set(before.indices.tolist()) <= set((exact.indices[:6] + 100).tolist())
    retriever.save_index(tmp_path / "videos")
    names = {p.name for p in (tmp_path / "videos").iterdir()}
    assert {"index.json", "vectors.safetensors", "video_features.safetensors"} <= names
    assert not any(name.endswith((".pkl", ".bin", ".pt")) for name in names)
    with safe_open(str(tmp_path / "videos" / "video_features.safetensors"), framework="pt") as file:
        assert file.get_tensor("video_features").dtype == torch.float16
    other = ActivityRetriever.from_pretrained(MAP_IVR, seed=5)
    other.load_index(tmp_path / "videos")
    after = other.search_videos(query, top_k=4, first_stage_k=10)
    assert after.indices.tolist() == before.indices.tolist()
    torch.testing.assert_close(after.s_all, before.s_all, rtol=0, atol=0)


def test_video_index_errors(tmp_path):
    retriever = ActivityRetriever.from_pretrained(MAP_IVR)
    query, videos = activity_features()
    with pytest.raises(ValueError, match="call build_index"):
        retriever.search_videos(query)
    with pytest.raises(ValueError, match="dtype"):
        retriever.build_index(videos, dtype="int8")
    retriever.build_index(videos)
    with pytest.raises(ValueError, match="first_stage_k"):
        retriever.search_videos(query, first_stage_k=0)
    with pytest.raises(ValueError, match="one query"):
        retriever.search_videos(np.stack([query, query]))
    with pytest.raises(ValueError, match="lambda_v"):
        retriever.search_videos(query, lambda_v=-0.1)
    retriever.save_index(tmp_path / "videos")
    (tmp_path / "videos" / "video_features.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no video_features.safetensors"):
        retriever.load_index(tmp_path / "videos")
    EmbeddingIndex.build(np.eye(3, dtype=np.float32), backend="torch").save(tmp_path / "other")
    with pytest.raises(ValueError, match="3-d codes"):
        retriever.load_index(tmp_path / "other")
    # An index from other MAP-IVR weights (same sizes) is refused by its fingerprint.
    retriever.build_index(videos)
    retriever.save_index(tmp_path / "videos")
    other = ActivityRetriever.from_pretrained(MAP_IVR)
    with torch.no_grad():
        next(other.model.parameters())[0, 0] += 1e-3  # one weight differs
    with pytest.raises(ValueError, match="was built by another model"):
        other.load_index(tmp_path / "videos")
