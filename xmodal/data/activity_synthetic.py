"""Synthetic activity test bed for MAP-IVR: rendered clips whose appearance and motion are independent factors.

An *actor* (a shape with a colour and a texture) moves in front of a *scene*. Appearance factors
(`shape`, `colour`, `texture`, `scene`) and motion factors (`motion`, `direction`, `speed`) are drawn
independently and rendered from pixels; nothing about the factors is written into the features, which
come from running `MapIvrMediaEncoder` over the rendered frames.

Factors
-------
- shape: circle, square, triangle, star, stick_figure (a person-like figure whose limbs move with the motion).
- colour: red, crimson, orange, yellow, green, lime, blue, navy, purple, white (red/crimson, green/lime and
  blue/navy are near colours). Each instance jitters the colour by up to +-8 per channel.
- texture: solid, striped, dotted (drawn in the actor's own coordinates, so it turns when the actor spins).
  Every actor is also shaded from its own upper-left, which makes a spinning disc visible.
- scene: night, field, indoor, beach (the background, jittered per instance).
- motion: translate (straight travel), bounce (hops with drift and squash at the ground), spin (rotation in
  place), wave (pendulum sway with a tilt; the stick figure also waves an arm), zoom (approach or recede).
- direction: forward / backward. forward = travel or drift to the right (translate, bounce), clockwise turning
  (spin), first swing to the right (wave), growing / approaching (zoom); backward is the opposite.
- speed: slow / fast (travel distance, hop and sway frequency, turns per clip, zoom ratio).

Activity classes (`ACTIVITY_CLASSES`) fix shape, colour, texture and motion; scene, direction, speed, size,
position, phase and colour jitter vary per instance. Classes that share an appearance differ only in motion
(e.g. ball_pass / ball_bounce / ball_spin); classes that share a motion differ in appearance, some only by a
near colour or a texture (person_walk vs navy_person_walk, kite_wave vs lime_kite_wave):

| id | name             | shape        | colour  | texture | motion    |
|----|------------------|--------------|---------|---------|-----------|
| 0  | ball_pass        | circle       | red     | striped | translate |
| 1  | ball_bounce      | circle       | red     | striped | bounce    |
| 2  | ball_spin        | circle       | red     | striped | spin      |
| 3  | person_walk      | stick_figure | blue    | solid   | translate |
| 4  | person_jump      | stick_figure | blue    | solid   | bounce    |
| 5  | person_wave      | stick_figure | blue    | solid   | wave      |
| 6  | navy_person_walk | stick_figure | navy    | striped | translate |
| 7  | star_spin        | star         | yellow  | dotted  | spin      |
| 8  | star_zoom        | star         | yellow  | dotted  | zoom      |
| 9  | box_slide        | square       | crimson | striped | translate |
| 10 | box_spin         | square       | crimson | striped | spin      |
| 11 | kite_wave        | triangle     | green   | dotted  | wave      |
| 12 | kite_zoom        | triangle     | green   | dotted  | zoom      |
| 13 | lime_kite_wave   | triangle     | lime    | dotted  | wave      |

Still-image queries are single frames of a *different* instance of the class, exposed over a short shutter
interval: the frame is the mean of sub-frames around a random time, so it carries the cues a photograph of
an activity carries (blur along the direction of travel, rotational blur and an angle for spin, radial blur
for zoom, a raised arm for wave, spread legs for walk, raised arms for jump).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np


__all__ = [
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "SCENES",
    "MOTIONS",
    "DIRECTIONS",
    "SPEEDS",
    "FACTOR_VALUES",
    "FACTOR_COLUMNS",
    "ACTIVITY_CLASSES",
    "ActivityClass",
    "ActivityFactors",
    "sample_instance_factors",
    "default_activity_encoder",
    "render_instance",
    "render_clip",
    "render_query_image",
    "make_activity_dataset",
    "make_factor_dataset",
    "save_sample_grid",
    "save_clip_gif",
    "linear_probe",
    "probe_factors",
]

SHAPES = ("circle", "square", "triangle", "star", "stick_figure")
# RGB values, two colours a line; red/crimson, green/lime and blue/navy are the near pairs.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40), "crimson": (160, 24, 70),
    "orange": (245, 130, 32), "yellow": (238, 210, 40),
    "green": (40, 150, 50), "lime": (105, 195, 45),
    "blue": (45, 95, 225), "navy": (30, 55, 160),
    "purple": (140, 70, 190), "white": (238, 238, 238),
}
TEXTURES = ("solid", "striped", "dotted")
SCENES = ("night", "field", "indoor", "beach")
MOTIONS = ("translate", "bounce", "spin", "wave", "zoom")
DIRECTIONS = ("forward", "backward")
SPEEDS = ("slow", "fast")

FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "scene": SCENES,
    "motion": MOTIONS,
    "direction": DIRECTIONS,
    "speed": SPEEDS,
}
FACTOR_COLUMNS = tuple(FACTOR_VALUES)
APPEARANCE_FACTORS = ("shape", "colour", "texture", "scene")
MOTION_FACTORS = ("motion", "direction", "speed")


@dataclass(frozen=True)
class ActivityClass:
    """One activity class: the factors it fixes. Scene, direction and speed vary per instance."""

    name: str
    shape: str
    colour: str
    texture: str
    motion: str

    @property
    def appearance(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.texture)


ACTIVITY_CLASSES: tuple[ActivityClass, ...] = (
    ActivityClass("ball_pass", "circle", "red", "striped", "translate"),
    ActivityClass("ball_bounce", "circle", "red", "striped", "bounce"),
    ActivityClass("ball_spin", "circle", "red", "striped", "spin"),
    ActivityClass("person_walk", "stick_figure", "blue", "solid", "translate"),
    ActivityClass("person_jump", "stick_figure", "blue", "solid", "bounce"),
    ActivityClass("person_wave", "stick_figure", "blue", "solid", "wave"),
    ActivityClass("navy_person_walk", "stick_figure", "navy", "striped", "translate"),
    ActivityClass("star_spin", "star", "yellow", "dotted", "spin"),
    ActivityClass("star_zoom", "star", "yellow", "dotted", "zoom"),
    ActivityClass("box_slide", "square", "crimson", "striped", "translate"),
    ActivityClass("box_spin", "square", "crimson", "striped", "spin"),
    ActivityClass("kite_wave", "triangle", "green", "dotted", "wave"),
    ActivityClass("kite_zoom", "triangle", "green", "dotted", "zoom"),
    ActivityClass("lime_kite_wave", "triangle", "lime", "dotted", "wave"),
)


@dataclass(frozen=True)
class ActivityFactors:
    """The categorical factors of one rendered instance.

    Args:
        shape (`str`): one of `SHAPES`.
        colour (`str`): one of `COLOURS`.
        texture (`str`): one of `TEXTURES`.
        scene (`str`): one of `SCENES`.
        motion (`str`): one of `MOTIONS`.
        direction (`str`, defaults to `"forward"`): one of `DIRECTIONS` (meaning per motion in the module docstring).
        speed (`str`, defaults to `"slow"`): one of `SPEEDS`.
    """

    shape: str
    colour: str
    texture: str
    scene: str
    motion: str
    direction: str = "forward"
    speed: str = "slow"

    def __post_init__(self):
        for name, allowed in FACTOR_VALUES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ActivityFactors.{name}={value!r} is not one of {list(allowed)}")

    @classmethod
    def from_any(cls, factors: "ActivityFactors | Mapping[str, Any]") -> "ActivityFactors":
        if isinstance(factors, ActivityFactors):
            return factors
        names = {f.name for f in fields(cls)}
        unknown = set(factors) - names
        if unknown:
            raise ValueError(f"unknown factor names {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**dict(factors))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def sample_instance_factors(activity_class: ActivityClass, rng: np.random.Generator) -> ActivityFactors:
    """Draws the per-instance factors (scene, direction, speed) of one instance of `activity_class`."""
    return ActivityFactors(
        shape=activity_class.shape,
        colour=activity_class.colour,
        texture=activity_class.texture,
        scene=SCENES[rng.integers(len(SCENES))],
        motion=activity_class.motion,
        direction=DIRECTIONS[rng.integers(len(DIRECTIONS))],
        speed=SPEEDS[rng.integers(len(SPEEDS))],
    )


def _sample_random_factors(rng: np.random.Generator) -> ActivityFactors:
    """Every factor drawn independently and uniformly (for probing)."""
    return ActivityFactors(**{name: values[rng.integers(len(values))] for name, values in FACTOR_VALUES.items()})


# ----------------------------------------------------------------------------------------------------------
# Rendering. Coordinates are fractions of the frame (x right, y down); the actor is drawn in its own local
# coordinates (unit radius), which turn with it. Frames are supersampled 2x and box-filtered (anti-aliasing).
# ----------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 2
# Farthest extent of any shape from its centre in local units (the square's corners), with a margin.
_ACTOR_REACH = 1.2
_QUERY_SUBFRAMES = 7
# Shutter interval of a query photograph, as a fraction of the clip's duration (1.5 frame intervals of a
# 16-frame clip): long enough to blur fast motion, short enough to keep the actor recognisable.
_QUERY_EXPOSURE = 1.5 / 16


@dataclass(frozen=True)
class _Nuisance:
    """Continuous per-instance variation, drawn from the caller's rng."""

    radius: float  # actor radius, fraction of the frame
    x_offset: float
    y_level: float
    phase: float
    colour_jitter: tuple[float, float, float]
    texture_angle: float
    scene_seed: int
    noise_sigma: float


