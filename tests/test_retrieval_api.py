"""xmodal.retrieval on tiny saved checkpoints: exact top-k against brute force, caching, two-stage ranking, errors."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from xmodal import MapIvrConfig, MapIvrModel
from xmodal.retrieval import ActivityRetriever, FashionRetriever


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
