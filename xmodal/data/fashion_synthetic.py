# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Synthetic fashion test bed: rendered garments with fine-grained factors and Fashion-Gen-style captions.

Every product is a set of independent factors (sub-category, colour, pattern, sleeves, neckline,
closure, drawstring, pockets, hem/cuffs). Images are drawn with PIL from those factors, captions are
written from the same factors, so everything a caption states is visible in the image. A product has
several views (small shift, scale and background tint); each view is one row with the product's
`product_id` and caption. Products are assigned to sub-categories round-robin and split into
train/validation/test *by product* within each sub-category, so every split has many products per
sub-category and same-sub-category negatives differ only in details.

Everything is a pure function of the seed: factors and captions of product `i` come from
`numpy.random.default_rng([seed, i, 0])`, view `v` from `default_rng([seed, i, 1 + v])`, so a
product looks the same whatever `num_products` is. Nothing is shipped as files.

Example:

```python
>>> from xmodal.data.fashion_synthetic import make_fashion_dataset
>>> ds = make_fashion_dataset(num_products=300, views_per_product=2, image_size=128, seed=0)
>>> ds["train"][0]["text"]
'Long sleeve hoodie in black. Drawstring at hood. Rib knit sleeve cuffs and hem.'  # for example
```
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image, ImageDraw, ImageFont


__all__ = [
    "COLOR_PALETTE",
    "SUBCATEGORY_OPTIONS",
    "PATTERNS",
    "FACTOR_COLUMNS",
    "GarmentFactors",
    "ViewParams",
    "sample_garment_factors",
    "sample_view",
    "render_garment",
    "describe_garment",
    "make_fashion_dataset",
    "generate_fashion_columns",
    "fashion_dataset_features",
    "save_sample_grid",
]

# --------------------------------------------------------------------------------------------
# Factor tables
# --------------------------------------------------------------------------------------------

# Colour names with RGB values. Near pairs on purpose: black/charcoal, navy/blue, blue/light blue,
# burgundy/red, cream/white, olive/green, mustard/yellow, beige/khaki, orange/mustard.
COLOR_PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (24, 24, 27),
    "charcoal": (66, 68, 74),
    "grey": (142, 144, 148),
    "white": (248, 248, 246),
    "cream": (236, 223, 188),
    "beige": (212, 190, 155),
    "khaki": (170, 152, 100),
    "brown": (105, 66, 38),
    "olive": (100, 108, 44),
    "green": (36, 128, 64),
    "navy": (26, 36, 88),
    "blue": (38, 88, 196),
    "light blue": (148, 190, 232),
    "purple": (108, 56, 150),
    "pink": (238, 148, 172),
    "burgundy": (108, 18, 40),
    "red": (204, 30, 36),
    "orange": (236, 118, 28),
    "mustard": (200, 152, 34),
    "yellow": (246, 212, 48),
}

PATTERNS: tuple[str, ...] = (
    "solid",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "polka dots",
    "plaid",
    "graphic print",
)

# Per sub-category: its category and the values each factor may take (drawn uniformly and
# independently), in the columns (category, sleeve_length, neckline, closure, drawstring, pockets, hem), the
# values of a factor separated by "|" (drawstring: "no" = False, "yes" = True). "none" marks a factor that does
# not apply (e.g. sleeves of trousers).
_OPTION_ROWS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("tops", "short|long", "crew neck|v-neck", "none|buttons", "no", "none|chest pocket", "plain"),
    "shirt": ("tops", "short|long", "spread collar", "buttons", "no", "none|chest pocket|patch pockets", "plain"),
    "hoodie": ("tops", "long|short|sleeveless", "hood", "none|zip", "no|yes", "kangaroo pocket|patch pockets|none", "rib knit|plain"),
    "sweater": ("tops", "long|sleeveless", "crew neck|v-neck", "none|buttons|zip", "no", "none|patch pockets", "rib knit|plain"),
    "trousers": ("bottoms", "none", "none", "zip|buttons|none", "no|yes", "none|patch pockets", "plain|rib knit"),
    "shorts": ("bottoms", "none", "none", "zip|buttons|none", "no|yes", "none|patch pockets", "plain|rib knit"),
    "skirt": ("bottoms", "none", "none", "none|zip|buttons", "no|yes", "none|patch pockets", "plain"),
    "a-line dress": ("dresses", "sleeveless|short|long", "crew neck|v-neck", "none|buttons|zip", "no|yes", "none|patch pockets", "plain"),
    "shift dress": ("dresses", "sleeveless|short|long", "crew neck|v-neck", "none|buttons|zip", "no|yes", "none|patch pockets", "plain"),
    "jacket": ("outerwear", "long|sleeveless", "stand collar|notched lapels", "zip|buttons", "no|yes", "patch pockets|chest pocket|none", "plain|rib knit"),
    "coat": ("outerwear", "long", "notched lapels|stand collar", "buttons|zip", "no|yes", "patch pockets|none", "plain"),
}


def _options(category: str, *factor_values: str) -> dict[str, object]:
    """A row of `_OPTION_ROWS` as an entry of `SUBCATEGORY_OPTIONS`: the category, then a tuple of values per factor."""
    options: dict[str, object] = {"category": category}
    for name, values in zip(("sleeve_length", "neckline", "closure", "drawstring", "pockets", "hem"), factor_values):
        options[name] = tuple(value == "yes" if name == "drawstring" else value for value in values.split("|"))
    return options


SUBCATEGORY_OPTIONS: dict[str, dict[str, object]] = {name: _options(*row) for name, row in _OPTION_ROWS.items()}

# Columns of the dataset besides image/text/product_id/view (the factors, in this order).
FACTOR_COLUMNS: tuple[str, ...] = (
    "category",
    "subcategory",
    "color",
    "pattern",
    "accent_color",
    "sleeve_length",
    "neckline",
    "closure",
    "drawstring",
    "pockets",
    "hem",
)

# Light background tints for the views (product photos on near-white).
_BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (244, 244, 244),
    (236, 236, 230),
    (232, 237, 242),
    (242, 235, 228),
    (228, 228, 228),
    (238, 242, 236),
)