def _sample_nuisance(rng: np.random.Generator) -> _Nuisance:
    return _Nuisance(
        radius=float(rng.uniform(0.13, 0.17)),
        x_offset=float(rng.uniform(-0.05, 0.05)),
        y_level=float(rng.uniform(-0.04, 0.04)),
        phase=float(rng.uniform(0.0, 1.0)),
        colour_jitter=tuple(float(v) for v in rng.uniform(-8.0, 8.0, size=3)),
        texture_angle=float(rng.uniform(-0.35, 0.35)),
        scene_seed=int(rng.integers(2**31)),
        noise_sigma=float(rng.uniform(1.0, 3.0)),
    )


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    sx: float  # radius along the actor's local x, fraction of the frame
    sy: float
    theta: float  # turn, radians; positive turns clockwise on screen (y points down)
    arms: tuple[float, float]  # stick figure: angle of (left, right) arm from straight down, + towards +x
    legs: tuple[float, float]


_DEFAULT_ARMS = (-0.35, 0.35)
_DEFAULT_LEGS = (-0.25, 0.25)


def _pose_at(factors: ActivityFactors, nuisance: _Nuisance, t: float) -> _Pose:
    """Actor pose at clip time `t` in [0, 1]; the motion factors set the trajectory."""
    sign = 1.0 if factors.direction == "forward" else -1.0
    fast = factors.speed == "fast"
    r = nuisance.radius
    cx, cy = 0.5 + nuisance.x_offset, 0.55 + nuisance.y_level
    sx = sy = r
    theta = 0.0
    arms, legs = _DEFAULT_ARMS, _DEFAULT_LEGS
    if factors.motion == "translate":
        travel = 0.55 if fast else 0.30
        cx = 0.5 + nuisance.x_offset * 0.5 + sign * (t - 0.5) * travel
        swing = 0.55 * math.sin(2 * math.pi * ((4 if fast else 2) * t + nuisance.phase))
        legs = (-swing, swing)
        arms = (-0.2 + 0.6 * swing, 0.2 - 0.6 * swing)
    elif factors.motion == "bounce":
        hops = 3.0 if fast else 1.5
        height = abs(math.sin(math.pi * (hops * t + nuisance.phase)))
        ground = 0.70 + nuisance.y_level * 0.5
        cx = 0.5 + nuisance.x_offset + sign * (t - 0.5) * 0.15
        cy = ground - r - 0.28 * height
        squash = max(0.0, 1.0 - height / 0.2)  # flattens only near the ground
        sx, sy = r * (1 + 0.18 * squash), r * (1 - 0.18 * squash)
        arms = (-(0.5 + 2.1 * height), 0.5 + 2.1 * height)
        legs = (-(0.5 - 0.35 * height), 0.5 - 0.35 * height)
    elif factors.motion == "spin":
        turns = 1.0 if fast else 0.5
        theta = 2 * math.pi * (nuisance.phase + sign * turns * t)
        arms, legs = (-1.57, 1.57), (-0.45, 0.45)
    elif factors.motion == "wave":
        cycles = 2.0 if fast else 1.0
        # Phase kept near zero so that the first swing goes the `direction` way.
        s = math.sin(2 * math.pi * cycles * t + 0.3 * (nuisance.phase - 0.5))
        cx = 0.5 + nuisance.x_offset + sign * 0.12 * s
        theta = sign * 0.35 * s
        waving = 2.5 + 0.45 * s
        arms = (-0.35, waving) if sign > 0 else (-waving, 0.35)
    elif factors.motion == "zoom":
        ratio = 2.8 if fast else 1.7
        scale = math.exp(sign * math.log(ratio) * (t - 0.5)) * 0.9
        sx = sy = r * scale
        cy = 0.5 + nuisance.y_level * 0.5
    return _Pose(cx=cx, cy=cy, sx=sx, sy=sy, theta=theta, arms=arms, legs=legs)


