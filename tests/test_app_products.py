"""
app.py's fashion side without a browser: the catalogue is rendered once and reopened, each checkpoint's indexes are
built once and loaded at start-up, the "Text -> images" tab shows one tile per product (its best view) in the order
of the exhaustive ranking, bad flags stop with one line, a page served beyond loopback keeps its checkpoints, uploads
are bounded and guarded, and the page says what start-up is doing.
"""

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))
import app  # noqa: E402

from tiny_fashionbert import GOLDEN_FASHIONBERT, save_golden_fashionbert_with_heads  # noqa: E402

# Exactness tests: rankings compared with float32 brute force (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")


def test_best_view_per_product_keeps_each_products_first_hit():
    product_ids = ["a", "a", "b", "c", "b", "c"]
    ranking = [1, 4, 0, 2, 5, 3]  # gallery indices, best first
    scores = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    assert app.best_view_per_product(ranking, scores, product_ids, 2) == [(1, 9.0), (4, 8.0)]
    assert app.best_view_per_product(ranking, scores, product_ids, 5) == [(1, 9.0), (4, 8.0), (5, 5.0)]
    assert app.best_view_per_product([], [], product_ids, 3) == []


def test_catalogue_is_rendered_once_then_reopened(tmp_path, monkeypatch):
    catalogue = app.FashionCatalogue.open_or_render(tmp_path, num_products=22, views_per_product=2, image_size=32, seed=3)
    assert len(catalogue.paths) == 44 and catalogue.max_views == 2
    assert all(Path(path).is_file() for path in catalogue.paths)
    assert catalogue.unique_captions == list(dict.fromkeys(catalogue.captions))
    monkeypatch.setattr(app.FashionCatalogue, "_render", staticmethod(lambda *_: pytest.fail("rendered again")))
    again = app.FashionCatalogue.open_or_render(tmp_path, num_products=22, views_per_product=2, image_size=32, seed=3)
    assert (again.paths, again.captions, again.product_ids) == (catalogue.paths, catalogue.captions, catalogue.product_ids)
    monkeypatch.undo()
    # Other settings live in their own folder (nothing overwritten); a damaged catalogue is rendered again.
    other = app.FashionCatalogue.open_or_render(tmp_path, num_products=11, views_per_product=1, image_size=32, seed=3)
    assert other.folder != catalogue.folder and Path(catalogue.paths[0]).is_file()
    Path(catalogue.paths[5]).write_bytes(b"")
    repaired = app.FashionCatalogue.open_or_render(tmp_path, num_products=22, views_per_product=2, image_size=32, seed=3)
    assert Path(repaired.paths[5]).stat().st_size > 0
    with pytest.raises(ValueError, match="--num_products 0"):
        app.FashionCatalogue.open_or_render(tmp_path, num_products=0, views_per_product=1, image_size=32, seed=3)


@pytest.fixture(scope="module")
def catalogue_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model = save_golden_fashionbert_with_heads(root / "model")
    catalogue = app.FashionCatalogue.open_or_render(root / "catalogue", 22, 3, image_size=32, seed=0)
    return catalogue, str(model)


def test_indexes_are_built_once_and_loaded_by_later_start_ups(catalogue_and_model, monkeypatch):
    from xmodal.retrieval import FashionRetriever

    catalogue, model = catalogue_and_model
    first = app.ModelCache(rerank_top_n=5, catalogue=catalogue).get("fashionbert", model)
    folder = catalogue.index_folder(first)
    assert {p.name for p in folder.iterdir()} == {"images", "captions"}
    assert len(first.index) == len(catalogue.paths) and len(first.text_index) == len(catalogue.unique_captions)
    monkeypatch.setattr(FashionRetriever, "build_index", lambda *a, **k: pytest.fail("indexed again"))
    second = app.ModelCache(rerank_top_n=5, catalogue=catalogue).get("fashionbert", model)
    assert second.index.source == first.model_fingerprint
    assert second.search_images("red dress", top_k=3).indices.tolist() == first.search_images("red dress", top_k=3).indices.tolist()