@dataclass(frozen=True)
class GarmentFactors:
    """The factors of one synthetic product.

    Attributes:
        category (`str`): "tops", "bottoms", "dresses" or "outerwear".
        subcategory (`str`): a key of `SUBCATEGORY_OPTIONS` ("hoodie", "trousers", ...).
        color (`str`): main colour, a key of `COLOR_PALETTE`.
        pattern (`str`): one of `PATTERNS`.
        accent_color (`str`): colour of the stripes/dots/plaid/print, "none" when `pattern == "solid"`.
        sleeve_length (`str`): "short", "long", "sleeveless", or "none" (bottoms).
        neckline (`str`): "crew neck", "v-neck", "hood", "spread collar", "stand collar",
            "notched lapels", or "none" (bottoms).
        closure (`str`): "zip", "buttons" or "none".
        drawstring (`bool`): a drawstring at the hood (hoodie), waist (bottoms, dresses, coat) or hem (jacket).
        pockets (`str`): "patch pockets", "chest pocket", "kangaroo pocket" or "none".
        hem (`str`): "rib knit" (ribbed hem and cuffs, or waistband and cuffs for bottoms) or "plain".
    """

    category: str
    subcategory: str
    color: str
    pattern: str = "solid"
    accent_color: str = "none"
    sleeve_length: str = "none"
    neckline: str = "none"
    closure: str = "none"
    drawstring: bool = False
    pockets: str = "none"
    hem: str = "plain"

    def __post_init__(self):
        if self.subcategory not in SUBCATEGORY_OPTIONS:
            raise ValueError(
                f"subcategory must be one of {sorted(SUBCATEGORY_OPTIONS)}, got {self.subcategory!r}"
            )
        options = SUBCATEGORY_OPTIONS[self.subcategory]
        if self.category != options["category"]:
            raise ValueError(
                f"category of {self.subcategory!r} is {options['category']!r}, got {self.category!r}"
            )
        if self.color not in COLOR_PALETTE:
            raise ValueError(f"color must be one of {sorted(COLOR_PALETTE)}, got {self.color!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.pattern == "solid":
            if self.accent_color != "none":
                raise ValueError(f"accent_color must be 'none' for a solid pattern, got {self.accent_color!r}")
        elif self.accent_color not in COLOR_PALETTE:
            raise ValueError(
                f"accent_color must be one of {sorted(COLOR_PALETTE)} for pattern {self.pattern!r}, "
                f"got {self.accent_color!r}"
            )
        for name in ("sleeve_length", "neckline", "closure", "drawstring", "pockets", "hem"):
            value = getattr(self, name)
            if value not in options[name]:
                raise ValueError(
                    f"{name} of a {self.subcategory} must be one of {options[name]}, got {value!r}"
                )

    @classmethod
    def from_mapping(cls, row: Mapping) -> "GarmentFactors":
        """Builds the factors from a mapping with (at least) the factor columns, e.g. a dataset row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class ViewParams:
    """How one view of a product is photographed.

    Attributes:
        shift_x (`float`): horizontal shift of the garment, as a fraction of the image size.
        shift_y (`float`): vertical shift, as a fraction of the image size.
        scale (`float`): size of the garment relative to the canonical layout.
        background (`tuple[int, int, int]`): RGB background tint.
    """

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 0.96
    background: tuple[int, int, int] = (244, 244, 244)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _color_distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(COLOR_PALETTE[a], COLOR_PALETTE[b])))


def sample_garment_factors(rng: np.random.Generator, subcategory: str | None = None) -> GarmentFactors:
    """Draws one product's factors, each uniformly and independently of the others.

    Args:
        rng: the random generator.
        subcategory: fix the sub-category instead of drawing it.
    """
    names = list(SUBCATEGORY_OPTIONS)
    if subcategory is None:
        subcategory = names[int(rng.integers(len(names)))]
    options = SUBCATEGORY_OPTIONS[subcategory]
    colors = list(COLOR_PALETTE)
    color = colors[int(rng.integers(len(colors)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    # The accent must stand out from the main colour (never a near colour), so patterns stay visible.
    accents = [c for c in colors if _color_distance(c, color) > 140]
    accent = accents[int(rng.integers(len(accents)))]
    values = {}
    for name in ("sleeve_length", "neckline", "closure", "drawstring", "pockets", "hem"):
        choices = options[name]
        values[name] = choices[int(rng.integers(len(choices)))]
    return GarmentFactors(
        category=options["category"],
        subcategory=subcategory,
        color=color,
        pattern=pattern,
        accent_color="none" if pattern == "solid" else accent,
        **values,
    )


def sample_view(rng: np.random.Generator | None) -> ViewParams:
    """Draws one view: shift up to 4% of the image, scale 0.90-1.0, one of six light backgrounds.

    With `rng=None` returns the canonical view (centred, scale 0.96, light grey background).
    """
    if rng is None:
        return ViewParams()
    base = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))])
    jitter = rng.integers(-4, 5, size=3)
    return ViewParams(
        shift_x=float(rng.uniform(-0.04, 0.04)),
        shift_y=float(rng.uniform(-0.03, 0.03)),
        scale=float(rng.uniform(0.90, 1.0)),
        background=tuple(int(v) for v in np.clip(base + jitter, 200, 255)),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _mix(color, other, t: float) -> tuple[int, int, int]:
    return tuple(int(round(c * (1 - t) + o * t)) for c, o in zip(color, other))


def _luminance(color) -> float:
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b


def _shades(rgb) -> dict[str, tuple[int, int, int]]:
    """Derived colours: `detail` (seams, outlines, zips, buttons: always contrasts with the fabric),
    `inner` (inside of the garment seen through a neck opening), `band` (rib knit bands)."""
    dark = _luminance(rgb) < 80
    return {
        "detail": _mix(rgb, (255, 255, 255), 0.45) if dark else _mix(rgb, (0, 0, 0), 0.5),
        "inner": _mix(rgb, (0, 0, 0), 0.35) if not dark else _mix(rgb, (255, 255, 255), 0.12),
        "band": _mix(rgb, (255, 255, 255), 0.18) if dark else _mix(rgb, (0, 0, 0), 0.16),
    }


class _Pen:
    """Draws in normalised garment coordinates ([0, 1]^2, y down) on a pixel canvas of one view."""

    def __init__(self, image: Image.Image, view: ViewParams, supersample: int = 1):
        self.draw = ImageDraw.Draw(image)
        self.size = image.size[0]
        self.view = view
        self.k = view.scale * self.size
        self.ss = supersample
        # Width of seams and outlines, in canvas pixels: never thinner than one output pixel.
        self.lw = max(supersample, int(round(self.size * 0.008)))

    def p(self, x: float, y: float) -> tuple[float, float]:
        v = self.view
        return (((x - 0.5) * v.scale + 0.5 + v.shift_x) * self.size, ((y - 0.5) * v.scale + 0.5 + v.shift_y) * self.size)

    def pts(self, points) -> list[tuple[float, float]]:
        return [self.p(x, y) for x, y in points]

    def polygon(self, points, fill=None, outline=None, width: int | None = None):
        self.draw.polygon(self.pts(points), fill=fill, outline=outline, width=self.lw if width is None else width)

    def line(self, points, fill, width: float = 1.0):
        self.draw.line(self.pts(points), fill=fill, width=max(1, int(round(self.lw * width))), joint="curve")

    def rect(self, x0, y0, x1, y1, fill=None, outline=None):
        (a, b), (c, d) = self.p(x0, y0), self.p(x1, y1)
        self.draw.rectangle((a, b, c, d), fill=fill, outline=outline, width=self.lw)

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None):
        (a, b), (c, d) = self.p(cx - rx, cy - ry), self.p(cx + rx, cy + ry)
        self.draw.ellipse((a, b, c, d), fill=fill, outline=outline, width=self.lw)

    def dot(self, cx, cy, r, fill, outline=None):
        """A circle at least one output pixel in radius, so buttons survive small images."""
        x, y = self.p(cx, cy)
        rp = max(1.0 * self.ss, r * self.k)
        self.draw.ellipse((x - rp, y - rp, x + rp, y + rp), fill=fill, outline=outline)


def _arc(cx, cy, rx, ry, a0, a1, n=10):
    """Points on an elliptical arc from angle a0 to a1 (degrees, 0 = +x, 90 = +y i.e. downwards)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(a0, a1, n)
    ]