def _regular_polygon(num: int, radius: float, start: float) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(num) / num
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


_SQUARE = _regular_polygon(4, 0.95 * math.sqrt(2) * 0.85, math.pi / 4)
_TRIANGLE = _regular_polygon(3, 1.05, -math.pi / 2)
_STAR = np.array(
    [
        (r * math.cos(a), r * math.sin(a))
        for k in range(10)
        for r, a in [((1.05 if k % 2 == 0 else 0.45), -math.pi / 2 + k * math.pi / 5)]
    ]
)


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    x2, y2 = vertices[-1]
    for x1, y1 in vertices:
        crosses = (y1 > y) != (y2 > y)
        x_cross = (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (x < x_cross)
        x2, y2 = x1, y1
    return inside


def _near_segment(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float], width: float):
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    u = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (x - ax - u * dx) ** 2 + (y - ay - u * dy) ** 2 <= width * width


def _limb_end(start: tuple[float, float], angle: float, length: float) -> tuple[float, float]:
    return (start[0] + length * math.sin(angle), start[1] + length * math.cos(angle))


def _stick_figure(x: np.ndarray, y: np.ndarray, pose: _Pose) -> np.ndarray:
    width = 0.13
    shoulder, hip = (0.0, -0.38), (0.0, 0.22)
    mask = (x - 0.0) ** 2 + (y + 0.70) ** 2 <= 0.24**2  # head
    mask |= _near_segment(x, y, (0.0, -0.46), hip, width)  # torso
    for angle in pose.arms:
        mask |= _near_segment(x, y, shoulder, _limb_end(shoulder, angle, 0.55), width)
    for angle in pose.legs:
        mask |= _near_segment(x, y, hip, _limb_end(hip, angle, 0.75), width)
    return mask