def test_a_checkpoint_without_heads_says_how_to_train_them(catalogue_and_model):
    catalogue, _ = catalogue_and_model
    with pytest.raises(ValueError, match="--contrastive_projection_dim"):
        app.ModelCache(rerank_top_n=5, catalogue=catalogue).get("fashionbert", str(GOLDEN_FASHIONBERT))


def test_text_to_images_shows_one_tile_per_product_by_its_best_view(catalogue_and_model):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    from xmodal.retrieval import FashionRetriever

    catalogue, model = catalogue_and_model
    # The first stage covers the whole catalogue (66 views): the result must equal the exhaustive ranking.
    demo = app.build_demo(catalogue, None, model, "unused", rerank_top_n=len(catalogue.paths))
    search_images = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "search_images")

    items, note = search_images(model, "red long sleeve dress", 4)
    assert note.startswith("The dual-encoder index (exact") and "over 66 catalogue images" in note
    assert "each product is shown once" in note
    shown = [caption.split(" | ")[1].split(":")[0] for _, caption in items]
    assert len(items) == 4 and len(set(shown)) == 4  # four products, none twice

    exact = FashionRetriever.from_pretrained(model, rerank_top_n=None).rank_images(
        "red long sleeve dress", catalogue.paths, top_k=len(catalogue.paths)
    )
    best = {}
    for index, score in zip(exact.indices.tolist(), exact.scores.tolist()):
        best.setdefault(catalogue.product_ids[index], (index, score))
    expected = sorted(best.items(), key=lambda item: (-item[1][1], item[1][0]))[:4]
    assert shown == [product for product, _ in expected]
    for (image, caption), (_, (index, score)) in zip(items, expected):
        assert image == catalogue.paths[index] and catalogue.captions[index] in caption  # the catalogue's own file
        assert float(caption.split("score ")[1].split(" |")[0]) == pytest.approx(score, abs=0.006)


def test_image_to_captions_tab_searches_the_caption_index(catalogue_and_model, tmp_path):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    import gradio as gr
    import PIL.Image

    catalogue, model = catalogue_and_model
    demo = app.build_demo(catalogue, None, model, "unused", rerank_top_n=len(catalogue.unique_captions))
    search_captions = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "search_captions")

    shown, rows = search_captions(model, None, 3, 4)
    assert shown.size == (32, 32)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert all(r[2] in catalogue.unique_captions for r in rows)
    assert all(r[3] == ("yes" if r[2] == catalogue.captions[3] else "") for r in rows)
    upload = tmp_path / "upload.png"  # the page hands uploads over as files (gr.Image(type="filepath"))
    PIL.Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(upload)
    uploaded, _ = search_captions(model, str(upload), 0, 2)
    assert uploaded.mode == "RGB" and uploaded.size == (40, 30)
    with pytest.raises(gr.Error, match="pick an image between 0 and 65"):
        search_captions(model, None, 66, 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no_fashion", "--num_products", "50"], "--num_products: has no effect with --no_fashion"),
        (["--no_activity", "--videos_per_class", "2"], "--videos_per_class: has no effect with --no_activity"),
        (["--rerank_top_n", "0"], "--rerank_top_n 0: must be at least 1"),
    ],
)
def test_flags_that_would_be_ignored_or_are_out_of_range_stop_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        app.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Served beyond loopback: fixed checkpoints, bounded uploads
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
                                            ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("myhost", False)])
def test_loopback_is_told_apart_from_every_other_address(host, loopback):
    assert app.is_loopback(host) is loopback


