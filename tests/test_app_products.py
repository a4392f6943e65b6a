"""app.py's "Text -> images" tab lists products, not views: one tile per product, its best-scoring view (no browser)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "tests" / "fixtures" / "golden" / "fashionbert_pretraining"

sys.path.insert(0, str(ROOT))
import app  # noqa: E402


def test_best_view_per_product_keeps_each_products_first_hit():
    product_ids = ["a", "a", "b", "c", "b", "c"]
    ranking = [1, 4, 0, 2, 5, 3]  # gallery indices, best first
    scores = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    assert app.best_view_per_product(ranking, scores, product_ids, 2) == [(1, 9.0), (4, 8.0)]
    assert app.best_view_per_product(ranking, scores, product_ids, 5) == [(1, 9.0), (4, 8.0), (5, 5.0)]
    assert app.best_view_per_product([], [], product_ids, 3) == []


def test_text_to_images_shows_one_tile_per_product_by_its_best_view():
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    from xmodal.retrieval import FashionRetriever

    gallery = app.FashionGallery.synthetic(num_products=55, views_per_product=3, image_size=32, seed=0)
    assert gallery.max_views == 3 and len(gallery.images) == 3 * len(set(gallery.product_ids))
    demo = app.build_demo(gallery, None, str(CHECKPOINT), "unused", rerank_top_n=100)
    search_images = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "search_images")

    items, note = search_images(str(CHECKPOINT), "red long sleeve dress", 4)
    assert note.startswith("Cross-encoder scored") and "each product is shown once" in note
    shown = [caption.split(" | ")[1].split(":")[0] for _, caption in items]
    assert len(items) == 4 and len(set(shown)) == 4  # four products, none twice

    # The same products, in the same order, as the exact ranking of every view reduced to each product's best view.
    exact = FashionRetriever.from_pretrained(CHECKPOINT, rerank_top_n=None).rank_images(
        "red long sleeve dress", gallery.images, top_k=len(gallery.images)
    )
    best = {}
    for index, score in zip(exact.indices.tolist(), exact.scores.tolist()):
        best.setdefault(gallery.product_ids[index], (index, score))
    expected = sorted(best.items(), key=lambda item: (-item[1][1], item[1][0]))[:4]
    assert shown == [product for product, _ in expected]
    for (image, caption), (_, (index, score)) in zip(items, expected):
        assert image is gallery.images[index]
        assert float(caption.split("score ")[1].split(" |")[0]) == pytest.approx(score, abs=0.006)
