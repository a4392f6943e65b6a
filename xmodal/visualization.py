"""
Pictures of what a model does: a retrieval grid (query -> top-k, ground truth marked) and training curves
(`save_training_curves`: any columns of the history, by default FashionBERT's task weights; `save_loss_curves`: every
`*_loss` column on one axis).

Both write PNGs with Pillow only; the curves use matplotlib instead when it is installed (it is not a dependency of
xmodal). `backend="pil"` forces the Pillow drawing.
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


__all__ = ["TASK_WEIGHT_KEYS", "loss_keys", "save_loss_curves", "save_retrieval_grid", "save_training_curves"]

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


def _curves(
    history: Sequence[Mapping[str, float]], keys: Sequence[str], log_scale: bool = False
) -> dict[str, tuple[list[float], list[float]]]:
    """`{key: (steps, values)}` for every key some row has (finite values; positive ones only on a log scale)."""
    curves = {}
    for key in keys:
        points = [
            (float(row.get("step", i)), float(row[key]))
            for i, row in enumerate(history)
            if key in row and row[key] is not None and math.isfinite(float(row[key])) and (not log_scale or float(row[key]) > 0)
        ]
        if points:
            curves[key] = ([p[0] for p in points], [p[1] for p in points])
    return curves


def loss_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key ending in `_loss` in the rows of `history`, in the order they first appear."""
    return list(dict.fromkeys(key for row in history for key in row if key.endswith("_loss")))


# How the n-th curve is drawn, so that equal curves stay visible: each later curve is thinner, drawn on top, dashed
# (the one below shows through its gaps) and has its own marker.
_LINE_STYLES = (  # (matplotlib linestyle, Pillow dash pattern in px (on, off) or None, marker)
    ("-", None, "o"),
    ("--", (9, 6), "s"),
    ("-.", (12, 4, 3, 4), "^"),
    (":", (3, 4), "D"),
    ((0, (6, 2, 1, 2, 1, 2)), (6, 2, 1, 2, 1, 2), "v"),
)


def _line_width(n: int, count: int) -> float:
    """Width of the n-th of `count` curves: the first drawn is the widest, the last 1.5."""
    return 1.5 + 1.25 * (count - 1 - n)


def _marker_positions(n: int, count: int, num_points: int) -> tuple[int, int]:
    """`(start, every)`: about 12 markers per curve, each curve's shifted so that equal curves' markers alternate."""
    every = max(1, num_points // 12)
    return (n * every) // count if every > 1 else 0, every


def save_training_curves(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    keys: Sequence[str] = TASK_WEIGHT_KEYS,
    title: str = "FashionBERT task weights",
    ylabel: str = "weight",
    references: Mapping[str, float] | None = None,
    backend: str = "auto",
    log_scale: bool = False,
) -> str:
    """
    Plot columns of a training history against the step, as a PNG, one axis, with a legend.

    Every curve stays visible where curves coincide (e.g. equal task weights): each is drawn thinner than the one
    before it, on top of it, with its own dash pattern and marker.

    Args:
        history: rows like train.py's `train_history.json` (`{"step": 10, "weight_mlm": 0.33, ...}`); rows without
            a key are skipped for that curve.
        path: the PNG to write (parent folders are created).
        keys: the columns to plot (default: FashionBERT's task weights `weight_mlm`, `weight_mpm`, `weight_tia`,
            `weight_itc`; those no row has are left out).
        title, ylabel: the chart's title and y-axis label.
        references: horizontal dashed grey lines, `{label: y}` (e.g. `{"chance (ln 2)": 0.693}`).
        backend: `"matplotlib"`, `"pil"`, or `"auto"` (matplotlib when installed, else Pillow).
        log_scale: a logarithmic y axis (values <= 0 are left out).

    Returns:
        The backend that drew it: `"matplotlib"` or `"pil"`.

    Raises:
        ValueError: no row has any of `keys`, or an unknown `backend`.
    """
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"`backend` must be 'auto', 'matplotlib' or 'pil', got {backend!r}.")
    curves = _curves(history, keys, log_scale)
    if not curves:
        raise ValueError(f"no row of the history has any of {list(keys)}: nothing to plot.")
    references = {k: v for k, v in (references or {}).items() if not log_scale or v > 0}
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
            _draw_curves_matplotlib(plt, curves, path, title, ylabel, references, log_scale)
            return "matplotlib"
    _draw_curves_pil(curves, path, title, references, log_scale)
    return "pil"


def save_loss_curves(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    keys: Sequence[str] | None = None,
    title: str = "Training losses",
    log_scale: bool = False,
    backend: str = "auto",
) -> str:
    """
    The loss curves of a training history on one axis, as a PNG: `save_training_curves` with `keys` defaulting to
    every key ending in `_loss` (`mlm_loss`, `tia_loss`, ...; `loss_keys`) and the y axis labelled "loss".

    Returns:
        The backend that drew it: `"matplotlib"` or `"pil"`.

    Raises:
        ValueError: no row has a loss to plot, or an unknown `backend`.
    """
    keys = loss_keys(history) if keys is None else list(keys)
    if not keys:
        raise ValueError("no row of the history has a key ending in '_loss': nothing to plot.")
    return save_training_curves(history, path, keys=keys, title=title, ylabel="loss", backend=backend, log_scale=log_scale)