def _actor_mask(shape: str, x: np.ndarray, y: np.ndarray, pose: _Pose) -> np.ndarray:
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return _inside_polygon(x, y, _SQUARE)
    if shape == "triangle":
        return _inside_polygon(x, y, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(x, y, _STAR)
    return _stick_figure(x, y, pose)


def _actor_colour(factors: ActivityFactors, nuisance: _Nuisance, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., 3) float colour of the actor at local coordinates (texture and shading turn with the actor)."""
    base = np.clip(np.array(COLOURS[factors.colour], dtype=np.float32) + np.array(nuisance.colour_jitter), 0, 255)
    colour = np.broadcast_to(base, x.shape + (3,)).copy()
    if factors.texture == "striped":
        c, s = math.cos(nuisance.texture_angle), math.sin(nuisance.texture_angle)
        stripes = np.sin(2 * math.pi * (c * x + s * y) / 0.6) > 0
        colour[stripes] *= 0.4
    elif factors.texture == "dotted":
        gx = np.mod(x + 0.3, 0.6) - 0.3
        gy = np.mod(y + 0.3, 0.6) - 0.3
        dots = gx * gx + gy * gy <= 0.14**2
        colour[dots] = 0.3 * colour[dots] + 0.7 * 255.0 if factors.colour not in ("white", "yellow") else 0.35 * colour[dots]
    shade = np.clip(0.9 - 0.12 * (x + y), 0.65, 1.1)[..., None]  # lit from the actor's upper left
    return np.clip(colour * shade, 0, 255)


def _render_scene(scene: str, size: int, seed: int) -> np.ndarray:
    """(size, size, 3) float background."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-10, 10, size=3)
    rows = (np.arange(size, dtype=np.float32)[:, None] + 0.5) / size  # (H, 1)
    image = np.zeros((size, size, 3), dtype=np.float32)

    def vertical(top, bottom, lo, hi):
        span = np.clip((rows - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
        return np.array(top, np.float32) * (1 - span) + np.array(bottom, np.float32) * span

    if scene == "night":
        image[:] = vertical((8, 10, 35), (30, 35, 80), 0.0, 1.0)
        for _ in range(14):
            r, c = rng.integers(size), rng.integers(size)
            image[r, c] = rng.uniform(160, 255)
    elif scene == "field":
        horizon = rng.uniform(0.58, 0.70)
        sky = vertical((95, 160, 230), (185, 215, 240), 0.0, horizon)
        grass = vertical((70, 160, 60), (35, 105, 35), horizon, 1.0)
        image[:] = np.where(rows[..., None] < horizon, sky, grass)
    elif scene == "indoor":
        floor = rng.uniform(0.68, 0.80)
        image[:] = np.where(rows[..., None] < floor, np.array((205, 190, 165), np.float32), vertical((140, 100, 70), (100, 70, 45), floor, 1.0))
        x0 = int(rng.uniform(0.05, 0.6) * size)
        y0 = int(rng.uniform(0.08, 0.2) * size)
        w, h = int(0.3 * size), int(0.25 * size)
        image[y0 : y0 + h, x0 : x0 + w] = (170, 205, 235)
        image[y0 : y0 + h, x0 + w // 2] = (120, 100, 80)
    elif scene == "beach":
        sea_top, sand_top = rng.uniform(0.42, 0.5), rng.uniform(0.6, 0.68)
        sky = vertical((120, 190, 240), (200, 230, 250), 0.0, sea_top)
        sea = vertical((30, 100, 160), (60, 140, 185), sea_top, sand_top)
        sand = vertical((230, 205, 150), (210, 180, 120), sand_top, 1.0)
        image[:] = np.where(rows[..., None] < sea_top, sky, np.where(rows[..., None] < sand_top, sea, sand))
    return np.clip(image + jitter, 0, 255)


def _render_actor(factors: ActivityFactors, nuisance: _Nuisance, pose: _Pose, size: int):
    """Actor at `pose`: (coverage (h, w), colour (h, w, 3), (row, col) of the box's top-left) inside its bounding box.

    Coverage and colour are box-filtered from a `_SUPERSAMPLE`x grid; only the actor's bounding box is sampled.
    """
    k = _SUPERSAMPLE
    reach = _ACTOR_REACH * max(pose.sx, pose.sy)
    c0, c1 = (max(0, int(math.floor((v - reach) * size))) for v in (pose.cx, pose.cy))
    c2, c3 = (min(size, int(math.ceil((v + reach) * size))) for v in (pose.cx, pose.cy))
    if c2 <= c0 or c3 <= c1:  # entirely outside the frame
        return np.zeros((0, 0)), np.zeros((0, 0, 3)), (0, 0)
    xs = (np.arange(c0 * k, c2 * k, dtype=np.float32) + 0.5) / (size * k)
    ys = (np.arange(c1 * k, c3 * k, dtype=np.float32) + 0.5) / (size * k)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    dx, dy = gx - pose.cx, gy - pose.cy
    # inverse of local -> frame: frame = centre + R(theta) @ diag(sx, sy) @ local
    lx = (c * dx + s * dy) / pose.sx
    ly = (-s * dx + c * dy) / pose.sy
    mask = _actor_mask(factors.shape, lx, ly, pose).astype(np.float32)
    colour = _actor_colour(factors, nuisance, lx, ly) * mask[..., None]
    h, w = c3 - c1, c2 - c0
    covered = mask.reshape(h, k, w, k).sum(axis=(1, 3))
    colour = colour.reshape(h, k, w, k, 3).sum(axis=(1, 3)) / np.maximum(covered, 1)[..., None]
    return covered / (k * k), colour, (c1, c0)


def _frame(factors: ActivityFactors, nuisance: _Nuisance, background: np.ndarray, times: Sequence[float], size: int) -> np.ndarray:
    """Float frame: the mean over `times` (one time = a sharp frame; several = an exposure with motion blur)."""
    total = np.zeros_like(background)
    for t in times:
        coverage, colour, (r, c) = _render_actor(factors, nuisance, _pose_at(factors, nuisance, t), size)
        frame = background.copy()
        h, w = coverage.shape
        alpha = coverage[..., None]
        frame[r : r + h, c : c + w] = frame[r : r + h, c : c + w] * (1 - alpha) + colour * alpha
        total += frame
    return total / len(times)


def _to_uint8(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float32) + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _check_render_args(num_frames: int | None, size: int, rng):
    if num_frames is not None and (not isinstance(num_frames, (int, np.integer)) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")


def render_clip(
    factors: ActivityFactors | Mapping[str, str],
    num_frames: int = 16,
    size: int = 64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Renders one clip of an actor with the given factors.

    Args:
        factors: an `ActivityFactors` or a dict with its fields.
        num_frames: frames in the clip; the motion spans the clip's duration whatever the frame count.
        size: frame height and width in pixels.
        rng: draws the continuous per-instance variation (size, position, phase, colour jitter, texture angle,
            background details, sensor noise). Same factors and same rng state give the same clip.

    Returns:
        `(num_frames, size, size, 3)` uint8 RGB array.
    """
    _check_render_args(num_frames, size, rng)
    factors = ActivityFactors.from_any(factors)
    rng = np.random.default_rng(0) if rng is None else rng
    nuisance = _sample_nuisance(rng)
    background = _render_scene(factors.scene, size, nuisance.scene_seed)
    frames = [_frame(factors, nuisance, background, [i / num_frames], size) for i in range(num_frames)]
    return _to_uint8(np.stack(frames), nuisance.noise_sigma, rng)


def render_query_image(
    factors: ActivityFactors | Mapping[str, str],
    size: int = 64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Renders a still-image query: one frame of an instance, exposed over a short shutter interval.

    The frame is the mean of sub-frames around a random time in the middle of the motion, so fast motion
    leaves blur along its path (and a spin leaves rotational blur, a zoom radial blur); the stick figure's
    limbs show the pose of the motion.

    Returns:
        `(size, size, 3)` uint8 RGB array.
    """
    _check_render_args(None, size, rng)
    factors = ActivityFactors.from_any(factors)
    rng = np.random.default_rng(0) if rng is None else rng
    nuisance = _sample_nuisance(rng)
    background = _render_scene(factors.scene, size, nuisance.scene_seed)
    t = float(rng.uniform(0.15, 0.85))
    times = t + _QUERY_EXPOSURE * (np.arange(_QUERY_SUBFRAMES) / (_QUERY_SUBFRAMES - 1) - 0.5)
    image = _frame(factors, nuisance, background, list(times), size)
    return _to_uint8(image, nuisance.noise_sigma, rng)


# ----------------------------------------------------------------------------------------------------------
# Previews
# ----------------------------------------------------------------------------------------------------------


def _instance_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent stream per (seed, split, class, instance, kind): results do not depend on build order."""
    return np.random.default_rng([seed, *keys])


def save_sample_grid(
    path: str,
    class_ids: Sequence[int] | None = None,
    num_frames_shown: int = 6,
    num_frames: int = 16,
    size: int = 64,
    scale: int = 2,
    seed: int = 0,
) -> str:
    """Writes a PNG preview: one row per class with its name, a query image and frames of a clip of another instance.

    Args:
        path: output PNG path.
        class_ids: indices into `ACTIVITY_CLASSES` (default: all classes).
        num_frames_shown: clip frames shown per row, evenly spaced over the clip.
        num_frames, size: clip length and frame size as rendered.
        scale: nearest-neighbour upscaling for display.
        seed: seed of the rendered instances.

    Returns:
        `path`.
    """
    from PIL import Image, ImageDraw

    class_ids = list(range(len(ACTIVITY_CLASSES))) if class_ids is None else list(class_ids)
    cell, gap, label_w, header_h = size * scale, 4, 200, 16
    width = label_w + (1 + num_frames_shown) * (cell + gap) + gap
    height = header_h + len(class_ids) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shown = np.linspace(0, num_frames - 1, num_frames_shown).round().astype(int)
    draw.text((label_w + gap, 2), "query image", fill=(0, 0, 0))
    draw.text((label_w + 2 * gap + cell, 2), f"clip of another instance: frames {', '.join(map(str, shown))}", fill=(0, 0, 0))
    for row, class_id in enumerate(class_ids):
        activity_class = ACTIVITY_CLASSES[class_id]
        query_rng, clip_rng = _instance_rng(seed, 9, class_id, 0), _instance_rng(seed, 9, class_id, 1)
        query_factors = sample_instance_factors(activity_class, query_rng)
        clip_factors = sample_instance_factors(activity_class, clip_rng)
        query = render_query_image(query_factors, size, query_rng)
        clip = render_clip(clip_factors, num_frames, size, clip_rng)
        y = header_h + gap + row * (cell + gap)
        lines = [
            f"{class_id}: {activity_class.name}",
            f"{activity_class.shape}, {activity_class.colour}",
            f"{activity_class.texture}, {activity_class.motion}",
            f"query: {query_factors.scene}/{query_factors.direction}/{query_factors.speed}",
            f"clip: {clip_factors.scene}/{clip_factors.direction}/{clip_factors.speed}",
        ]
        draw.multiline_text((4, y + 2), "\n".join(lines), fill=(0, 0, 0), spacing=2)
        tiles = [query] + [clip[i] for i in shown]
        for col, tile in enumerate(tiles):
            x = label_w + gap + col * (cell + gap) + (gap if col > 0 else 0)
            canvas.paste(Image.fromarray(tile).resize((cell, cell), Image.NEAREST), (x, y))
    canvas.save(path)
    return path


def save_clip_gif(clip: np.ndarray, path: str, fps: int = 8, scale: int = 2) -> str:
    """Writes a `(T, H, W, 3)` uint8 clip as a looping animated GIF (nearest-neighbour upscaled by `scale`)."""
    from PIL import Image

    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"clip must be a (T, H, W, 3) uint8 array, got shape {clip.shape} dtype {clip.dtype}")
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in clip]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


# ----------------------------------------------------------------------------------------------------------
# Datasets: rendered media -> MapIvrMediaEncoder features
# ----------------------------------------------------------------------------------------------------------

_SPLITS = ("train", "test")
_VIDEO, _IMAGE = 0, 1


def default_activity_encoder(clip_length: int = 16, clip_stride: int = 8):
    """The offline encoder used when none is given: `MapIvrMediaEncoder`'s classical "descriptor" backend.

    Clips of `clip_length` frames every `clip_stride` frames are the proposals: a default 16-frame video is one
    proposal (a `(1, D)` bag), a 32-frame video three. Shorter proposals make real bags of a 16-frame video but
    describe motion less well (measured on `make_factor_dataset(800)`, video features: motion / direction / speed
    probe accuracy 0.99 / 0.90 / 0.87 with one 16-frame proposal, 0.97 / 0.85 / 0.74 with three 8-frame ones,
    and encoding takes longer), so whole clips are the default.
    """
    from xmodal.map_ivr.media_encoding_map_ivr import MapIvrMediaEncoder

    return MapIvrMediaEncoder(backend="descriptor", clip_length=clip_length, clip_stride=clip_stride, show_progress=False)


def render_instance(
    seed: int, split: str, class_id: int, index: int, num_frames: int = 16, size: int = 64
) -> tuple[ActivityFactors, np.ndarray, ActivityFactors, np.ndarray]:
    """Re-renders row `index` of class `class_id` in `split` of `make_activity_dataset(seed=seed)`.

    Returns:
        `(video_factors, clip (T, H, W, 3), image_factors, query image (H, W, 3))`, bit-identical to what the
        dataset's features were computed from (with the same `num_frames` and `size`).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    activity_class = ACTIVITY_CLASSES[class_id]
    split_id = _SPLITS.index(split)
    video_rng = _instance_rng(seed, split_id, class_id, index, _VIDEO)
    video_factors = sample_instance_factors(activity_class, video_rng)
    clip = render_clip(video_factors, num_frames, size, video_rng)
    image_rng = _instance_rng(seed, split_id, class_id, index, _IMAGE)
    image_factors = sample_instance_factors(activity_class, image_rng)
    image = render_query_image(image_factors, size, image_rng)
    return video_factors, clip, image_factors, image


def _progress_bar(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not show, unit="video")


def _encode_items(encoder, clips: list[np.ndarray], images: list[np.ndarray]) -> dict[str, Any]:
    videos = encoder.encode_videos(clips, show_progress=False)
    return {
        "image_features": encoder.encode_images(images, show_progress=False),
        "video_features": videos["proposal_features"],
        "proposal_scores": videos["proposal_scores"],
        "proposal_mask": videos["proposal_mask"],
    }


def _features_schema(columns: dict[str, np.ndarray], factor_columns: dict[str, tuple[str, ...]], extra: dict):
    from datasets import Array2D, Array3D, Array4D, ClassLabel, Features, List, Value

    schema = {
        "image_features": List(Value("float32"), length=columns["image_features"].shape[1]),
        "video_features": Array2D(shape=columns["video_features"].shape[1:], dtype="float32"),
    }
    if "proposal_scores" in columns:
        schema["proposal_scores"] = List(Value("float32"), length=columns["proposal_scores"].shape[1])
    if "proposal_mask" in columns:
        schema["proposal_mask"] = List(Value("bool"), length=columns["proposal_mask"].shape[1])
    schema.update(extra)
    for name, values in factor_columns.items():
        schema[name] = ClassLabel(names=list(values))
    if "video" in columns:
        schema["video"] = Array4D(shape=columns["video"].shape[1:], dtype="uint8")
        schema["image"] = Array3D(shape=columns["image"].shape[1:], dtype="uint8")
    return Features(schema)


def _build_split(
    renderer,
    count: int,
    encoder,
    chunk_size: int,
    bar,
    keep_media: bool,
) -> dict[str, np.ndarray]:
    """Renders `count` items with `renderer(i)` in chunks, encodes each chunk and concatenates the results."""
    parts: dict[str, list] = {}
    for begin in range(0, count, chunk_size):
        rendered = [renderer(i) for i in range(begin, min(count, begin + chunk_size))]
        clips, images = [r[1] for r in rendered], [r[3] for r in rendered]
        encoded = _encode_items(encoder, clips, images)
        encoded["video_factors"] = [r[0] for r in rendered]
        encoded["image_factors"] = [r[2] for r in rendered]
        if keep_media:
            encoded["video"], encoded["image"] = np.stack(clips), np.stack(images)
        for key, value in encoded.items():
            parts.setdefault(key, []).append(value)
        bar.update(len(rendered))
    out: dict[str, Any] = {}
    for key, values in parts.items():
        if key.endswith("_factors"):
            out[key] = [f for chunk in values for f in chunk]
        elif values[0] is None:
            continue
        else:
            shapes = {v.shape[1:] for v in values}
            if len(shapes) != 1:  # every clip has the same length, so every bag has the same size
                raise RuntimeError(f"encoder returned {key} of different shapes across chunks: {sorted(shapes)}")
            out[key] = np.concatenate(values)
    if "proposal_mask" in out and out["proposal_mask"].all():
        del out["proposal_mask"]  # equal-length clips: every proposal is real, the mask says nothing
    return out


def make_activity_dataset(
    num_videos_per_class: int = 20,
    num_queries_per_class: int | None = None,
    seed: int = 0,
    encoder=None,
    num_frames: int = 16,
    size: int = 64,
    class_ids: Sequence[int] | None = None,
    num_test_videos_per_class: int | None = None,
    keep_media: bool = False,
    show_progress: bool = True,
    chunk_size: int = 64,
):
    """Builds the synthetic activity retrieval dataset: rendered clips and query images, encoded from pixels.

    Each row pairs one video instance and one still-image instance (a different instance) of the same class,
    like APIVR's paired `*_v` / `*_i` / `*_label` arrays. Train and test rows are drawn from disjoint random
    streams (`render_instance` re-renders any row).

    Args:
        num_videos_per_class: training rows per class (and test rows, unless `num_test_videos_per_class`).
        num_queries_per_class: test rows per class whose image is used as a query (`is_query`); `None` = all.
            Every test video is in the gallery. Every training row has `is_query=True`.
        seed: everything is a deterministic function of `seed` (and the sizes).
        encoder: a `MapIvrMediaEncoder` (or anything with its `encode_images` / `encode_videos`); default
            `default_activity_encoder()` (classical descriptor; 16-frame proposals every 8 frames, so a 16-frame
            clip is a bag of one proposal and a 32-frame clip a bag of three).
        num_frames, size: clip length and frame size.
        class_ids: subset of `ACTIVITY_CLASSES` to use (labels are renumbered 0..C-1 in this order).
        num_test_videos_per_class: test rows per class (default `num_videos_per_class`).
        keep_media: also store the rendered `video` (T, H, W, 3) and `image` (H, W, 3) uint8 arrays.
        show_progress: tqdm bar over rendered videos.
        chunk_size: rows rendered and encoded at a time (bounds memory).

    Returns:
        `datasets.DatasetDict` with "train" and "test" splits. Columns: `image_features` (Di,),
        `video_features` (K, Dv) proposal bag, `proposal_scores` (K,) when the encoder gives confidences,
        `proposal_mask` (K,) when some proposals are padding, `label` (ClassLabel of class names), `is_query`,
        `instance` (row index within its class), the class factors `shape`, `colour`, `texture`, `motion`,
        the video instance's `scene`, `direction`, `speed`, and the image instance's `image_scene`,
        `image_direction`, `image_speed` (all ClassLabel), plus `video` and `image` with `keep_media`.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Value

    class_ids = list(range(len(ACTIVITY_CLASSES))) if class_ids is None else [int(c) for c in class_ids]
    if not class_ids or any(not 0 <= c < len(ACTIVITY_CLASSES) for c in class_ids) or len(set(class_ids)) != len(class_ids):
        raise ValueError(f"class_ids must be distinct indices into ACTIVITY_CLASSES (0..{len(ACTIVITY_CLASSES) - 1}), got {class_ids}")
    num_test = num_videos_per_class if num_test_videos_per_class is None else num_test_videos_per_class
    for name, value in (("num_videos_per_class", num_videos_per_class), ("num_test_videos_per_class", num_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    num_queries = num_test if num_queries_per_class is None else num_queries_per_class
    if not isinstance(num_queries, (int, np.integer)) or not 1 <= num_queries <= num_test:
        raise ValueError(f"num_queries_per_class must be an int in [1, {num_test}] (test rows per class), got {num_queries_per_class!r}")
    encoder = default_activity_encoder() if encoder is None else encoder

    sizes = {"train": num_videos_per_class, "test": num_test}
    class_names = [ACTIVITY_CLASSES[c].name for c in class_ids]
    splits = {}
    with _progress_bar(sum(sizes.values()) * len(class_ids), "render + encode activity clips", show_progress) as bar:
        for split, per_class in sizes.items():
            index = [(c, i) for c in class_ids for i in range(per_class)]

            def renderer(k, split=split, index=index):
                return render_instance(seed, split, index[k][0], index[k][1], num_frames, size)

            columns = _build_split(renderer, len(index), encoder, chunk_size, bar, keep_media)
            video_factors, image_factors = columns.pop("video_factors"), columns.pop("image_factors")
            columns["label"] = np.array([class_ids.index(c) for c, _ in index], dtype=np.int64)
            columns["is_query"] = np.array([split == "train" or i < num_queries for _, i in index])
            columns["instance"] = np.array([i for _, i in index], dtype=np.int64)
            for name in FACTOR_COLUMNS:
                columns[name] = np.array([FACTOR_VALUES[name].index(getattr(f, name)) for f in video_factors])
            for name in ("scene", "direction", "speed"):
                columns[f"image_{name}"] = np.array([FACTOR_VALUES[name].index(getattr(f, name)) for f in image_factors])
            factor_schema = {**FACTOR_VALUES, **{f"image_{n}": FACTOR_VALUES[n] for n in ("scene", "direction", "speed")}}
            features = _features_schema(
                columns,
                factor_schema,
                {"label": ClassLabel(names=class_names), "is_query": Value("bool"), "instance": Value("int64")},
            )
            splits[split] = Dataset.from_dict({name: columns[name] for name in features}, features=features)
    return DatasetDict(splits)


def make_factor_dataset(
    num_samples: int = 600,
    seed: int = 0,
    encoder=None,
    num_frames: int = 16,
    size: int = 64,
    show_progress: bool = True,
    chunk_size: int = 64,
):
    """Clips and query images with *every* factor drawn independently and uniformly, encoded from pixels.

    The probing set: since no factor predicts another, a linear probe that recovers a factor from the
    features shows the features carry that factor. Each row's image is a different instance with the same
    seven factors as its video.

    Returns:
        `datasets.Dataset` with `image_features`, `video_features` (K, Dv) (+ `proposal_scores` when given)
        and one ClassLabel column per factor in `FACTOR_COLUMNS`.
    """
    from datasets import Dataset

    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    encoder = default_activity_encoder() if encoder is None else encoder

    def renderer(k):
        factors = _sample_random_factors(_instance_rng(seed, 7, k, 2))
        clip = render_clip(factors, num_frames, size, _instance_rng(seed, 7, k, _VIDEO))
        image = render_query_image(factors, size, _instance_rng(seed, 7, k, _IMAGE))
        return factors, clip, factors, image

    with _progress_bar(num_samples, "render + encode probe clips", show_progress) as bar:
        columns = _build_split(renderer, num_samples, encoder, chunk_size, bar, False)
    factors = columns.pop("video_factors")
    columns.pop("image_factors")
    for name in FACTOR_COLUMNS:
        columns[name] = np.array([FACTOR_VALUES[name].index(getattr(f, name)) for f in factors])
    features = _features_schema(columns, FACTOR_VALUES, {})
    return Dataset.from_dict({name: columns[name] for name in features}, features=features)


# ----------------------------------------------------------------------------------------------------------
# Linear probes (torch logistic regression; no sklearn)
# ----------------------------------------------------------------------------------------------------------


def _split_indices(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(int(round(train_fraction * n)), 1), n - 1)
    return order[:cut], order[cut:]


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    train_fraction: float = 0.7,
    seed: int = 0,
    epochs: int = 300,
    learning_rate: float = 0.05,
    weight_decay: float = 1e-3,
) -> float:
    """Held-out accuracy of a multinomial logistic regression trained on a random part of the rows.

    Features are standardised with the training part's mean and std; the model starts from zero weights and is
    trained full-batch with Adam for `epochs` steps (L2 penalty `weight_decay`), on one thread. Deterministic for
    a given `seed` (which picks the training rows).

    Args:
        features: `(N, D)` array.
        labels: `(N,)` integer class ids.
        train_fraction: fraction of rows used for training; the rest is the held-out part.

    Returns:
        accuracy on the held-out rows, in [0, 1].
    """
    import torch

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) and labels (N,) with N >= 2, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    _, y = np.unique(y, return_inverse=True)
    train, held_out = _split_indices(len(y), train_fraction, seed)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.int64))
    num_classes = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=learning_rate)
    # A problem this small runs fastest on one thread (on a busy machine, many times faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            optimizer.zero_grad()
            logits = xt[train] @ weight + bias
            loss = torch.nn.functional.cross_entropy(logits, yt[train]) + weight_decay * weight.pow(2).sum()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predictions = (xt[held_out] @ weight + bias).argmax(1)
    finally:
        torch.set_num_threads(threads)
    return float((predictions == yt[held_out]).float().mean())


def _pooled_features(dataset, column: str) -> np.ndarray:
    """A feature column as (N, D); proposal bags are averaged over their real proposals."""
    columns = [column] + (["proposal_mask"] if "proposal_mask" in dataset.column_names else [])
    data = dataset.select_columns(columns).with_format("numpy")[:]
    array = np.asarray(data[column], dtype=np.float32)
    if array.ndim == 3:
        if "proposal_mask" in data:
            mask = np.asarray(data["proposal_mask"], dtype=np.float32)[..., None]
            return (array * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
        return array.mean(1)
    if array.ndim != 2:
        raise ValueError(f"column {column!r} must hold vectors or proposal bags, got an array of shape {array.shape}")
    return array


def probe_factors(
    dataset_or_features,
    factor_columns: Sequence[str] | Mapping[str, np.ndarray] | None = None,
    feature_column: str = "video_features",
    train_fraction: float = 0.7,
    seed: int = 0,
    epochs: int = 300,
) -> dict[str, dict[str, float]]:
    """Linear-probe accuracy per factor, with the chance level to compare it to.

    Args:
        dataset_or_features: a `datasets.Dataset` (features from `feature_column`, proposal bags averaged), or an
            `(N, D)` / `(N, K, D)` array (then `factor_columns` maps factor name -> `(N,)` labels).
        factor_columns: factor column names (default: those of `FACTOR_COLUMNS` present in the dataset).
        feature_column: which features of a dataset to probe (`"video_features"` or `"image_features"`).

    Returns:
        `{factor: {"accuracy", "chance", "uniform_chance", "num_classes"}}`. `chance` is the held-out accuracy
        of always predicting the training part's most frequent value (the majority baseline); `uniform_chance`
        is 1 / number of values.
    """
    if isinstance(dataset_or_features, np.ndarray) or hasattr(dataset_or_features, "numpy"):
        features = np.asarray(dataset_or_features, dtype=np.float32)
        features = features.mean(1) if features.ndim == 3 else features
        if not isinstance(factor_columns, Mapping):
            raise ValueError("with an array of features, factor_columns must map factor name -> labels")
        labels = {name: np.asarray(values) for name, values in factor_columns.items()}
    else:
        dataset = dataset_or_features
        names = [c for c in FACTOR_COLUMNS if c in dataset.column_names] if factor_columns is None else list(factor_columns)
        missing = [c for c in [feature_column, *names] if c not in dataset.column_names]
        if missing:
            raise ValueError(f"dataset has no column(s) {missing}; columns are {dataset.column_names}")
        features = _pooled_features(dataset, feature_column)
        data = dataset.select_columns(names).with_format("numpy")[:]
        labels = {name: np.asarray(data[name]) for name in names}
    train, held_out = _split_indices(len(features), train_fraction, seed)
    results = {}
    for name, y in labels.items():
        if y.shape != (len(features),):
            raise ValueError(f"labels of factor {name!r} have shape {y.shape}, expected ({len(features)},)")
        values, counts = np.unique(y[train], return_counts=True)
        majority = values[counts.argmax()]
        results[name] = {
            "accuracy": linear_probe(features, y, train_fraction, seed, epochs),
            "chance": float((y[held_out] == majority).mean()),
            "uniform_chance": 1.0 / len(np.unique(y)),
            "num_classes": int(len(np.unique(y))),
        }
    return results
