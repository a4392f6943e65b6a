"""
Retrieval you can see: a local Gradio demo over trained FashionBERT and MAP-IVR folders.

    pip install gradio            # the demo's only extra dependency
    python train.py               # writes outputs/fashionbert/final
    python app.py                 # http://127.0.0.1:7860

Tabs: "Text -> images" (type a description, get the top-k products, each shown by its best-scoring view, with the
score), "Image -> captions"
(pick a gallery image or upload one, get the top-k captions), "Image -> videos" (MAP-IVR: pick a query image, get
the top-k videos as animated previews with S_A / S_V / S_all, lambda_v and h adjustable). The galleries are the test
splits of the synthetic test beds built with train.py's default sizes (smaller with the flags below). Everything runs
offline; a bad checkpoint path or image is reported as a message, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

from xmodal.training import DEFAULT_SEED  # noqa: E402
from xmodal.training import fashionbert as fashionbert_training  # noqa: E402
from xmodal.training import map_ivr as map_ivr_training  # noqa: E402

# train.py's defaults for the synthetic test beds (its --synthetic_* flags, --seed, and the quick recipe's image size),
# from the training modules train.py reads them from.
TRAIN_DEFAULTS = {
    "synthetic_num_products": fashionbert_training.SYNTHETIC_NUM_PRODUCTS,
    "synthetic_views_per_product": fashionbert_training.SYNTHETIC_VIEWS_PER_PRODUCT,
    "image_size": fashionbert_training.QUICK_RECIPE.image_size,
    "synthetic_videos_per_class": map_ivr_training.SYNTHETIC_VIDEOS_PER_CLASS,
    "seed": DEFAULT_SEED,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashionbert_model", default="outputs/fashionbert/final", help="FashionBERT folder or Hub repo id (what `python train.py` writes). Can be changed in the page.")
    parser.add_argument("--map_ivr_model", default="outputs/map_ivr/final", help="MAP-IVR folder or Hub repo id (what `python train.py --model_type map_ivr` writes). Can be changed in the page.")
    parser.add_argument("--num_products", type=int, default=TRAIN_DEFAULTS["synthetic_num_products"], help="Synthetic fashion products (train.py's default; the gallery is the 10%% test split).")
    parser.add_argument("--views_per_product", type=int, default=TRAIN_DEFAULTS["synthetic_views_per_product"], help="Synthetic fashion views per product.")
    parser.add_argument("--image_size", type=int, default=TRAIN_DEFAULTS["image_size"], help="Side of the synthetic fashion images.")
    parser.add_argument("--videos_per_class", type=int, default=TRAIN_DEFAULTS["synthetic_videos_per_class"], help="Synthetic activity videos per class (the gallery is the test split).")
    parser.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"], help="Seed of the synthetic test beds (train.py's default, so the galleries are its test splits).")
    parser.add_argument("--rerank_top_n", type=int, default=100, help="FashionBERT: larger galleries are pre-ranked cheaply and only this many go through the cross-encoder.")
    parser.add_argument("--no_fashion", action="store_true", help="Skip the FashionBERT tabs (and building their gallery).")
    parser.add_argument("--no_activity", action="store_true", help="Skip the MAP-IVR tab (and building its gallery).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on.")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# Galleries and models (no Gradio here, so it can be tested and reused)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FashionGallery:
    """The synthetic fashion test split: images, their captions, and the caption list (one per product)."""

    images: list[Any]
    captions: list[str]
    product_ids: list[str]
    unique_captions: list[str] = field(default_factory=list)

    @classmethod
    def synthetic(cls, num_products: int, views_per_product: int, image_size: int, seed: int) -> FashionGallery:
        from xmodal.data.fashion_synthetic import make_fashion_dataset

        test = make_fashion_dataset(num_products, views_per_product, image_size, seed=seed, show_progress=False)["test"]
        if len(test) == 0:
            raise ValueError(
                f"--num_products {num_products} leaves the test split empty (10% of each of the 11 sub-categories, "
                "rounded): use at least 55."
            )
        images = [image.convert("RGB") for image in test["image"]]
        captions, product_ids = list(test["text"]), list(test["product_id"])
        return cls(images, captions, product_ids, list(dict.fromkeys(captions)))

    @property
    def max_views(self) -> int:
        """The most images any one product has in the gallery."""
        return max(Counter(self.product_ids).values(), default=1)


def best_view_per_product(
    indices: list[int], scores: list[float], product_ids: list[str], top_k: int
) -> list[tuple[int, float]]:
    """
    `(gallery index, score)` of the first `top_k` products of a ranking (best first): each product once, by its
    best-ranked view.
    """
    seen: set[str] = set()
    hits = []
    for index, score in zip(indices, scores):
        if product_ids[index] not in seen:
            seen.add(product_ids[index])
            hits.append((index, score))
            if len(hits) == top_k:
                break
    return hits


@dataclass
class ActivityGallery:
    """The synthetic activity test split: query image features and images, video features and clips, labels."""

    image_features: Any
    video_features: Any
    proposal_scores: Any
    images: Any
    videos: Any
    labels: list[int]
    label_names: list[str]
    gif_dir: Path

    @classmethod
    def synthetic(cls, videos_per_class: int, seed: int) -> ActivityGallery:
        import numpy as np

        from xmodal.data.activity_synthetic import make_activity_dataset

        # Test rows come from their own random stream (`render_instance`), independent of the training size, so one
        # training video per class is rendered instead of train.py's `videos_per_class`: same test split, half the work.
        test = make_activity_dataset(
            num_videos_per_class=1, num_test_videos_per_class=videos_per_class, seed=seed, keep_media=True, show_progress=False
        )["test"]
        test = test.with_format("numpy")
        scores = test["proposal_scores"] if "proposal_scores" in test.column_names else None
        return cls(
            image_features=np.asarray(test["image_features"], dtype=np.float32),
            video_features=np.asarray(test["video_features"], dtype=np.float32),
            proposal_scores=None if scores is None else np.asarray(scores, dtype=np.float32),
            images=np.asarray(test["image"], dtype=np.uint8),  # the numpy format reads uint8 arrays back as int64
            videos=test["video"],
            labels=[int(x) for x in test["label"]],
            label_names=test.features["label"].names,
            gif_dir=Path(tempfile.mkdtemp(prefix="xmodal-gifs-")),
        )

    def gif(self, index: int) -> str:
        """An animated preview of video `index` (written once)."""
        import numpy as np

        from xmodal.data.activity_synthetic import save_clip_gif

        path = self.gif_dir / f"video_{index:05d}.gif"
        if not path.exists():
            save_clip_gif(np.asarray(self.videos[index], dtype=np.uint8), str(path), fps=8, scale=2)
        return str(path)


class ModelCache:
    """Retrievers by (kind, path), loaded on first use; a failed load raises a message for the page."""

    def __init__(self, rerank_top_n: int):
        self.rerank_top_n = rerank_top_n
        self._loaded: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, path: str):
        from xmodal.retrieval import ActivityRetriever, FashionRetriever

        path = (path or "").strip()
        if not path:
            raise ValueError("enter a checkpoint folder or Hub repo id.")
        key = (kind, path)
        if key not in self._loaded:
            if kind == "fashionbert":
                self._loaded[key] = FashionRetriever.from_pretrained(path, rerank_top_n=self.rerank_top_n)
            else:
                self._loaded[key] = ActivityRetriever.from_pretrained(path)
        return self._loaded[key]


def _message(error: Exception) -> str:
    hint = ""
    if isinstance(error, FileNotFoundError):
        hint = " Train one first (`python train.py`) or enter another folder."
    return f"{error}{hint}"


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------


def build_demo(
    fashion: FashionGallery | None,
    activity: ActivityGallery | None,
    fashionbert_model: str,
    map_ivr_model: str,
    rerank_top_n: int = 100,
):
    """The Gradio `Blocks` app over the given galleries (either may be None: its tabs then say so)."""
    import gradio as gr
    import numpy as np
    import PIL.Image

    models = ModelCache(rerank_top_n)

    def retriever(kind: str, path: str):
        try:
            return models.get(kind, path)
        except Exception as error:  # any load failure becomes a message on the page
            raise gr.Error(_message(error), print_exception=False) from None

    def search_images(path: str, query: str, top_k: float):
        if fashion is None:
            raise gr.Error("the fashion gallery is off (--no_fashion).", print_exception=False)
        if not (query or "").strip():
            gr.Warning("Type a description first.")
            return [], ""
        model = retriever("fashionbert", path)
        # One tile per product: rank enough views that the top-k products are all among them (each product has at
        # most `max_views`), then keep each product's best-scoring view.
        views = min(len(fashion.images), int(top_k) * fashion.max_views)
        result = model.rank_images(query, fashion.images, top_k=views)
        hits = best_view_per_product(result.indices.tolist(), result.scores.tolist(), fashion.product_ids, int(top_k))
        items = [
            (fashion.images[i], f"{rank}. score {s:.2f} | {fashion.product_ids[i]}: {fashion.captions[i]}")
            for rank, (i, s) in enumerate(hits, start=1)
        ]
        note = f"Cross-encoder scored {result.num_reranked} of {len(fashion.images)} images"
        if result.num_reranked < len(fashion.images):
            note += f" (the rest were filtered by the cheap pre-ranking; rerank_top_n={rerank_top_n})"
        if fashion.max_views > 1:
            note += "; each product is shown once, by its best-scoring view"
        return items, note + "."

    def search_captions(path: str, upload, pick: float, top_k: float):
        if fashion is None:
            raise gr.Error("the fashion gallery is off (--no_fashion).", print_exception=False)
        truth = None
        if upload is not None:
            image = upload
            if not isinstance(image, PIL.Image.Image) or image.width < 1 or image.height < 1:
                raise gr.Error("the uploaded file is not a readable image.", print_exception=False)
            image = image.convert("RGB")
        else:
            index = int(pick)
            if not 0 <= index < len(fashion.images):
                raise gr.Error(f"pick an image between 0 and {len(fashion.images) - 1}.", print_exception=False)
            image, truth = fashion.images[index], fashion.captions[index]
        model = retriever("fashionbert", path)
        try:
            result = model.rank_texts(image, fashion.unique_captions, top_k=int(top_k))
        except ValueError as error:
            raise gr.Error(f"the image could not be used: {error}", print_exception=False) from None
        rows = [
            [rank, round(score, 3), fashion.unique_captions[i], "yes" if fashion.unique_captions[i] == truth else ""]
            for rank, (i, score) in enumerate(zip(result.indices.tolist(), result.scores.tolist()), start=1)
        ]
        return image, rows

    def search_videos(path: str, pick: float, lambda_v: float, num_samples: float, top_k: float):
        if activity is None:
            raise gr.Error("the activity gallery is off (--no_activity).", print_exception=False)
        index = int(pick)
        if not 0 <= index < len(activity.labels):
            raise gr.Error(f"pick a query between 0 and {len(activity.labels) - 1}.", print_exception=False)
        model = retriever("map_ivr", path)
        try:
            result = model.rank_videos(
                activity.image_features[index],
                activity.video_features,
                top_k=int(top_k),
                lambda_v=float(lambda_v),
                num_samples=int(num_samples),
                proposal_scores=activity.proposal_scores,
            )
        except ValueError as error:  # e.g. a checkpoint trained on other features
            raise gr.Error(f"this checkpoint cannot score the synthetic gallery: {error}", print_exception=False) from None
        name = activity.label_names
        items, rows = [], []
        for rank, i in enumerate(result.indices.tolist(), start=1):
            s_a, s_v, s_all = (float(x[rank - 1]) for x in (result.s_a, result.s_v, result.s_all))
            match = activity.labels[i] == activity.labels[index]
            items.append((activity.gif(i), f"{rank}. {name[activity.labels[i]]}{' (same class)' if match else ''} S_all {s_all:.3f}"))
            rows.append([rank, i, name[activity.labels[i]], "yes" if match else "", round(s_a, 4), round(s_v, 4), round(s_all, 4)])
        query = PIL.Image.fromarray(np.asarray(activity.images[index], dtype=np.uint8)).resize((128, 128), PIL.Image.NEAREST)
        return query, f"query class: {name[activity.labels[index]]}", items, rows

    with gr.Blocks(title="xmodal retrieval") as demo:
        gr.Markdown("# xmodal retrieval\nFashionBERT text-image matching and MAP-IVR image-to-video retrieval on the synthetic test beds.")
        with gr.Tab("Text -> images"):
            if fashion is None:
                gr.Markdown("The fashion gallery is off (`--no_fashion`).")
            fb_path = gr.Textbox(value=fashionbert_model, label="FashionBERT checkpoint (folder or Hub repo id)", elem_id="fashionbert-path")
            with gr.Row():
                query = gr.Textbox(label="Description", placeholder="e.g. red long-sleeve dress with a round neck", elem_id="text-query", scale=4)
                top_k = gr.Slider(1, 20, value=5, step=1, label="top-k", elem_id="text-top-k")
            search = gr.Button("Search images", variant="primary", elem_id="text-search")
            note = gr.Markdown(elem_id="text-note")
            results = gr.Gallery(label="Best matching products", columns=5, height="auto", elem_id="image-results", format="png")
            search.click(search_images, [fb_path, query, top_k], [results, note])
            query.submit(search_images, [fb_path, query, top_k], [results, note])
        with gr.Tab("Image -> captions"):
            fb_path2 = gr.Textbox(value=fashionbert_model, label="FashionBERT checkpoint (folder or Hub repo id)")
            with gr.Row():
                upload = gr.Image(type="pil", label="Upload an image (or leave empty and pick one below)", sources=["upload", "clipboard"])
                shown = gr.Image(type="pil", label="Query", interactive=False)
            size = len(fashion.images) if fashion else 1
            with gr.Row():
                pick = gr.Slider(0, max(size - 1, 1), value=0, step=1, label="Gallery image")
                top_k2 = gr.Slider(1, 20, value=5, step=1, label="top-k")
            search2 = gr.Button("Find captions", variant="primary")
            captions = gr.Dataframe(headers=["rank", "score", "caption", "ground truth"], label="Best captions", wrap=True)
            search2.click(search_captions, [fb_path2, upload, pick, top_k2], [shown, captions])
        with gr.Tab("Image -> videos (MAP-IVR)"):
            if activity is None:
                gr.Markdown("The activity gallery is off (`--no_activity`).")
            mi_path = gr.Textbox(value=map_ivr_model, label="MAP-IVR checkpoint (folder or Hub repo id)")
            size = len(activity.labels) if activity else 1
            with gr.Row():
                vpick = gr.Slider(0, max(size - 1, 1), value=0, step=1, label="Query image (test row)")
                lambda_v = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="lambda_v (weight of S_V)")
                samples = gr.Slider(1, 100, value=20, step=1, label="h (motion codes for S_V)")
                top_k3 = gr.Slider(1, 20, value=5, step=1, label="top-k")
            search3 = gr.Button("Find videos", variant="primary")
            with gr.Row():
                vquery = gr.Image(type="pil", label="Query image", interactive=False, scale=1)
                vclass = gr.Markdown()
            videos = gr.Gallery(label="Closest videos (lower S_all = closer)", columns=5, height="auto")
            table = gr.Dataframe(headers=["rank", "video", "class", "same class", "S_A", "S_V", "S_all"], label="Scores")
            search3.click(search_videos, [mi_path, vpick, lambda_v, samples, top_k3], [vquery, vclass, videos, table])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("app.py needs Gradio: pip install gradio") from None
    fashion = activity = None
    if not args.no_fashion:
        print(f"Rendering the synthetic fashion test split ({args.num_products} products)...", flush=True)
        try:
            fashion = FashionGallery.synthetic(args.num_products, args.views_per_product, args.image_size, args.seed)
        except ValueError as error:
            parser.error(str(error))
    if not args.no_activity:
        print(f"Rendering the synthetic activity test split ({args.videos_per_class} videos per class)...", flush=True)
        activity = ActivityGallery.synthetic(args.videos_per_class, args.seed)
    demo = build_demo(fashion, activity, args.fashionbert_model, args.map_ivr_model, args.rerank_top_n)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False)


if __name__ == "__main__":
    main()