def _mirror(points):
    return [(1.0 - x, y) for x, y in points]


@dataclass
class _Sleeve:
    polygon: list
    cuff_center: tuple[float, float]
    direction: tuple[float, float]
    normal: tuple[float, float]
    cuff_width: float


def _sleeve(shoulder, armpit, length: str, long_len: float = 0.44) -> _Sleeve | None:
    """The viewer's-left sleeve hanging from the shoulder-armpit seam (mirror it for the right)."""
    if length in ("none", "sleeveless"):
        return None
    if length == "long":
        angle, reach, cuff = 27.0, long_len, 0.075
    else:
        angle, reach, cuff = 56.0, 0.14, 0.11
    d = (-math.sin(math.radians(angle)), math.cos(math.radians(angle)))
    n = (d[1], -d[0])  # perpendicular, pointing towards the body and down
    mx, my = (shoulder[0] + armpit[0]) / 2, (shoulder[1] + armpit[1]) / 2
    c = (mx + d[0] * reach, my + d[1] * reach)
    outer = (c[0] - n[0] * cuff / 2, c[1] - n[1] * cuff / 2)
    inner = (c[0] + n[0] * cuff / 2, c[1] + n[1] * cuff / 2)
    return _Sleeve([shoulder, outer, inner, armpit], c, d, n, cuff)


def _cuff_band(s: _Sleeve, depth: float = 0.04):
    c, d, n, h = s.cuff_center, s.direction, s.normal, s.cuff_width / 2 + 0.004
    b = (c[0] - d[0] * depth, c[1] - d[1] * depth)
    return [
        (c[0] - n[0] * h, c[1] - n[1] * h),
        (c[0] + n[0] * h, c[1] + n[1] * h),
        (b[0] + n[0] * h, b[1] + n[1] * h),
        (b[0] - n[0] * h, b[1] - n[1] * h),
    ]


@dataclass
class _Layout:
    """Where everything goes for one garment, in normalised coordinates."""

    parts: list  # polygons filled with the fabric (pattern applies)
    closure_line: tuple[float, float, float]  # x, y_top, y_bottom of the front closure
    print_anchor: tuple[float, float]  # centre of the graphic print
    sleeves: list  # _Sleeve objects (both sides), for rib cuffs
    hem_band: list | None = None  # polygon(s) of the rib knit hem/waistband
    leg_cuffs: list | None = None  # polygons of rib knit leg cuffs (bottoms)
    pocket_rects: list | None = None  # rectangles (x0, y0, x1, y1) of patch pockets
    chest_pocket: tuple | None = None
    kangaroo: list | None = None
    drawstring: tuple | None = None  # (x_left, x_right, y_top, y_bottom)
    neck: dict | None = None  # neckline description for the tops
    waistband: list | None = None  # polygon of the (plain) waistband of bottoms
    seams: list | None = None  # extra seam polylines (waist seam, crotch...)


