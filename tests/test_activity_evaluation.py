"""mAP@K of activity image-to-video retrieval, its `evaluate` module, and the MAP-IVR evaluation loop."""

import math
import os

import numpy as np
import pytest
import torch

from xmodal.evaluation.activity_retrieval import (
    average_precision_at_k,
    evaluate_activity_retrieval,
    mean_average_precision_at_k,
)

# Exactness tests: metrics compared with float32 hand computations (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")


METRIC_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "xmodal", "evaluation", "metrics", "activity_map")


def test_map_matches_hand_computation():
    # gallery labels:      0    1    0    1    0
    gallery = np.array([0, 1, 0, 1, 0])
    distances = np.array(
        [
            [0.5, 0.1, 0.2, 0.9, 0.7],  # query class 0 -> order 1,2,0,4,3 -> rel 0,1,1,1,0
            [0.3, 0.8, 0.1, 0.2, 0.6],  # query class 1 -> order 2,3,0,4,1 -> rel 0,1,0,0,1
        ]
    )
    queries = np.array([0, 1])
    result = mean_average_precision_at_k(distances, queries, gallery, ks=(1, 2, 3, 5), return_per_query=True)
    # query 0: hits at ranks 2, 3, 4 -> P@2 = 1/2, P@3 = 2/3, P@4 = 3/4
    q0 = {1: 0.0, 2: 0.5, 3: (1 / 2 + 2 / 3) / 2, 5: (1 / 2 + 2 / 3 + 3 / 4) / 3}
    # query 1: hits at ranks 2 and 5 -> P@2 = 1/2, P@5 = 2/5
    q1 = {1: 0.0, 2: 0.5, 3: 0.5, 5: (1 / 2 + 2 / 5) / 2}
    for k in (1, 2, 3, 5):
        assert result["per_query"][k][0] == pytest.approx(q0[k], abs=1e-12)
        assert result["per_query"][k][1] == pytest.approx(q1[k], abs=1e-12)
        assert result[f"mAP@{k}"] == pytest.approx((q0[k] + q1[k]) / 2, abs=1e-12)
    assert result["num_queries"] == 2 and result["num_gallery"] == 5