def _draw_curves_matplotlib(
    plt, curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str, ylabel: str,
    references: Mapping[str, float], log_scale: bool,
) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for n, (key, (steps, values)) in enumerate(curves.items()):
        linestyle, _, marker = _LINE_STYLES[n % len(_LINE_STYLES)]
        axes.plot(
            steps, values, label=key, color=_rgb(_COLOURS[n % len(_COLOURS)]), linestyle=linestyle,
            linewidth=_line_width(n, len(curves)), marker=marker, markersize=4 + (len(curves) - 1 - n),
            markevery=_marker_positions(n, len(curves), len(steps)), zorder=2 + n,
        )  # fmt: skip
    for label, y in references.items():
        axes.axhline(y, color="grey", linestyle="--", linewidth=1, label=label, zorder=1)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in colour)


def _dashed(draw: PIL.ImageDraw.ImageDraw, points, colour, width: int, pattern: tuple[int, ...] | None) -> None:
    """A polyline, solid (`pattern` None) or dashed: `pattern` alternates drawn and skipped lengths in pixels."""
    if pattern is None:
        draw.line(points, fill=colour, width=width, joint="curve")
        return
    phase, index, drawing = 0.0, 0, True  # distance into the current dash, which dash, drawn or skipped
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        length = math.hypot(xb - xa, yb - ya)
        done = 0.0
        while length - done > 1e-9:
            remaining = pattern[index] - phase
            step = min(remaining, length - done)
            if drawing:
                t0, t1 = done / length, (done + step) / length
                draw.line([(xa + t0 * (xb - xa), ya + t0 * (yb - ya)), (xa + t1 * (xb - xa), ya + t1 * (yb - ya))], fill=colour, width=width)
            done += step
            if step >= remaining - 1e-9:
                phase, index, drawing = 0.0, (index + 1) % len(pattern), not drawing
            else:
                phase += step


def _marker(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, shape: str, size: float, colour) -> None:
    """A filled marker: circle "o", square "s", triangle "^" / "v", diamond "D"."""
    r = size
    if shape == "o":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "D":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)
    else:
        sign = 1 if shape == "^" else -1
        draw.polygon([(x, y - sign * (r + 1)), (x + r + 1, y + sign * r), (x - r - 1, y + sign * r)], fill=colour)


def _draw_curves_pil(
    curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str, references: Mapping[str, float],
    log_scale: bool = False,
) -> None:
    """A plain line chart with axes, tick labels and a legend, drawn with Pillow (y in log10 when `log_scale`)."""
    scale = (lambda y: math.log10(y)) if log_scale else (lambda y: y)
    curves = {key: (steps, [scale(y) for y in values]) for key, (steps, values) in curves.items()}
    references = {label: scale(y) for label, y in references.items()}
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

    draw.text((left, 8), title + (" (log scale)" if log_scale else ""), fill=_INK, font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=_INK)
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, py = to_pixel(x0, y)
        draw.line([left - 4, py, left, py], fill=_INK)
        draw.line([left + 1, py, left + plot_w - 1, py], fill=(235, 235, 235))
        draw.text((4, py - 6), f"{10 ** y:.3g}" if log_scale else f"{y:.3f}", fill=_INK, font=font)
        x = x0 + (x1 - x0) * k / 4
        px, _ = to_pixel(x, y0)
        draw.line([px, top + plot_h, px, top + plot_h + 4], fill=_INK)
        draw.text((px - 10, top + plot_h + 8), f"{x:g}", fill=_INK, font=font)
    draw.text((left + plot_w // 2 - 12, height - 16), "step", fill=_INK, font=font)
    for n, (label, y) in enumerate(references.items()):
        (px0, py), (px1, _) = to_pixel(x0, y), to_pixel(x1, y)
        _dashed(draw, [(px0, py), (px1, py)], _GREY, 1, (5, 5))
        draw.text((left + plot_w + 12, top + plot_h - 18 * (n + 1)), label, fill=_GREY, font=font)
    for n, (key, (steps, values)) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        _, pattern, shape = _LINE_STYLES[n % len(_LINE_STYLES)]
        line_width = round(_line_width(n, len(curves)))
        marker_size = 2 + (len(curves) - 1 - n)
        points = [to_pixel(x, y) for x, y in zip(steps, values)]
        if len(points) > 1:
            _dashed(draw, points, colour, line_width, pattern)
        start, every = _marker_positions(n, len(curves), len(points))
        for px, py in points[start::every]:
            _marker(draw, px, py, shape, marker_size, colour)
        ly = top + 10 + 18 * n
        _dashed(draw, [(left + plot_w + 8, ly + 6), (left + plot_w + 36, ly + 6)], colour, max(2, line_width), pattern)
        _marker(draw, left + plot_w + 22, ly + 6, shape, 3, colour)
        draw.text((left + plot_w + 42, ly), key, fill=_INK, font=font)
    image.save(path, format="PNG")