def _top_layout(f: GarmentFactors) -> _Layout:
    """Tops, outerwear and dresses: a torso with sleeves, neckline and front details."""
    sub = f.subcategory
    # (shoulder y, hem y, half width of the torso, half width of the neck, long sleeve reach)
    y0, y1, w, nw, reach = {
        "t-shirt": (0.20, 0.82, 0.19, 0.065, 0.44),
        "shirt": (0.20, 0.84, 0.19, 0.06, 0.46),
        "hoodie": (0.25, 0.84, 0.20, 0.07, 0.44),
        "sweater": (0.20, 0.82, 0.19, 0.065, 0.44),
        "jacket": (0.19, 0.82, 0.21, 0.075, 0.46),
        "coat": (0.10, 0.94, 0.20, 0.07, 0.50),
        "a-line dress": (0.12, 0.94, 0.15, 0.06, 0.40),
        "shift dress": (0.12, 0.94, 0.16, 0.06, 0.40),
    }[sub]
    dress = f.category == "dresses"
    shoulder = (0.5 - w - 0.03, y0 + 0.035)
    armpit = (0.5 - w, y0 + (0.15 if dress else 0.17))
    neck_l = (0.5 - nw, y0)
    back = [(0.5 - nw * 0.5, y0 - 0.018), (0.5 + nw * 0.5, y0 - 0.018)]
    if dress:
        waist_y = 0.44
        hem_w = 0.31 if sub == "a-line dress" else 0.18
        left = [neck_l, shoulder, armpit, (0.5 - w + 0.02, waist_y), (0.5 - hem_w, y1)]
        hem_curve = [(x, y1 + (0.025 if sub == "a-line dress" else 0.006) * (1 - ((x - 0.5) / hem_w) ** 2))
                     for x in np.linspace(0.5 - hem_w, 0.5 + hem_w, 9)[1:-1]]
        body = left + hem_curve + _mirror(left)[::-1]
    else:
        left = [neck_l, shoulder, armpit, (0.5 - w, y1)]
        body = left + _mirror(left)[::-1]
    body = body[:] + back[::-1]  # close over the back of the neck
    parts = [body]
    sleeves = []
    s = _sleeve(shoulder, armpit, f.sleeve_length, long_len=reach)
    if s is not None:
        # The right sleeve is the mirror image of the left one.
        right = _Sleeve(_mirror(s.polygon), (1 - s.cuff_center[0], s.cuff_center[1]),
                        (-s.direction[0], s.direction[1]), (-s.normal[0], s.normal[1]), s.cuff_width)
        sleeves = [s, right]
        parts = [s.polygon, right.polygon] + parts
    if f.neckline == "hood":
        parts.insert(0, _arc(0.5, y0 - 0.035, 0.125, 0.115, 0, 360, 24))

    # Neckline and where the front closure starts.
    neck = {"kind": f.neckline, "y0": y0, "nw": nw}
    closure_top = y0 + 0.05
    if f.neckline == "v-neck":
        closure_top = y0 + 0.11
    elif f.neckline == "notched lapels":
        closure_top = y0 + 0.17
    elif f.neckline == "hood":
        closure_top = y0 + 0.06
    closure_bottom = 0.44 if dress else y1
    if sub == "t-shirt" and f.closure == "buttons":
        closure_bottom = closure_top + 0.12  # a short button placket at the neck

    mid = y0 + 0.40 * ((0.44 if dress else y1) - y0)
    if f.neckline == "hood":
        mid = y0 + 0.29
    layout = _Layout(
        parts=parts,
        closure_line=(0.5, closure_top, closure_bottom),
        print_anchor=(0.5, mid),
        sleeves=sleeves,
        neck=neck,
    )
    if f.hem == "rib knit":
        layout.hem_band = [[(0.5 - w, y1 - 0.045), (0.5 + w, y1 - 0.045), (0.5 + w, y1), (0.5 - w, y1)]]
    pocket_bottom = 0.64 if dress else y1 - 0.07
    pocket_top = pocket_bottom - (0.10 if dress else 0.12)
    pw = 0.10
    px = 0.5 - (0.13 if dress else w - 0.015 - pw / 2)
    if f.pockets == "patch pockets":
        layout.pocket_rects = [(px - pw / 2, pocket_top, px + pw / 2, pocket_bottom),
                               (1 - px - pw / 2, pocket_top, 1 - px + pw / 2, pocket_bottom)]
    elif f.pockets == "chest pocket":
        cx = 0.5 + w * 0.55
        layout.chest_pocket = (cx - 0.04, y0 + 0.10, cx + 0.04, y0 + 0.185)
    elif f.pockets == "kangaroo pocket":
        b, t = y1 - 0.06, y1 - 0.19
        layout.kangaroo = [(0.5 - 0.14, b), (0.5 + 0.14, b), (0.5 + 0.105, t), (0.5 - 0.105, t)]
    if f.drawstring:
        if f.neckline == "hood":
            layout.drawstring = (0.5 - 0.035, 0.5 + 0.035, y0 + 0.05, y0 + 0.17)
        elif sub == "jacket":
            layout.drawstring = (0.5 - 0.12, 0.5 + 0.12, y1 - 0.01, y1 + 0.07)
        else:  # waist of a dress or coat: a tie across the waist with hanging ends
            wy = 0.44 if dress else y0 + 0.36
            spread = 0.03 if dress else 0.08  # a coat's cords hang clear of its front closure
            layout.drawstring = (0.5 - spread, 0.5 + spread, wy, wy + 0.13)
            half = (w - 0.02) if dress else w
            layout.seams = [[(0.5 - half, wy), (0.5 + half, wy)]]
    if dress:
        layout.seams = (layout.seams or []) + [[(0.5 - w + 0.02, 0.44), (0.5 + w - 0.02, 0.44)]]
    return layout


def _bottom_layout(f: GarmentFactors) -> _Layout:
    sub = f.subcategory
    if sub == "trousers":
        top, crotch, hem, ww = 0.06, 0.40, 0.96, 0.17
        left = [(0.5 - ww, top), (0.5 - ww - 0.02, 0.30), (0.5 - ww, hem), (0.5 - 0.03, hem), (0.5, crotch)]
        leg_l = (0.5 - ww, 0.5 - 0.03)
    elif sub == "shorts":
        top, crotch, hem, ww = 0.16, 0.50, 0.76, 0.21
        left = [(0.5 - ww, top), (0.5 - ww - 0.025, 0.40), (0.5 - ww - 0.05, hem), (0.5 - 0.025, hem), (0.5, crotch)]
        leg_l = (0.5 - ww - 0.05, 0.5 - 0.025)
    else:  # skirt
        top, crotch, hem, ww = 0.14, 0.40, 0.82, 0.17
        hw = 0.29
        curve = [(x, hem + 0.02 * (1 - ((x - 0.5) / hw) ** 2)) for x in np.linspace(0.5 - hw, 0.5 + hw, 9)]
        left = [(0.5 - ww, top)] + curve[:5]
        leg_l = None
    body = left + _mirror(left)[::-1] if sub != "skirt" else [(0.5 - ww, top)] + curve + [(0.5 + ww, top)]
    band_h = 0.055
    waistband = [(0.5 - ww, top), (0.5 + ww, top), (0.5 + ww + 0.003, top + band_h), (0.5 - ww - 0.003, top + band_h)]
    layout = _Layout(
        parts=[body],
        closure_line=(0.5, top + band_h, crotch - 0.06 if sub != "skirt" else top + 0.30),
        print_anchor=(0.5 - 0.095, 0.55) if sub == "trousers" else (0.5 - 0.11, 0.52) if sub == "shorts" else (0.5, 0.55),
        sleeves=[],
        waistband=waistband,
    )
    if sub == "skirt" and f.closure == "buttons":
        layout.closure_line = (0.5, top + band_h, hem - 0.02)
    if f.hem == "rib knit":
        layout.hem_band = [waistband]
        if leg_l is not None:
            x0, x1 = leg_l
            layout.leg_cuffs = [[(x0 + 0.004, hem - 0.05), (x1, hem - 0.05), (x1, hem), (x0, hem)]]
            layout.leg_cuffs.append(_mirror(layout.leg_cuffs[0]))
    if f.pockets == "patch pockets":
        pt = top + band_h + 0.04
        pw, ph = 0.095, 0.11
        px = 0.5 - ww + 0.02 + pw / 2 + (0.0 if sub != "shorts" else 0.01)
        layout.pocket_rects = [(px - pw / 2, pt, px + pw / 2, pt + ph), (1 - px - pw / 2, pt, 1 - px + pw / 2, pt + ph)]
    if f.drawstring:
        # Off the centre line so the cords never hide a fly zip or buttons.
        layout.drawstring = (0.5 - 0.045, 0.5 + 0.045, top + band_h * 0.6, top + band_h + 0.12)
    return layout