def test_relevant_normalization_divides_by_min_k_and_relevant_count():
    gallery = np.array([0, 1, 0, 1, 0])
    distances = np.array([[0.5, 0.1, 0.2, 0.9, 0.7]])  # rel at ranks 2, 3, 4; R = 3
    result = mean_average_precision_at_k(distances, [0], gallery, ks=(2, 5), normalization="relevant")
    assert result["mAP@2"] == pytest.approx((1 / 2) / 2)  # min(2, 3) = 2
    assert result["mAP@5"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    hits = mean_average_precision_at_k(distances, [0], gallery, ks=(2, 5))
    assert result["mAP@2"] <= hits["mAP@2"]


def test_ties_are_broken_by_gallery_index():
    gallery = np.array([1, 0, 0, 1])
    # all four tied: order 0,1,2,3 -> for query class 0: rel 0,1,1,0
    distances = np.zeros((1, 4))
    result = mean_average_precision_at_k(distances, [0], gallery, ks=(1, 2, 4))
    assert result["mAP@1"] == 0.0
    assert result["mAP@2"] == pytest.approx(0.5)
    assert result["mAP@4"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # a partial tie: videos 0 and 2 tied at the front -> order 0, 2, 1, 3
    distances = np.array([[0.1, 0.5, 0.1, 0.9]])
    result = mean_average_precision_at_k(distances, [0], gallery, ks=(1, 2))
    assert result["mAP@1"] == 0.0
    assert result["mAP@2"] == pytest.approx(0.5)


def test_no_relevant_video_in_top_k_gives_zero():
    gallery = np.array([1, 1, 1, 0])
    distances = np.array([[0.1, 0.2, 0.3, 0.4]])
    result = mean_average_precision_at_k(distances, [0], gallery, ks=(3, 4))
    assert result["mAP@3"] == 0.0
    assert result["mAP@4"] == pytest.approx(1 / 4)
    # a class absent from the gallery: 0 at every K under both normalisations
    for normalization in ("hits", "relevant"):
        result = mean_average_precision_at_k(distances, [7], gallery, ks=(1, 4), normalization=normalization)
        assert result["mAP@1"] == 0.0 and result["mAP@4"] == 0.0


def test_perfect_ranking_gives_one():
    rng = np.random.default_rng(0)
    gallery = np.repeat(np.arange(5), 30)
    queries = rng.integers(0, 5, size=40)
    distances = (gallery[None, :] != queries[:, None]).astype(float) + 0.01 * rng.random((40, 150))
    for normalization in ("hits", "relevant"):
        result = mean_average_precision_at_k(distances, queries, gallery, normalization=normalization)
        for k in (10, 20, 50, 100):  # all 30 relevant videos come first, so min(K, R) = hits too
            assert result[f"mAP@{k}"] == pytest.approx(1.0)


def _expected_random_ap(k: int, num_gallery: int, num_relevant: int) -> float:
    """E[AP@K] ("hits") under a uniformly random ranking.

    Given h hits in the top K, hit positions are a uniform h-subset of 1..K, so
    E[AP | h] = (1/h) sum_r (1/r) E[rel_r (1 + hits before r)] = H_K / K + (h - 1)(K - H_K) / (K (K - 1)),
    with H_K the K-th harmonic number; h is hypergeometric.
    """
    harmonic = sum(1 / r for r in range(1, k + 1))
    total = 0.0
    for h in range(1, min(k, num_relevant) + 1):
        p = math.comb(num_relevant, h) * math.comb(num_gallery - num_relevant, k - h) / math.comb(num_gallery, k)
        conditional = harmonic / k + ((h - 1) * (k - harmonic) / (k * (k - 1)) if k > 1 else 0.0)
        total += p * conditional
    return total


def test_random_ranking_matches_expected_value():
    rng = np.random.default_rng(0)
    num_classes, per_class, num_queries = 10, 20, 4000
    gallery = np.repeat(np.arange(num_classes), per_class)
    queries = rng.integers(0, num_classes, size=num_queries)
    distances = rng.random((num_queries, len(gallery)))
    result = mean_average_precision_at_k(distances, queries, gallery, return_per_query=True)
    for k in (10, 20, 50, 100):
        expected = _expected_random_ap(k, len(gallery), per_class)
        stderr = result["per_query"][k].std() / math.sqrt(num_queries)
        assert abs(result[f"mAP@{k}"] - expected) < 4 * stderr, (k, result[f"mAP@{k}"], expected)
    # the closed form itself, checked against a brute-force enumeration on a tiny gallery
    tiny = mean_average_precision_at_k(
        np.array([list(p) for p in __import__("itertools").permutations(range(5))], dtype=float),
        np.zeros(120, dtype=int),
        np.array([0, 0, 1, 1, 1]),
        ks=(3,),
    )
    assert tiny["mAP@3"] == pytest.approx(_expected_random_ap(3, 5, 2))


def test_rankings_input_equals_distances_input():
    rng = np.random.default_rng(1)
    gallery = rng.integers(0, 4, size=60)
    queries = rng.integers(0, 4, size=12)
    distances = rng.random((12, 60))
    order = np.argsort(distances, axis=1, kind="stable")
    from_distances = mean_average_precision_at_k(distances, queries, gallery, ks=(5, 10, 100))
    assert mean_average_precision_at_k(rankings=order, query_labels=queries, gallery_labels=gallery, ks=(5, 10, 100)) == from_distances
    # a top-10 ranking (as from MapIvrModel.rank) gives the same mAP@5 and mAP@10
    top = mean_average_precision_at_k(rankings=order[:, :10], query_labels=queries, gallery_labels=gallery, ks=(5, 10))
    assert top["mAP@5"] == from_distances["mAP@5"] and top["mAP@10"] == from_distances["mAP@10"]
    # torch tensors are accepted
    assert mean_average_precision_at_k(torch.from_numpy(distances), torch.from_numpy(queries), gallery, ks=(5, 10, 100)) == from_distances


def test_k_larger_than_gallery_uses_the_whole_gallery():
    gallery = np.array([0, 1, 0])
    distances = np.array([[0.3, 0.1, 0.2]])  # order 1, 2, 0 -> rel 0, 1, 1
    result = mean_average_precision_at_k(distances, [0], gallery, ks=(3, 100))
    assert result["mAP@3"] == result["mAP@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_average_precision_at_k_from_relevance():
    relevance = np.array([[True, False, True], [False, False, False]])
    ap = average_precision_at_k(relevance, ks=(1, 3))
    np.testing.assert_allclose(ap[1], [1.0, 0.0])
    np.testing.assert_allclose(ap[3], [(1 + 2 / 3) / 2, 0.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distances=np.array([[0.1, np.nan]]), query_labels=[0], gallery_labels=[0, 1]), "NaN"),
        (dict(distances=np.zeros((2, 3)), query_labels=[0], gallery_labels=[0, 1, 0]), "shape"),
        (dict(distances=np.zeros((1, 2)), query_labels=[0], gallery_labels=[0, 1], ks=(0,)), "ks"),
        (dict(query_labels=[0], gallery_labels=[0, 1]), "exactly one"),
        (dict(rankings=np.array([[0, 0]]), query_labels=[0], gallery_labels=[0, 1]), "twice"),
        (dict(rankings=np.array([[0, 5]]), query_labels=[0], gallery_labels=[0, 1]), "gallery indices"),
        (dict(distances=np.zeros((1, 2)), query_labels=[0], gallery_labels=[0, 1], normalization="x"), "normalization"),
    ],
)
def test_invalid_inputs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision_at_k(**kwargs)


def test_evaluate_module_equals_plain_function():
    import evaluate

    rng = np.random.default_rng(2)
    gallery = rng.integers(0, 3, size=25)
    queries = rng.integers(0, 3, size=7)
    distances = rng.random((7, 25))
    metric = evaluate.load(os.path.abspath(METRIC_DIR))
    for normalization in ("hits", "relevant"):
        from_module = metric.compute(
            predictions=distances.tolist(),
            references=queries.tolist(),
            gallery_labels=gallery.tolist(),
            ks=[1, 5, 10, 20],
            normalization=normalization,
        )
        plain = mean_average_precision_at_k(distances, queries, gallery, ks=(1, 5, 10, 20), normalization=normalization)
        assert from_module == plain


def _tiny_model_and_dataset():
    from datasets import Array2D, ClassLabel, Dataset, Features, List, Value

    from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
    from xmodal.map_ivr.modeling_map_ivr import MapIvrModel

    config = MapIvrConfig(
        image_feature_dim=6, video_feature_dim=8, appearance_dim=4, motion_dim=4, latent_dim=3,
        encoder_hidden_sizes=[5], decoder_hidden_sizes=[7], num_labels=3, proposal_top_k=2, num_samples=4,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    model = MapIvrModel(config).eval()
    rng = np.random.default_rng(3)
    n = 12
    features = Features(
        {
            "image_features": List(Value("float32"), length=6),
            "video_features": Array2D(shape=(4, 8), dtype="float32"),
            "proposal_scores": List(Value("float32"), length=4),
            "label": ClassLabel(num_classes=3),
            "is_query": Value("bool"),
        }
    )
    dataset = Dataset.from_dict(
        {
            "image_features": rng.standard_normal((n, 6)).astype(np.float32),
            "video_features": rng.standard_normal((n, 4, 8)).astype(np.float32),
            "proposal_scores": rng.random((n, 4)).astype(np.float32),
            "label": np.arange(n) % 3,
            "is_query": np.arange(n) < 9,
        },
        features=features,
    )
    return model, dataset


def test_evaluate_activity_retrieval_scores_the_whole_gallery_once():
    model, dataset = _tiny_model_and_dataset()
    calls = []
    original = model.score

    def counting_score(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.score = counting_score
    result = evaluate_activity_retrieval(model, dataset, num_samples=5, lambda_v=0.25, seed=7, ks=(1, 5, 10))
    assert len(calls) == 1
    assert result["num_queries"] == 9 and result["num_gallery"] == 12
    assert result["num_samples"] == 5 and result["lambda_v"] == 0.25

    # the same numbers by hand: score with the same seed, then the plain metric
    data = dataset.with_format("numpy")[:]
    scores = original(
        torch.from_numpy(data["image_features"][:9]),
        torch.from_numpy(data["video_features"]),
        num_samples=5,
        lambda_v=0.25,
        generator=torch.Generator().manual_seed(7),
        proposal_scores=torch.from_numpy(data["proposal_scores"]),
        proposal_mask=torch.ones(12, 4, dtype=torch.bool),
    )
    labels = data["label"]
    for name in ("s_a", "s_v", "s_all"):
        plain = mean_average_precision_at_k(getattr(scores, name), labels[:9], labels, ks=(1, 5, 10))
        for k in (1, 5, 10):
            assert result[f"{name}/mAP@{k}"] == plain[f"mAP@{k}"]
    # deterministic for a seed
    assert evaluate_activity_retrieval(model, dataset, num_samples=5, lambda_v=0.25, seed=7, ks=(1, 5, 10)) == result


def test_evaluate_activity_retrieval_applies_the_feature_extractor():
    from xmodal.map_ivr.feature_extraction_map_ivr import MapIvrFeatureExtractor

    model, dataset = _tiny_model_and_dataset()
    data = dataset.with_format("numpy")[:]
    extractor = MapIvrFeatureExtractor().fit(data["image_features"], data["video_features"])
    normalised = evaluate_activity_retrieval(model, dataset, seed=1, ks=(5,), feature_extractor=extractor, query_column=None)
    raw = evaluate_activity_retrieval(model, dataset, seed=1, ks=(5,), query_column=None)
    assert normalised["num_queries"] == 12
    batch = extractor(image_features=data["image_features"], video_features=data["video_features"], return_tensors="pt")
    scores = model.score(batch["image_features"], batch["video_features"], generator=torch.Generator().manual_seed(1),
                         proposal_scores=torch.from_numpy(data["proposal_scores"]), proposal_mask=batch["proposal_mask"])
    expected = mean_average_precision_at_k(scores.s_all, data["label"], data["label"], ks=(5,))
    assert normalised["s_all/mAP@5"] == expected["mAP@5"]
    assert set(normalised) == set(raw)