def test_a_page_served_beyond_loopback_refuses_another_checkpoint(catalogue_and_model, tmp_path):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    import gradio as gr

    catalogue, model = catalogue_and_model
    models = app.ModelCache(len(catalogue.paths), catalogue, fixed_paths={"fashionbert": model, "map_ivr": "unused"})
    demo = app.build_demo(catalogue, None, model, "unused", rerank_top_n=len(catalogue.paths), models=models)
    handlers = {getattr(f.fn, "__name__", ""): f.fn for f in demo.fns.values()}
    fields = [block for block in demo.blocks.values() if getattr(block, "label", "") and "checkpoint" in block.label]
    assert fields and all(field.interactive is False for field in fields)  # read-only in the page
    other = tmp_path / "elsewhere"
    for path in (str(other), "someone/some-model", "/etc", ""):  # and refused through the API
        with pytest.raises(gr.Error, match="only serves its fashionbert checkpoint .*--allow_checkpoint_change"):
            handlers["search_images"](path, "red dress", 3)
        with pytest.raises(PermissionError, match="only serves its map_ivr checkpoint"):
            models.get("map_ivr", path)  # the MAP-IVR tab goes through the same cache
    assert not other.exists()
    items, _ = handlers["search_images"](model, "red dress", 3)  # the fixed one still answers
    assert len(items) == 3


def test_main_fixes_the_checkpoints_beyond_loopback_unless_allowed(monkeypatch):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    seen = {}

    def fake_serve(args, models, fashion, activity):
        seen["fixed"] = models.fixed_paths

    monkeypatch.setattr(app, "serve", fake_serve)
    base = ["--no_fashion", "--no_activity", "--fashionbert_model", "fb", "--map_ivr_model", "mi"]
    app.main([*base, "--host", "0.0.0.0"])
    assert seen["fixed"] == {"fashionbert": "fb", "map_ivr": "mi"}
    app.main([*base, "--host", "0.0.0.0", "--allow_checkpoint_change"])
    assert seen["fixed"] is None
    app.main(base)  # loopback (the default): a local user may type any folder
    assert seen["fixed"] is None


def test_uploads_are_bounded_and_decoded_with_the_bomb_guard(tmp_path, monkeypatch):
    import PIL.Image

    small = tmp_path / "small.png"
    PIL.Image.new("RGB", (20, 10), (0, 0, 255)).save(small)
    assert app.open_upload(small, max_bytes=2**20).size == (20, 10)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (3 * 2**20))
    with pytest.raises(ValueError, match="the upload is 3.0 MB, over this server's limit of 1 MB"):
        app.open_upload(big, max_bytes=2**20)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="the upload is not a usable image: cannot be decoded"):
        app.open_upload(broken, max_bytes=2**20)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 50)  # a 200-pixel image is then a "bomb" (Pillow errors at 2x)
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        app.open_upload(small, max_bytes=2**20)


def test_the_page_says_what_start_up_is_doing_until_it_is_done(catalogue_and_model):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
    import gradio as gr

    catalogue, model = catalogue_and_model
    status = app.StartupStatus(stage="indexing 66 catalogue images")
    demo = app.build_demo(catalogue, None, model, "unused", rerank_top_n=5, status=status)
    [banner] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "startup-status"]
    assert banner.value == "**Starting up:** indexing 66 catalogue images. A search sent now waits for it."
    assert any(isinstance(b, gr.Timer) for b in demo.blocks.values())  # refreshes it each second
    status.done = True
    assert status.markdown() == ""
    done = app.build_demo(catalogue, None, model, "unused", rerank_top_n=5, status=status)
    assert not any(getattr(b, "elem_id", None) == "startup-status" for b in done.blocks.values())


def test_a_deferred_gallery_is_waited_for_and_its_error_reported():
    deferred = app.Deferred(size=3)
    assert not deferred.ready
    deferred.set(error=ValueError("rendering failed"))
    assert deferred.ready
    with pytest.raises(ValueError, match="rendering failed"):
        deferred.get()
    later = app.Deferred(size=3)
    threading.Timer(0.05, later.set, args=("gallery",)).start()
    assert later.get() == "gallery"  # blocks until the start-up thread sets it