def _pattern_fill(f: GarmentFactors, view: ViewParams, size: int, image_size: int) -> Image.Image:
    """The fabric as a full-canvas RGB image: main colour plus the pattern, computed with numpy
    in garment coordinates (so the pattern moves and scales with the view)."""
    base = tuple(COLOR_PALETTE[f.color])
    fabric = Image.new("RGB", (size, size), base)
    if f.pattern in ("solid", "graphic print"):
        return fabric
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    u = ((coords - 0.5 - view.shift_x) / view.scale + 0.5)[None, :]  # (1, W)
    v = ((coords - 0.5 - view.shift_y) / view.scale + 0.5)[:, None]  # (H, 1)
    # Where the accent colour goes, as an 8-bit alpha (0 = main colour, 255 = accent); PIL then
    # blends the accent colour through it, which is much faster than per-pixel RGB in numpy.
    # Periods never shrink below ~6 output pixels, so patterns stay visible at 64 px.
    if f.pattern.endswith("stripes"):
        period = max(0.06, 6.0 / image_size)
        if f.pattern == "horizontal stripes":
            alpha = np.broadcast_to(((v / period) % 1.0 < 0.5) * np.uint8(255), (size, size))
        elif f.pattern == "vertical stripes":
            alpha = np.broadcast_to(((u / period) % 1.0 < 0.5) * np.uint8(255), (size, size))
        else:
            alpha = (((u + v) / (period * 1.4142)) % 1.0 < 0.5) * np.uint8(255)
    elif f.pattern == "polka dots":
        step = max(0.07, 7.0 / image_size)
        radius = 0.27 * step
        row = np.floor(v / step)
        du = ((u + (row % 2) * step / 2) % step) - step / 2
        dv = (v % step) - step / 2
        alpha = (du * du + dv * dv < radius * radius) * np.uint8(255)
    else:  # plaid: crossing bands; single bands half-blended (140), crossings in the accent (255)
        period = max(0.10, 10.0 / image_size)
        hb = ((v / period) % 1.0 < 0.32) * np.uint8(140)
        vb = ((u / period) % 1.0 < 0.32) * np.uint8(140)
        alpha = np.minimum(hb.astype(np.uint16) + vb, 255).astype(np.uint8)
    mask = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), "L")
    fabric.paste(tuple(COLOR_PALETTE[f.accent_color]), (0, 0, size, size), mask)
    return fabric


def _star(cx, cy, r_out, r_in, n=5):
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = math.radians(-90 + 180 * i / n)
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _draw_neck(pen: _Pen, f: GarmentFactors, lay: _Layout, rgb, sh):
    neck = lay.neck
    if neck is None:
        return
    y0, nw, kind = neck["y0"], neck["nw"], neck["kind"]
    back = _arc(0.5, y0, nw, 0.012, 180, 360, 8)  # back of the neck opening
    if kind == "crew neck":
        hole = back + _arc(0.5, y0, nw, 0.055, 0, 180, 10)
        pen.polygon(hole, fill=sh["inner"], outline=sh["detail"], width=pen.lw * 2)
    elif kind == "v-neck":
        hole = back + [(0.5 + nw, y0), (0.5, y0 + 0.12), (0.5 - nw, y0)]
        pen.polygon(hole, fill=sh["inner"], outline=sh["detail"], width=pen.lw * 2)
    elif kind == "hood":
        pen.polygon(_arc(0.5, y0 - 0.02, 0.072, 0.085, 0, 360, 20), fill=sh["inner"], outline=sh["detail"])
    elif kind == "spread collar":
        pen.polygon(back + [(0.5 + nw, y0), (0.5, y0 + 0.05), (0.5 - nw, y0)], fill=sh["inner"])
        left = [(0.5 - nw - 0.008, y0 - 0.012), (0.5, y0 + 0.045), (0.5 - 0.03, y0 + 0.085), (0.5 - nw - 0.035, y0 + 0.04)]
        pen.polygon(left, fill=rgb, outline=sh["detail"])
        pen.polygon(_mirror(left), fill=rgb, outline=sh["detail"])
    elif kind == "stand collar":
        band = [(0.5 - nw - 0.01, y0 - 0.045), (0.5 + nw + 0.01, y0 - 0.045), (0.5 + nw + 0.012, y0 + 0.03),
                (0.5 - nw - 0.012, y0 + 0.03)]
        pen.polygon(band, fill=rgb, outline=sh["detail"])
        pen.polygon(_arc(0.5, y0 - 0.045, nw, 0.015, 0, 180, 8) + _arc(0.5, y0 - 0.045, nw, 0.01, 180, 360, 8),
                    fill=sh["inner"])
    elif kind == "notched lapels":
        v = y0 + 0.17
        pen.polygon(back + [(0.5 + nw, y0), (0.5, v), (0.5 - nw, y0)], fill=sh["inner"])
        left = [(0.5 - nw, y0 - 0.005), (0.5 - nw - 0.035, y0 + 0.06), (0.5 - nw - 0.01, y0 + 0.075),
                (0.5 - nw - 0.03, y0 + 0.095), (0.5, v), (0.5 - nw + 0.012, y0 + 0.02)]
        pen.polygon(left, fill=rgb, outline=sh["detail"])
        pen.polygon(_mirror(left), fill=rgb, outline=sh["detail"])


