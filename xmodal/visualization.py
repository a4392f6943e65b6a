"""
Pictures of what a model does: a retrieval grid (query -> top-k, ground truth marked) and training curves (losses,
FashionBERT's task weights).

Both write PNGs with Pillow only; `save_training_curves` uses matplotlib instead when it is installed (it is not a
dependency of xmodal). `save_training_curves(..., backend="pil")` forces the Pillow drawing.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


__all__ = ["save_retrieval_grid", "save_training_curves", "TASK_WEIGHT_KEYS"]

# The keys train.py logs FashionBERT's task weights under (`loss_terms`).
TASK_WEIGHT_KEYS = ("weight_mlm", "weight_mpm", "weight_tia", "weight_itc")

_GREEN = (22, 163, 74)
_GREY = (180, 180, 180)
_INK = (20, 20, 20)
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # old Pillow: one fixed-size bitmap font
        return PIL.ImageFont.load_default()


def _as_image(item: Any, index: int) -> PIL.Image.Image:
    if isinstance(item, PIL.Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, os.PathLike)) and os.path.isfile(item):
        with PIL.Image.open(item) as opened:
            return opened.convert("RGB")
    array = np.asarray(item)
    if array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8:
        return PIL.Image.fromarray(array)
    raise ValueError(f"gallery item {index} is not an image (PIL image, (H, W, 3) uint8 array or image file).")


def _text_tile(text: str, size: int, font_size: int) -> PIL.Image.Image:
    tile = PIL.Image.new("RGB", (size, size), (250, 250, 250))
    draw = PIL.ImageDraw.Draw(tile)
    width = max(8, int(size / (0.6 * font_size)))
    lines = textwrap.wrap(text, width=width) or [""]
    max_lines = max(1, (size - 8) // (font_size + 2))
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 1] + "…"]
    draw.multiline_text((4, 4), "\n".join(lines), fill=_INK, font=_font(font_size), spacing=2)
    return tile


def _tile(item: Any, size: int, index: int, font_size: int) -> PIL.Image.Image:
    if isinstance(item, str) and not os.path.isfile(item):
        return _text_tile(item, size, font_size)
    return _as_image(item, index).resize((size, size), PIL.Image.BILINEAR)


def save_retrieval_grid(
    query: Any,
    gallery: Sequence[Any],
    indices: Sequence[int],
    scores: Sequence[float],
    path: str | os.PathLike,
    ground_truth: int | Sequence[int] = (),
    top_k: int = 5,
    tile_size: int = 128,
    title: str | None = None,
) -> Path:
    """
    One row: the query, then its top-k results with their scores; results in `ground_truth` get a green frame and
    "GT", and a note says when no ground truth made the top-k.

    Args:
        query: the query, a caption (`str`) or an image (PIL image, `(H, W, 3)` uint8 array or image path).
        gallery: the ranked collection, images or captions (`gallery[indices[i]]` is result i).
        indices: gallery indices of the results, best first (e.g. `RetrievalResult.indices`).
        scores: their scores (same length as `indices`).
        path: the PNG to write (parent folders are created).
        ground_truth: gallery index or indices of the correct results.
        top_k: at most this many results are drawn.
        tile_size: side of each square tile in pixels.
        title: a line above the row (default: none).

    Returns:
        `path` as a `Path`.
    """
    indices = [int(i) for i in list(indices)[:top_k]]
    scores = [float(s) for s in list(scores)[: len(indices)]]
    if len(scores) != len(indices):
        raise ValueError(f"got {len(indices)} indices but {len(scores)} scores.")
    for i in indices:
        if not 0 <= i < len(gallery):
            raise ValueError(f"result index {i} is outside the gallery (size {len(gallery)}).")
    truth = {int(ground_truth)} if isinstance(ground_truth, (int, np.integer)) else {int(g) for g in ground_truth}
    font_size = max(10, tile_size // 10)
    gap, label = 8, font_size * 2 + 8
    header = font_size + 10 if title else 0
    columns = 1 + len(indices)
    canvas = PIL.Image.new(
        "RGB", (columns * (tile_size + gap) + gap, header + tile_size + label + 2 * gap), (255, 255, 255)
    )
    draw = PIL.ImageDraw.Draw(canvas)
    font = _font(font_size)
    if title:
        draw.text((gap, gap // 2), title, fill=_INK, font=font)
    top = header + gap

    def place(tile: PIL.Image.Image, column: int, frame: tuple[int, int, int], width: int, caption: str) -> None:
        x = gap + column * (tile_size + gap)
        canvas.paste(tile, (x, top))
        draw.rectangle([x - width, top - width, x + tile_size + width - 1, top + tile_size + width - 1], outline=frame, width=width)
        draw.multiline_text((x, top + tile_size + 4), caption, fill=_INK, font=font, spacing=2)

    place(_tile(query, tile_size, -1, font_size), 0, _INK, 2, "query")
    for column, (index, score) in enumerate(zip(indices, scores), start=1):
        correct = index in truth
        caption = f"#{column} score {score:.3g}\nitem {index}" + ("  GT" if correct else "")
        place(_tile(gallery[index], tile_size, index, font_size), column, _GREEN if correct else _GREY, 4 if correct else 1, caption)
    if truth and not truth & set(indices):
        draw.text((gap, top + tile_size + label - 2), f"ground truth not in the top {len(indices)}", fill=(200, 30, 30), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def _curves(history: Sequence[Mapping[str, float]], keys: Sequence[str]) -> dict[str, tuple[list[float], list[float]]]:
    curves = {}
    for key in keys:
        points = [
            (float(row.get("step", i)), float(row[key]))
            for i, row in enumerate(history)
            if key in row and row[key] is not None and math.isfinite(float(row[key]))
        ]
        if points:
            curves[key] = ([p[0] for p in points], [p[1] for p in points])
    return curves


def save_training_curves(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    keys: Sequence[str] = TASK_WEIGHT_KEYS,
    title: str = "FashionBERT task weights",
    ylabel: str = "weight",
    references: Mapping[str, float] | None = None,
    backend: str = "auto",
) -> str:
    """
    Plot columns of a training history against the step, as a PNG.

    Args:
        history: rows like train.py's `train_history.json` (`{"step": 10, "weight_mlm": 0.33, ...}`); rows without
            a key are skipped for that curve.
        path: the PNG to write (parent folders are created).
        keys: the columns to plot (default: FashionBERT's `weight_mlm`, `weight_mpm`, `weight_tia`).
        title, ylabel: the chart's title and y-axis label.
        references: horizontal dashed lines, `{label: y}` (e.g. `{"chance (ln 2)": 0.693}`).
        backend: `"matplotlib"`, `"pil"`, or `"auto"` (matplotlib when installed, else Pillow).

    Returns:
        The backend that drew it: `"matplotlib"` or `"pil"`.

    Raises:
        ValueError: no row has any of `keys`, or an unknown `backend`.
    """
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"`backend` must be 'auto', 'matplotlib' or 'pil', got {backend!r}.")
    curves = _curves(history, keys)
    if not curves:
        raise ValueError(f"no row of the history has any of {list(keys)}: nothing to plot.")
    references = dict(references or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend in ("auto", "matplotlib"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if backend == "matplotlib":
                raise
        else:
            figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
            for key, (steps, values) in curves.items():
                axes.plot(steps, values, label=key, marker="o" if len(steps) == 1 else None)
            for label, y in references.items():
                axes.axhline(y, color="grey", linestyle="--", linewidth=1, label=label)
            axes.set_xlabel("step")
            axes.set_ylabel(ylabel)
            axes.set_title(title)
            axes.legend()
            axes.grid(alpha=0.3)
            figure.tight_layout()
            figure.savefig(path, format="png")
            plt.close(figure)
            return "matplotlib"
    _draw_curves_pil(curves, path, title, references)
    return "pil"


def _draw_curves_pil(
    curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str, references: Mapping[str, float]
) -> None:
    """A plain line chart with axes, tick labels and a legend, drawn with Pillow."""
    width, height = 640, 360
    left, right, top, bottom = 60, 150, 30, 40
    image = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    font = _font(12)
    xs = [x for steps, _ in curves.values() for x in steps]
    ys = [y for _, values in curves.values() for y in values] + list(references.values())
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = 0.05 * (y1 - y0) if y1 > y0 else 0.05
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * plot_w, top + (1 - (y - y0) / (y1 - y0)) * plot_h

    draw.text((left, 8), title, fill=_INK, font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=_INK)
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, py = to_pixel(x0, y)
        draw.line([left - 4, py, left, py], fill=_INK)
        draw.line([left + 1, py, left + plot_w - 1, py], fill=(235, 235, 235))
        draw.text((4, py - 6), f"{y:.3f}", fill=_INK, font=font)
        x = x0 + (x1 - x0) * k / 4
        px, _ = to_pixel(x, y0)
        draw.line([px, top + plot_h, px, top + plot_h + 4], fill=_INK)
        draw.text((px - 10, top + plot_h + 8), f"{x:g}", fill=_INK, font=font)
    draw.text((left + plot_w // 2 - 12, height - 16), "step", fill=_INK, font=font)
    for n, (label, y) in enumerate(references.items()):
        (px0, py), (px1, _) = to_pixel(x0, y), to_pixel(x1, y)
        for start in range(int(px0), int(px1), 10):  # dashed
            draw.line([start, py, min(start + 5, px1), py], fill=_GREY, width=1)
        draw.text((left + plot_w + 12, top + plot_h - 18 * (n + 1)), label, fill=_GREY, font=font)
    for n, (key, (steps, values)) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [to_pixel(x, y) for x, y in zip(steps, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points if len(points) <= 50 else points[:: max(1, len(points) // 50)]:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        ly = top + 10 + 18 * n
        draw.line([left + plot_w + 12, ly + 6, left + plot_w + 32, ly + 6], fill=colour, width=3)
        draw.text((left + plot_w + 38, ly), key, fill=_INK, font=font)
    image.save(path, format="PNG")
