"""
Retrieval you can see: a local Gradio demo over trained FashionBERT and MAP-IVR folders.

    pip install gradio            # the demo's only extra dependency
    python train.py               # writes outputs/fashionbert/final
    python app.py                 # http://127.0.0.1:7860

Tabs: "Text -> images" (type a description, get the top-k products of a 10,000-product catalogue, each shown by its
best-scoring view, with the score), "Image -> captions" (pick a catalogue image or upload one, get the top-k
captions), "Image -> videos" (MAP-IVR: pick a query image, get the top-k videos as animated previews with S_A / S_V /
S_all, lambda_v and h adjustable).

FashionBERT searches the catalogue in two stages: its dual-encoder embeddings find the `--rerank_top_n` nearest in an
index, the cross-encoder re-ranks them. The catalogue (synthetic products train.py never saw) is rendered once under
`--catalogue_dir`; each checkpoint's image and caption indexes are built once and saved beside it, then loaded at
start-up. The video gallery is the test split of train.py's synthetic activity test bed. Everything runs offline; a
bad checkpoint path or image is reported as a message, not a traceback.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import ipaddress
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

from xmodal.retrieval.fashionbert import FIRST_STAGE_K  # noqa: E402
from xmodal.training import DEFAULT_SEED  # noqa: E402
from xmodal.training import fashionbert as fashionbert_training  # noqa: E402
from xmodal.training import map_ivr as map_ivr_training  # noqa: E402

# train.py's defaults (the quick recipe's image size, the activity test bed's --synthetic_videos_per_class and
# --seed), from the training modules train.py reads them from.
QUICK_RECIPE = fashionbert_training.QUICK_RECIPE
TRAIN_DEFAULTS = {
    "image_size": fashionbert_training.default_image_size(QUICK_RECIPE, QUICK_RECIPE.patch_encoder_type),
    "synthetic_videos_per_class": map_ivr_training.SYNTHETIC_VIDEOS_PER_CLASS,
    "seed": DEFAULT_SEED,
}
CATALOGUE_PRODUCTS = 10_000
CATALOGUE_SEED = 7  # not train.py's seed: products the model never saw
CATALOGUE_FILE = "catalogue.json"
MAX_UPLOAD_MB = 10.0
RERANK_TOP_N = FIRST_STAGE_K  # chosen from the measured keep-rate of the exhaustive top 10 (see FIRST_STAGE_K)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashionbert_model", default="outputs/fashionbert/final", help="FashionBERT folder or Hub repo id (what `python train.py` writes). Can be changed in the page when served on loopback (or with --allow_checkpoint_change).")
    parser.add_argument("--map_ivr_model", default="outputs/map_ivr/final", help="MAP-IVR folder or Hub repo id (what `python train.py --model_type map_ivr` writes). Can be changed in the page when served on loopback (or with --allow_checkpoint_change).")
    parser.add_argument("--num_products", type=int, default=CATALOGUE_PRODUCTS, help="Products in the synthetic fashion catalogue.")
    parser.add_argument("--views_per_product", type=int, default=1, help="Images per catalogue product (the results show each product once).")
    parser.add_argument("--image_size", type=int, default=TRAIN_DEFAULTS["image_size"], help="Side of the catalogue images (train.py's quick recipe).")
    parser.add_argument("--catalogue_seed", type=int, default=CATALOGUE_SEED, help="Seed of the catalogue (not train.py's: unseen products).")
    parser.add_argument("--catalogue_dir", default="outputs/fashionbert/catalogue", help="Where the catalogue is rendered and each checkpoint's indexes are saved (reused by later start-ups).")
    parser.add_argument("--videos_per_class", type=int, default=TRAIN_DEFAULTS["synthetic_videos_per_class"], help="Synthetic activity videos per class (the gallery is the test split).")
    parser.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"], help="Seed of the synthetic activity test bed (train.py's default, so the gallery is its test split).")
    parser.add_argument("--rerank_top_n", type=int, default=RERANK_TOP_N, help="FashionBERT: the index's nearest candidates the cross-encoder re-ranks per query.")
    parser.add_argument("--no_fashion", action="store_true", help="Skip the FashionBERT tabs (and rendering and indexing their catalogue).")
    parser.add_argument("--no_activity", action="store_true", help="Skip the MAP-IVR tab (and building its gallery).")
    parser.add_argument("--concurrency_limit", type=int, default=2, help="Searches run at once (Gradio's queue; the rest wait in it). 2 overlaps one search's Python and page work with another's model passes: on 2 cores, 4 clients got 2.55 queries/s with 1 and 3.16 with 2 (bench/demo_load.py).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on. Beyond loopback the page's checkpoints are fixed to the two above (see --allow_checkpoint_change).")
    parser.add_argument("--allow_checkpoint_change", action="store_true", help="Let visitors load another checkpoint folder or Hub repo id through the page and its API also when served beyond loopback (they can then make the server read its disk or download models).")
    parser.add_argument("--max_upload_mb", type=float, default=MAX_UPLOAD_MB, help="Largest image upload accepted, in MB (decoded under Pillow's decompression-bomb limit).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# Galleries and models (no Gradio here, so it can be tested and reused)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FashionCatalogue:
    """
    A synthetic product catalogue on disk, the demo's searchable gallery: one PNG per product view under `images/`
    and `catalogue.json` (captions, product ids, the generator's settings, file sizes), in a folder named by those
    settings. Rendered once, then reopened; the indexes of each checkpoint live beside it (`index_folder`).
    """

    folder: Path
    paths: list[str]
    captions: list[str]
    product_ids: list[str]
    unique_captions: list[str] = field(default_factory=list)

    @classmethod
    def open_or_render(
        cls, root: str | os.PathLike, num_products: int, views_per_product: int, image_size: int, seed: int
    ) -> FashionCatalogue:
        """The catalogue with these settings under `root`, rendered (with a progress bar) when absent or damaged."""
        from xmodal.files import atomic_directory, manifest_problem, read_manifest, write_manifest

        if num_products < 1 or views_per_product < 1 or image_size < 32:
            raise ValueError(
                f"--num_products {num_products}, --views_per_product {views_per_product}, --image_size {image_size}: "
                "need at least one product and view, and images of at least 32 px."
            )
        settings = {"num_products": num_products, "views_per_product": views_per_product, "image_size": image_size, "seed": seed}
        folder = Path(root).resolve() / f"products{num_products}-views{views_per_product}-px{image_size}-seed{seed}"
        manifest, _ = read_manifest(folder, CATALOGUE_FILE)
        if manifest is None or manifest.get("settings") != settings or manifest_problem(folder, manifest):
            print(f"Rendering the synthetic catalogue ({num_products:,} products, {views_per_product} view(s) each) "
                  f"into {folder} (once)...", flush=True)  # fmt: skip
            with atomic_directory(folder) as temporary:
                rows = cls._render(temporary, settings)
                write_manifest(temporary, CATALOGUE_FILE, settings=settings, rows=rows)
            manifest, _ = read_manifest(folder, CATALOGUE_FILE)
        rows = manifest["rows"]
        paths = [str(folder / "images" / name) for name in rows["files"]]
        return cls(folder, paths, rows["captions"], rows["product_ids"], list(dict.fromkeys(rows["captions"])))

    @staticmethod
    def _render(folder: Path, settings: dict) -> dict[str, list[str]]:
        """Writes `folder/images/*.png`; returns the rows' file names, captions and product ids."""
        from xmodal.data.fashion_synthetic import generate_fashion_columns

        rows = generate_fashion_columns(
            settings["num_products"], settings["views_per_product"], settings["image_size"], seed=settings["seed"],
            split_fractions={"train": 1.0}, show_progress=True,
        )["train"]  # fmt: skip
        (folder / "images").mkdir()
        files = []
        for position, image in enumerate(rows["image"]):  # the PNG bytes as rendered, not decoded
            files.append(f"{position:07d}.png")
            (folder / "images" / files[-1]).write_bytes(image["bytes"])
        return {"files": files, "captions": rows["text"], "product_ids": rows["product_id"]}

    @property
    def max_views(self) -> int:
        """The most images any one product has in the catalogue."""
        return max(Counter(self.product_ids).values(), default=1)

    def index_folder(self, retriever: Any) -> Path:
        """Where the indexes of `retriever`'s model live (named by its weights' fingerprint)."""
        return self.folder / f"index-{retriever.model_fingerprint.split(':')[-1][:16]}"

    def open_indexes(self, retriever: Any) -> None:
        """
        Give `retriever` (a `FashionRetriever` with dual-encoder heads) its image and caption indexes over this
        catalogue: each loaded from `index_folder`, or built (with a progress bar) and saved there the first time.
        """
        self.open_image_index(retriever)
        self.open_caption_index(retriever)

    def open_image_index(self, retriever: Any) -> None:
        """The image index of `open_indexes` alone (what text -> images search needs)."""
        self._open(retriever, "images", f"{len(self.paths):,} catalogue images", retriever.load_index,
                   lambda: retriever.build_index(self.paths, show_progress=True), retriever.save_index)  # fmt: skip

    def open_caption_index(self, retriever: Any) -> None:
        """The caption index of `open_indexes` alone (what image -> captions search needs)."""
        self._open(retriever, "captions", f"{len(self.unique_captions):,} captions", retriever.load_text_index,
                   lambda: retriever.build_text_index(self.unique_captions, show_progress=True), retriever.save_text_index)  # fmt: skip

    def _open(self, retriever: Any, name: str, what: str, load, build, save) -> None:
        from xmodal.files import atomic_directory

        folder = self.index_folder(retriever) / name
        if folder.is_dir():
            load(folder)
            return
        if retriever.has_dual_encoder:  # else build raises at once, saying how to train the heads
            print(f"Indexing {what} (once; saved in {folder})...", flush=True)
        build()
        with atomic_directory(folder) as temporary:
            save(temporary)


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


class Deferred:
    """A value made once by the start-up thread after the page is up (`set`); `get` waits for it, or re-raises its error."""

    def __init__(self, size: int):
        self.size = size  # known before the value is (the page's sliders)
        self._done = threading.Event()
        self._value: Any = None
        self._error: Exception | None = None

    def set(self, value: Any = None, error: Exception | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def get(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class StartupStatus:
    """What the start-up thread is doing, shown at the top of the page until it is done."""

    stage: str = "starting"
    done: bool = False

    def markdown(self) -> str:
        return "" if self.done else f"**Starting up:** {self.stage}. A search sent now waits for it."


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback interface only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # any other name may resolve beyond this machine
        return False


class ModelCache:
    """
    Retrievers by (kind, path), loaded on first use (a FashionBERT one with its catalogue indexes, see
    `FashionCatalogue.open_indexes`); a failed load raises a message for the page.

    With `fixed_paths` (`{kind: path}`: a page served beyond loopback), only those checkpoints load: any other path,
    typed in the page or sent to its API, is refused before anything is read or downloaded.
    """

    def __init__(self, rerank_top_n: int, catalogue: FashionCatalogue | None = None, fixed_paths: dict[str, str] | None = None,
                 status: StartupStatus | None = None):
        self.rerank_top_n = rerank_top_n
        self.catalogue = catalogue
        self.status = status  # told when a start-up load moves on (the page shows it)
        self.fixed_paths = None if fixed_paths is None else {kind: path.strip() for kind, path in fixed_paths.items()}
        self._loaded: dict[tuple[str, str], Any] = {}
        # Checkpoints being loaded, and the condition their loaders notify: a search for one waits until it is usable
        # (its image index ready), not until its caption index is built too.
        self._loading: set[tuple[str, str]] = set()
        self._changed = threading.Condition()

    def get(self, kind: str, path: str):
        path = (path or "").strip()
        if self.fixed_paths is not None and path != self.fixed_paths.get(kind):
            raise PermissionError(
                f"this server only serves its {kind} checkpoint {self.fixed_paths.get(kind)!r}: it runs beyond loopback, "
                "where loading another needs the operator's --allow_checkpoint_change."
            )
        if not path:
            raise ValueError("enter a checkpoint folder or Hub repo id.")
        key = (kind, path)
        with self._changed:
            while key not in self._loaded and key in self._loading:  # another thread loads it
                self._changed.wait()
            if key in self._loaded:
                return self._loaded[key]
            self._loading.add(key)
        try:
            return self._load(kind, path, key)
        finally:
            with self._changed:
                self._loading.discard(key)
                self._changed.notify_all()

    def settled(self) -> None:
        """Waits until no checkpoint is loading (e.g. until the start-up thread has built the caption index)."""
        with self._changed:
            while self._loading:
                self._changed.wait()

    def _publish(self, key: tuple[str, str], retriever: Any) -> None:
        with self._changed:
            self._loaded[key] = retriever
            self._changed.notify_all()

    def _load(self, kind: str, path: str, key: tuple[str, str]):
        from xmodal.retrieval import ActivityRetriever, FashionRetriever

        if kind == "fashionbert":
            # A small feature cache: the index holds the catalogue; only re-ranked candidates need patch features.
            retriever = FashionRetriever.from_pretrained(path, rerank_top_n=self.rerank_top_n, cache_size=4 * self.rerank_top_n)
            if self.catalogue is not None:
                self.catalogue.open_image_index(retriever)
                self._publish(key, retriever)  # text -> images answers from here on, while the captions are indexed
                if self.status is not None and not self.status.done:
                    self.status.stage = "\"Text -> images\" is ready; loading the caption index (\"Image -> captions\" waits for it)"
                self.catalogue.open_caption_index(retriever)
        else:
            retriever = ActivityRetriever.from_pretrained(path)
        self._publish(key, retriever)
        return retriever


def open_upload(path: str | os.PathLike, max_bytes: int) -> Any:
    """
    The uploaded image file at `path` as an RGB PIL image, after the checks the data paths apply (size first, then a
    full decode under Pillow's decompression-bomb limit); a `ValueError` saying what is wrong otherwise.
    """
    import PIL.Image

    from xmodal.data.fashion_sources import image_file_problem

    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"the upload is {size / 2**20:.1f} MB, over this server's limit of {max_bytes / 2**20:g} MB.")
    problem = image_file_problem(path)
    if problem is not None:
        raise ValueError(f"the upload is not a usable image: {problem.removeprefix(f'image file {os.fspath(path)!r}: ')}.")
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


def search_threads(count: int) -> Callable[[Callable], Callable]:
    """
    A decorator that runs a handler on one of `count` threads kept for the searches. Gradio calls handlers from a pool
    of up to 40 threads; each thread that runs the model grows its own allocator arena, so under load the server's
    memory grew with every new thread (bench/demo_load.py at commit 46c8258: 0.9 -> 2.9 GB at 16 clients); on a fixed few
    threads it levels off (1.6 GB).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=count, thread_name_prefix="xmodal-search")

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(*args):
            return pool.submit(handler, *args).result()

        return run

    return decorate


def _message(error: Exception) -> str:
    hint = ""
    if isinstance(error, FileNotFoundError):
        hint = " Train one first (`python train.py`) or enter another folder."
    return f"{error}{hint}"


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------


def build_demo(
    fashion: FashionCatalogue | None,
    activity: ActivityGallery | Deferred | None,
    fashionbert_model: str,
    map_ivr_model: str,
    rerank_top_n: int = RERANK_TOP_N,
    models: ModelCache | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    status: StartupStatus | None = None,
    concurrency_limit: int = 2,
):
    """
    The Gradio `Blocks` app over the given catalogue and video gallery (either may be None: its tabs then say so; the
    gallery may be `Deferred`, made after the page is up). `models` (default: a new `ModelCache` over `fashion`) lets
    the caller load the default checkpoints beforehand; when its `fixed_paths` are set the checkpoint fields are
    read-only (and the handlers refuse other paths). Uploads over `max_upload_mb` are refused with a message. While
    `status` is not done, the page shows what start-up is doing. The searches run on `concurrency_limit` threads of
    their own, whatever thread Gradio calls them from (see `search_threads`).
    """
    import gradio as gr
    import numpy as np
    import PIL.Image

    models = models if models is not None else ModelCache(rerank_top_n, fashion)
    changeable = models.fixed_paths is None
    on_search_threads = search_threads(concurrency_limit)

    def retriever(kind: str, path: str):
        try:
            return models.get(kind, path)
        except Exception as error:  # any load failure becomes a message on the page
            raise gr.Error(_message(error), print_exception=False) from None

    def catalogue_image(position: int) -> PIL.Image.Image:
        with PIL.Image.open(fashion.paths[position]) as image:
            return image.convert("RGB")

    def search_images(path: str, query: str, top_k: float):
        if fashion is None:
            raise gr.Error("the fashion catalogue is off (--no_fashion).", print_exception=False)
        if not (query or "").strip():
            gr.Warning("Type a description first.")
            return [], ""
        model = retriever("fashionbert", path)
        # One tile per product: rank enough views that the top-k products are all among them (each product has at
        # most `max_views`), then keep each product's best-scoring view.
        views = min(len(fashion.paths), int(top_k) * fashion.max_views)
        result = model.search_images(query, top_k=views, first_stage_k=max(rerank_top_n, views))
        hits = best_view_per_product(result.indices.tolist(), result.scores.tolist(), fashion.product_ids, int(top_k))
        # The catalogue's PNG files as they are: no decoding and re-encoding per query.
        items = [
            (fashion.paths[i], f"{rank}. score {s:.2f} | {fashion.product_ids[i]}: {fashion.captions[i]}")
            for rank, (i, s) in enumerate(hits, start=1)
        ]
        index, weight = model.index, model.model.config.fusion_weight
        reranker = "the cross-encoder" if weight is None else f"the fused score (w = {weight:g}) of the first stage and the cross-encoder"
        note = (
            f"The dual-encoder index ({index.kind}, {index.backend}) over {len(index):,} catalogue images gave its "
            f"{result.num_reranked} nearest; {reranker} re-ranked them"
        )
        if fashion.max_views > 1:
            note += "; each product is shown once, by its best-scoring view"
        return items, note + "."

    def search_captions(path: str, upload, pick: float, top_k: float):
        if fashion is None:
            raise gr.Error("the fashion catalogue is off (--no_fashion).", print_exception=False)
        truth = None
        if upload is not None:  # a file path (the component's type="filepath"): decoded here, with the guards
            try:
                image = open_upload(upload, int(max_upload_mb * 2**20))
            except (OSError, ValueError) as error:
                raise gr.Error(str(error), print_exception=False) from None
        else:
            position = int(pick)
            if not 0 <= position < len(fashion.paths):
                raise gr.Error(f"pick an image between 0 and {len(fashion.paths) - 1}.", print_exception=False)
            image, truth = catalogue_image(position), fashion.captions[position]
        model = retriever("fashionbert", path)
        if model.text_index is None:  # start-up is still indexing the captions
            models.settled()
        try:
            result = model.search_texts(image, top_k=int(top_k), first_stage_k=max(rerank_top_n, int(top_k)))
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
        gallery = activity.get() if isinstance(activity, Deferred) else activity
        index = int(pick)
        if not 0 <= index < len(gallery.labels):
            raise gr.Error(f"pick a query between 0 and {len(gallery.labels) - 1}.", print_exception=False)
        model = retriever("map_ivr", path)
        try:
            result = model.rank_videos(
                gallery.image_features[index],
                gallery.video_features,
                top_k=int(top_k),
                lambda_v=float(lambda_v),
                num_samples=int(num_samples),
                proposal_scores=gallery.proposal_scores,
            )
        except ValueError as error:  # e.g. a checkpoint trained on other features
            raise gr.Error(f"this checkpoint cannot score the synthetic gallery: {error}", print_exception=False) from None
        name = gallery.label_names
        items, rows = [], []
        for rank, i in enumerate(result.indices.tolist(), start=1):
            s_a, s_v, s_all = (float(x[rank - 1]) for x in (result.s_a, result.s_v, result.s_all))
            match = gallery.labels[i] == gallery.labels[index]
            items.append((gallery.gif(i), f"{rank}. {name[gallery.labels[i]]}{' (same class)' if match else ''} S_all {s_all:.3f}"))
            rows.append([rank, i, name[gallery.labels[i]], "yes" if match else "", round(s_a, 4), round(s_v, 4), round(s_all, 4)])
        query = PIL.Image.fromarray(np.asarray(gallery.images[index], dtype=np.uint8)).resize((128, 128), PIL.Image.NEAREST)
        return query, f"query class: {name[gallery.labels[index]]}", items, rows

    search_images, search_captions, search_videos = map(on_search_threads, (search_images, search_captions, search_videos))

    with gr.Blocks(title="xmodal retrieval") as demo:
        gr.Markdown("# xmodal retrieval\nFashionBERT catalogue search (dual-encoder index, then cross-encoder re-ranking) and MAP-IVR image-to-video retrieval on synthetic data.")
        if status is not None and not status.done:  # start-up goes on after the page is up: say what it is doing
            banner = gr.Markdown(status.markdown(), elem_id="startup-status")
            timer = gr.Timer(1.0)
            timer.tick(lambda: (status.markdown(), gr.Timer(active=not status.done)), None, [banner, timer], queue=False, show_progress="hidden")
        with gr.Tab("Text -> images"):
            if fashion is None:
                gr.Markdown("The fashion catalogue is off (`--no_fashion`).")
            fb_path = gr.Textbox(value=fashionbert_model, label="FashionBERT checkpoint (folder or Hub repo id)", elem_id="fashionbert-path", interactive=changeable)
            with gr.Row():
                query = gr.Textbox(label="Description", placeholder="e.g. red long-sleeve dress with a round neck", elem_id="text-query", scale=4)
                top_k = gr.Slider(1, 20, value=5, step=1, label="top-k", elem_id="text-top-k")
            search = gr.Button("Search images", variant="primary", elem_id="text-search")
            note = gr.Markdown(elem_id="text-note")
            results = gr.Gallery(label="Best matching products", columns=5, height="auto", elem_id="image-results", format="png")
            search.click(search_images, [fb_path, query, top_k], [results, note])
            query.submit(search_images, [fb_path, query, top_k], [results, note])
        with gr.Tab("Image -> captions"):
            fb_path2 = gr.Textbox(value=fashionbert_model, label="FashionBERT checkpoint (folder or Hub repo id)", interactive=changeable)
            with gr.Row():
                upload = gr.Image(type="filepath", label=f"Upload an image up to {max_upload_mb:g} MB (or leave empty and pick one below)", sources=["upload", "clipboard"])
                shown = gr.Image(type="pil", label="Query", interactive=False)
            size = len(fashion.paths) if fashion else 1
            with gr.Row():
                pick = gr.Slider(0, max(size - 1, 1), value=0, step=1, label="Catalogue image")
                top_k2 = gr.Slider(1, 20, value=5, step=1, label="top-k")
            search2 = gr.Button("Find captions", variant="primary")
            captions = gr.Dataframe(headers=["rank", "score", "caption", "ground truth"], label="Best captions", wrap=True)
            search2.click(search_captions, [fb_path2, upload, pick, top_k2], [shown, captions])
        with gr.Tab("Image -> videos (MAP-IVR)"):
            if activity is None:
                gr.Markdown("The activity gallery is off (`--no_activity`).")
            mi_path = gr.Textbox(value=map_ivr_model, label="MAP-IVR checkpoint (folder or Hub repo id)", interactive=changeable)
            size = (activity.size if isinstance(activity, Deferred) else len(activity.labels)) if activity else 1
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


FASHION_FLAGS = ("num_products", "views_per_product", "image_size", "catalogue_seed", "catalogue_dir", "rerank_top_n")
ACTIVITY_FLAGS = ("videos_per_class", "seed")


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One line (argparse's error, exit 2) for a flag that would be ignored or is out of range, before any work."""
    for off, names in (("no_fashion", FASHION_FLAGS), ("no_activity", ACTIVITY_FLAGS)):
        given = [name for name in names if getattr(args, name) != parser.get_default(name)]
        if getattr(args, off) and given:
            parser.error(f"--{given[0]}: has no effect with --{off}")
    if args.rerank_top_n < 1:
        parser.error(f"--rerank_top_n {args.rerank_top_n}: must be at least 1")
    if args.concurrency_limit < 1:
        parser.error(f"--concurrency_limit {args.concurrency_limit}: must be at least 1")
    if args.max_upload_mb <= 0:
        parser.error(f"--max_upload_mb {args.max_upload_mb:g}: must be positive")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("app.py needs Gradio: pip install gradio") from None
    fixed = None
    if not is_loopback(args.host) and not args.allow_checkpoint_change:
        fixed = {"fashionbert": args.fashionbert_model, "map_ivr": args.map_ivr_model}
        print(f"Serving beyond loopback ({args.host}): visitors use {args.fashionbert_model!r} and {args.map_ivr_model!r} "
              "only (--allow_checkpoint_change lets them load others).", flush=True)  # fmt: skip
    fashion = activity = None
    if not args.no_fashion:
        try:
            fashion = FashionCatalogue.open_or_render(
                args.catalogue_dir, args.num_products, args.views_per_product, args.image_size, args.catalogue_seed
            )
        except ValueError as error:
            parser.error(str(error))
    if not args.no_activity:
        from xmodal.data.activity_synthetic import ACTIVITY_CLASSES

        activity = Deferred(size=args.videos_per_class * len(ACTIVITY_CLASSES))
    serve(args, ModelCache(args.rerank_top_n, fashion, fixed, status=StartupStatus()), fashion, activity)


def serve(args: argparse.Namespace, models: ModelCache, fashion: FashionCatalogue | None, activity: Deferred | None) -> None:
    """
    Puts the page up at once, then does the rest of start-up behind it (the page says what, a search sent meanwhile
    waits): the default FashionBERT checkpoint with its catalogue indexes (built the first time), then the activity
    gallery.
    """
    status = models.status
    demo = build_demo(fashion, activity, args.fashionbert_model, args.map_ivr_model, args.rerank_top_n, models,
                      args.max_upload_mb, status, args.concurrency_limit)  # fmt: skip
    demo.queue(default_concurrency_limit=args.concurrency_limit).launch(
        server_name=args.host, server_port=args.port, share=False, inbrowser=False, prevent_thread_lock=True,
        max_file_size=f"{args.max_upload_mb:g}mb", allowed_paths=[str(fashion.folder / "images")] if fashion else None,
    )  # fmt: skip
    if fashion is not None:  # index the catalogue now (or load the saved indexes), not on the first query
        status.stage = f"loading {args.fashionbert_model!r} and its catalogue indexes (the first time: indexing {len(fashion.paths):,} images)"
        try:
            models.get("fashionbert", args.fashionbert_model)
        except Exception as error:  # the page says it again on use; the other tabs still work
            print(f"app.py: FashionBERT {args.fashionbert_model!r} not ready: {_message(error)}", flush=True)
    if activity is not None:
        status.stage = f"rendering the synthetic activity gallery ({args.videos_per_class} videos per class)"
        print(f"Rendering the synthetic activity test split ({args.videos_per_class} videos per class)...", flush=True)
        try:
            activity.set(ActivityGallery.synthetic(args.videos_per_class, args.seed))
        except Exception as error:  # the MAP-IVR tab reports it on use
            activity.set(error=error)
    status.done = True
    print("Ready.", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