def _draw_rib(pen: _Pen, polygon, sh):
    """A rib knit band: darker band with fine vertical ribs (ribs only where pixels allow)."""
    pen.polygon(polygon, fill=sh["band"], outline=sh["detail"])
    step = 0.018
    if step * pen.k < 3.5:
        return
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    if len(polygon) == 4 and abs(polygon[0][1] - polygon[1][1]) < 1e-6:
        # Axis-aligned band (hem, waistband, leg cuff): vertical ribs.
        for x in np.arange(min(xs) + step, max(xs) - step / 2, step):
            pen.line([(x, min(ys) + 0.006), (x, max(ys) - 0.006)], fill=sh["detail"], width=0.5)
    else:
        # Sleeve cuff: ribs parallel to the sleeve, i.e. from the cuff edge to the band's inner edge.
        a, b, c, d = polygon
        for t in np.linspace(0.15, 0.85, 5):
            p = (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
            q = (d[0] + (c[0] - d[0]) * t, d[1] + (c[1] - d[1]) * t)
            pen.line([p, q], fill=sh["detail"], width=0.5)


def _draw_closure(pen: _Pen, f: GarmentFactors, lay: _Layout, sh):
    x, y_top, y_bot = lay.closure_line
    if f.closure == "zip":
        pen.line([(x, y_top), (x, y_bot)], fill=sh["detail"], width=1.5)
        if 0.012 * pen.k >= 3:  # zip teeth when they can be seen
            for y in np.arange(y_top + 0.01, y_bot - 0.005, 0.012):
                pen.line([(x - 0.008, y), (x + 0.008, y)], fill=sh["detail"], width=0.5)
        pen.rect(x - 0.012, y_top, x + 0.012, y_top + 0.035, fill=sh["detail"])  # zip pull
    elif f.closure == "buttons":
        if f.category != "bottoms" or f.subcategory == "skirt":
            pen.line([(x - 0.022, y_top), (x - 0.022, y_bot)], fill=sh["detail"], width=0.6)  # placket edge
        count = max(2, int(round((y_bot - y_top) / 0.075)) + 1)
        for y in np.linspace(y_top + 0.02, y_bot - 0.02, count):
            pen.dot(x, y, 0.014, fill=sh["detail"])


def render_garment(
    factors: GarmentFactors | Mapping,
    image_size: int = 256,
    view_rng: np.random.Generator | ViewParams | None = None,
    supersample: int | None = None,
) -> Image.Image:
    """Renders one view of a garment as an RGB PIL image of `image_size` x `image_size`.

    Args:
        factors: the product's factors (`GarmentFactors` or a mapping with the factor columns).
        image_size: side of the square image in pixels (>= 32).
        view_rng: a random generator to draw the view from (`sample_view`), explicit `ViewParams`,
            or None for the canonical view.
        supersample: draw at this multiple of `image_size` and downsample (anti-aliasing).
            Default: 2 up to 160 px, 1 above.
    """
    if not isinstance(factors, GarmentFactors):
        factors = GarmentFactors.from_mapping(factors)
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    view = view_rng if isinstance(view_rng, ViewParams) else sample_view(view_rng)
    ss = supersample if supersample is not None else (2 if image_size <= 160 else 1)
    size = image_size * ss
    f = factors
    rgb = COLOR_PALETTE[f.color]
    sh = _shades(rgb)
    lay = _bottom_layout(f) if f.category == "bottoms" else _top_layout(f)

    image = Image.new("RGB", (size, size), view.background)
    pen = _Pen(image, view, ss)
    if f.pattern in ("solid", "graphic print"):
        # 1. Plain fabric: fill the silhouette directly.
        for part in lay.parts:
            pen.polygon(part, fill=rgb, outline=rgb)
    else:
        # 1. Silhouette mask, 2. patterned fabric pasted through it on the background.
        mask = Image.new("L", (size, size), 0)
        mask_pen = _Pen(mask, view)
        for part in lay.parts:
            mask_pen.polygon(part, fill=255, outline=255)
        image.paste(_pattern_fill(f, view, size, image_size), (0, 0), mask)
    # 3. Seams: outline of every part (sleeve seams cross the body like armhole seams).
    for part in lay.parts:
        pen.polygon(part, outline=sh["detail"])
    for seam in lay.seams or []:
        pen.line(seam, fill=sh["detail"])
    # 4. Details, each drawn in the contrasting detail colour.
    if f.pattern == "graphic print":
        cx, cy = lay.print_anchor
        accent = COLOR_PALETTE[f.accent_color]
        # No outline: the accent always contrasts with the fabric, and an outline would swamp a small star.
        pen.polygon(_star(cx, cy, 0.075, 0.032), fill=accent, outline=accent, width=1)
    if lay.waistband is not None and lay.hem_band is None:
        pen.polygon(lay.waistband, outline=sh["detail"])
    for band in lay.hem_band or []:
        _draw_rib(pen, band, sh)
    for band in lay.leg_cuffs or []:
        _draw_rib(pen, band, sh)
    if f.hem == "rib knit":
        for s in lay.sleeves:
            _draw_rib(pen, _cuff_band(s), sh)
    _draw_neck(pen, f, lay, rgb, sh)
    for x0, y0, x1, y1 in lay.pocket_rects or []:
        pen.rect(x0, y0, x1, y1, outline=sh["detail"])
        pen.line([(x0 + 0.01, y0 + 0.02), (x1 - 0.01, y0 + 0.02)], fill=sh["detail"], width=0.5)
    if lay.chest_pocket is not None:
        x0, y0, x1, y1 = lay.chest_pocket
        pen.rect(x0, y0, x1, y1, outline=sh["detail"])
    if lay.kangaroo is not None:
        pen.polygon(lay.kangaroo, outline=sh["detail"])
        (bl, br, tr, tl) = lay.kangaroo
        pen.line([tl, (tl[0] - 0.02, (tl[1] + bl[1]) / 2)], fill=sh["detail"])  # slanted hand openings
        pen.line([tr, (tr[0] + 0.02, (tr[1] + br[1]) / 2)], fill=sh["detail"])
    _draw_closure(pen, f, lay, sh)
    if lay.drawstring is not None:
        xl, xr, yt, yb = lay.drawstring
        cord = sh["detail"]
        for x, lean in ((xl, -0.012), (xr, 0.012)):
            pen.line([(x, yt), (x + lean, yb)], fill=cord, width=1.2)
            pen.rect(x + lean - 0.008, yb - 0.005, x + lean + 0.008, yb + 0.02, fill=cord)  # aglet
    if ss > 1:
        image = image.reduce(ss)
    return image


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_SLEEVE_WORDS = {"short": "short sleeve", "long": "long sleeve", "sleeveless": "sleeveless", "none": ""}
_NECK_SENTENCES = {
    "crew neck": ("Crewneck collar.", "Crew neck collar.", "Crew neck."),
    "v-neck": ("V-neck collar.", "V-neck."),
    "spread collar": ("Spread collar.", "Spread collar at neck."),
    "stand collar": ("Stand collar.", "High stand collar."),
    "notched lapels": ("Notched lapel collar.", "Notched lapels."),
}
_NECK_ADJECTIVES = {"crew neck": "crewneck", "v-neck": "v-neck"}
_STRIPE_WORDS = {"horizontal stripes": "horizontal", "vertical stripes": "vertical", "diagonal stripes": "diagonal"}


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _headline(f: GarmentFactors, rng: np.random.Generator, neck_in_headline: bool) -> str:
    sleeve = _SLEEVE_WORDS[f.sleeve_length]
    noun = f.subcategory
    if neck_in_headline:
        noun = f"{_NECK_ADJECTIVES[f.neckline]} {noun}"
    lead = f"{sleeve} {noun}".strip()
    color, accent = f.color, f.accent_color
    if f.pattern == "solid" or f.pattern == "graphic print":
        text = _choice(rng, (f"{lead} in {color}", f"{color} {lead}"))
    elif f.pattern in _STRIPE_WORDS:
        o = _STRIPE_WORDS[f.pattern]
        text = _choice(rng, (
            f"{lead} in {color} with {accent} {o} stripes",
            f"{color} and {accent} {o}-striped {lead}",
            f"{o}-striped {lead} in {color} and {accent}",
        ))
    elif f.pattern == "polka dots":
        text = _choice(rng, (
            f"{lead} in {color} with {accent} polka dots",
            f"{color} polka dot {lead} with {accent} dots",
        ))
    else:  # plaid
        text = _choice(rng, (f"{color} and {accent} plaid {lead}", f"plaid {lead} in {color} and {accent}"))
    return text[0].upper() + text[1:] + "."


def describe_garment(factors: GarmentFactors | Mapping, rng: np.random.Generator) -> str:
    """Writes a Fashion-Gen-style caption stating every factor (phrasing and order vary with `rng`).

    The headline names sleeves, sub-category, colours and pattern; the detail sentences (neckline,
    closure, drawstring, pockets, rib knit) follow in random order, sometimes merged ("Zip closure
    and patch pockets at front."). Factors whose value is "none"/"plain"/False are not mentioned.
    """
    f = factors if isinstance(factors, GarmentFactors) else GarmentFactors.from_mapping(factors)
    bottoms = f.category == "bottoms"
    neck_in_headline = f.neckline in _NECK_ADJECTIVES and bool(rng.random() < 0.4)
    sentences = [_headline(f, rng, neck_in_headline)]
    details: list[str] = []
    if f.pattern == "graphic print":
        details.append(_choice(rng, (f"Graphic print in {f.accent_color} at front.",
                                     f"{f.accent_color.capitalize()} star graphic print at front.")))
    if f.neckline in _NECK_SENTENCES and not neck_in_headline:
        details.append(_choice(rng, _NECK_SENTENCES[f.neckline]))

    closure = ""
    if f.closure == "zip":
        closure = "Zip fly" if bottoms and f.subcategory != "skirt" and rng.random() < 0.5 else "Zip closure"
    elif f.closure == "buttons":
        if f.subcategory == "t-shirt":
            closure = "Button placket"
        elif bottoms and f.subcategory != "skirt":
            closure = _choice(rng, ("Button fly", "Button closure"))
        else:
            closure = "Button closure"
    pockets = {"patch pockets": "patch pockets", "kangaroo pocket": "kangaroo pocket"}.get(f.pockets, "")
    where = "at neck" if closure == "Button placket" else "at front"
    if closure and pockets and where == "at front" and rng.random() < 0.5:
        details.append(f"{closure} and {pockets} {where}.")
    else:
        if closure:
            details.append(f"{closure} {where}." if not closure.endswith("fly") else f"{closure}.")
        if pockets:
            details.append(f"{pockets.capitalize()} at front." if rng.random() < 0.7 else
                           ("Two patch pockets." if pockets == "patch pockets" else "Kangaroo pocket."))
    if f.pockets == "chest pocket":
        details.append(_choice(rng, ("Patch pocket at chest.", "Chest pocket.")))

    if f.drawstring:
        if f.neckline == "hood":
            details.append(_choice(rng, ("Drawstring at hood.", "Drawstring closure at hood.")))
        elif f.subcategory == "jacket":
            details.append(_choice(rng, ("Drawstring at hem.", "Drawstring closure at hem.")))
        else:
            details.append(_choice(rng, ("Drawstring at waist.", "Drawstring closure at waist.")))
    if f.hem == "rib knit":
        if bottoms:
            cuffs = "leg openings" if f.subcategory == "shorts" else "cuffs"
            details.append(_choice(rng, (f"Rib knit waistband and {cuffs}.", f"Rib knit {cuffs} and waistband.")))
        elif f.sleeve_length == "sleeveless":
            details.append("Rib knit hem.")
        else:
            details.append(_choice(rng, ("Rib knit sleeve cuffs and hem.", "Rib knit cuffs and hem.")))
    order = rng.permutation(len(details))
    return " ".join(sentences + [details[i] for i in order])


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def fashion_dataset_features():
    """The `datasets.Features` of `make_fashion_dataset`'s splits."""
    import datasets

    columns = {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "product_id": datasets.Value("string"),
        "view": datasets.Value("int32"),
    }
    for name in FACTOR_COLUMNS:
        columns[name] = datasets.Value("bool") if name == "drawstring" else datasets.Value("string")
    return datasets.Features(columns)


def _split_products(num_products: int, subcats: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split id (0, 1, 2...) of every product: stratified by sub-category, by product."""
    fractions = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    split_of = np.empty(num_products, dtype=np.int64)
    rng = np.random.default_rng([seed, 2**31 - 1])
    for s in np.unique(subcats):
        members = rng.permutation(np.flatnonzero(subcats == s))
        bounds = np.round(np.cumsum(fractions) * len(members)).astype(int)
        start = 0
        for k, stop in enumerate(bounds):
            split_of[members[start:stop]] = k
            start = stop
    return split_of


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Lossless and deterministic; level 1 is ~4x faster to write than the default at a few % size.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_split_fractions(split_fractions) -> tuple[list[str], list[float]]:
    if isinstance(split_fractions, Mapping):
        split_names, fractions = list(split_fractions), list(split_fractions.values())
    else:
        fractions = list(split_fractions)
        split_names = ["train", "validation", "test"][: len(fractions)]
        if len(fractions) > 3:
            raise ValueError(f"split_fractions must have at most 3 entries, got {len(fractions)}")
    if any(x < 0 for x in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be non-negative with a positive sum, got {fractions}")
    return split_names, fractions


# Products per rendering job, and the images from which the jobs go to one process per core (fewer: the start-up of the
# workers would cost more than it saves).
_RENDER_CHUNK = 250
_PARALLEL_FROM_IMAGES = 2000


def _render_products(job: tuple) -> list[tuple[int, str, dict, list[bytes]]]:
    """`(i, caption, factors, [PNG per view])` of products `start..stop - 1` (their own random streams: see the module)."""
    start, stop, subcategories, views_per_product, image_size, seed = job
    out = []
    for i, subcategory in zip(range(start, stop), subcategories):
        rng = np.random.default_rng([seed, i, 0])
        f = sample_garment_factors(rng, subcategory)
        text = describe_garment(f, rng)
        pngs = [_encode_png(render_garment(f, image_size, np.random.default_rng([seed, i, 1 + v]))) for v in range(views_per_product)]
        out.append((i, text, asdict(f), pngs))
    return out


def _map_render(jobs: list[tuple], total_images: int):
    """`_render_products` of each job, in order: in worker processes (forked, one per core) for large renders."""
    import multiprocessing
    import os

    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers < 2 or total_images < _PARALLEL_FROM_IMAGES or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(_render_products, jobs)
        return
    # fork: the workers inherit this module and only draw with numpy and PIL (no torch, no OpenMP).
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render_products, jobs)


def generate_fashion_columns(
    num_products: int = 2000, views_per_product: int = 3, image_size: int = 256, seed: int = 0,
    split_fractions: Sequence[float] | Mapping[str, float] = (0.8, 0.1, 0.1), show_progress: bool | None = None,
) -> dict[str, dict[str, list]]:
    """
    The rows of `make_fashion_dataset` as plain columns, `{split: {column: list}}`, without `datasets` (images as
    `{"bytes": PNG, "path": None}`). Same arguments and the same rows as `make_fashion_dataset`.
    """
    from tqdm.auto import tqdm

    if num_products < 1 or views_per_product < 1:
        raise ValueError(
            f"num_products and views_per_product must be >= 1, got {num_products} and {views_per_product}"
        )
    split_names, fractions = _check_split_fractions(split_fractions)
    names = list(SUBCATEGORY_OPTIONS)
    subcats = np.arange(num_products) % len(names)
    split_of = _split_products(num_products, subcats, fractions, seed)
    total = num_products * views_per_product
    if show_progress is None:
        show_progress = total >= 2000
    column_names = ["image", "text", "product_id", "view", *FACTOR_COLUMNS]
    columns: dict[str, list] = {name: [] for name in column_names}
    rows_of_split: dict[int, list[int]] = {k: [] for k in range(len(split_names))}
    width = max(5, len(str(num_products - 1)))
    chunks = [range(start, min(start + _RENDER_CHUNK, num_products)) for start in range(0, num_products, _RENDER_CHUNK)]
    jobs = [(chunk.start, chunk.stop, [names[subcats[i]] for i in chunk], views_per_product, image_size, seed) for chunk in chunks]
    with tqdm(total=total, desc="Rendering synthetic garments", disable=not show_progress, unit="img") as bar:
        for products in _map_render(jobs, total):
            for i, text, factor_values, pngs in products:
                for v, png in enumerate(pngs):
                    rows_of_split[int(split_of[i])].append(len(columns["text"]))
                    columns["image"].append({"bytes": png, "path": None})
                    columns["text"].append(text)
                    columns["product_id"].append(f"syn-{i:0{width}d}")
                    columns["view"].append(v)
                    for name in FACTOR_COLUMNS:
                        columns[name].append(factor_values[name])
                bar.update(len(pngs))
    return {
        name: {c: [values[r] for r in rows_of_split[k]] for c, values in columns.items()}
        for k, name in enumerate(split_names)
    }


def make_fashion_dataset(
    num_products: int = 2000,
    views_per_product: int = 3,
    image_size: int = 256,
    seed: int = 0,
    split_fractions: Sequence[float] | Mapping[str, float] = (0.8, 0.1, 0.1),
    show_progress: bool | None = None,
):
    """Builds the synthetic fashion test bed as a `datasets.DatasetDict`.

    Args:
        num_products: number of products; sub-categories are assigned round-robin (product `i` gets
            sub-category `i % 11`), so each has about `num_products / 11` products.
        views_per_product: rows (views) per product, sharing `product_id` and caption.
        image_size: side of the square images in pixels.
        seed: everything (factors, captions, views, splits) is a function of it.
        split_fractions: fractions for ("train", "validation", "test"), or a mapping split name ->
            fraction. Products (never single views) are split, stratified by sub-category.
        show_progress: tqdm bar; default: shown when generating 2,000 images or more.

    Returns:
        `DatasetDict` with columns image (PNG, `datasets.Image`), text, product_id, view, and the
        factor columns `FACTOR_COLUMNS` (category, subcategory, color, pattern, accent_color,
        sleeve_length, neckline, closure, drawstring, pockets, hem). Rows are ordered by product,
        then view, so a product's first row is view 0.
    """
    import datasets

    splits = generate_fashion_columns(
        num_products, views_per_product, image_size, seed, split_fractions, show_progress
    )
    features = fashion_dataset_features()
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(columns, features=features, split=datasets.NamedSplit(name))
            for name, columns in splits.items()
        }
    )


def save_sample_grid(dataset, path: str, n: int = 16, columns: int = 4, tile_size: int = 256, seed: int | None = None):
    """Saves a PNG grid of `n` rows of `dataset` (images with their wrapped captions below).

    Args:
        dataset: a `datasets.Dataset` (or list of dicts) with "image" and "text".
        path: output PNG path.
        n: number of samples (the first `n` rows, or a seeded random choice when `seed` is given).
        columns: tiles per grid row.
        tile_size: displayed image size (images are resized with nearest neighbour so small
            renders stay crisp and pixel-honest).
        seed: pick rows at random with this seed instead of the first `n`.
    """
    total = len(dataset)
    n = min(n, total)
    if seed is None:
        indices = list(range(n))
    else:
        indices = sorted(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
    font = ImageFont.load_default()
    try:
        font = ImageFont.load_default(size=max(11, tile_size // 20))
    except TypeError:  # Pillow without FreeType sizes
        pass
    chars = max(20, int(tile_size / (0.55 * max(11, tile_size // 20))))
    caption_lines = 7
    line_h = max(13, tile_size // 17)
    cell_w, cell_h = tile_size + 12, tile_size + 12 + caption_lines * line_h
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for slot, idx in enumerate(indices):
        row = dataset[int(idx)]
        image = row["image"]
        if not isinstance(image, Image.Image):
            image = Image.open(io.BytesIO(image["bytes"]))
        image = image.convert("RGB").resize((tile_size, tile_size), Image.NEAREST)
        x, y = (slot % columns) * cell_w + 6, (slot // columns) * cell_h + 6
        grid.paste(image, (x, y))
        lines = textwrap.wrap(str(row["text"]), width=chars)
        if len(lines) > caption_lines:
            lines = lines[: caption_lines - 1] + [lines[caption_lines - 1][: chars - 3] + "..."]
        for k, line in enumerate(lines):
            draw.text((x, y + tile_size + 3 + k * line_h), line, fill=(20, 20, 20), font=font)
    grid.save(path, format="PNG")
    return path
