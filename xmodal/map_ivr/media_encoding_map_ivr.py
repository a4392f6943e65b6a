"""Raw images and videos -> MAP-IVR input features (the project's stand-in for VGG-16 and R-C3D).

MAP-IVR consumes an image feature ``u`` and, per video, a bag of activity-proposal features with
confidences. The paper takes them from VGG-16 and R-C3D (3D ConvNet -> proposal subnet -> 3D RoI
pooling), trained on the dataset's activity classes. Neither network is available here, so this
module is the documented stand-in: a video is decoded with PyAV (:func:`read_video_frames`), cut
into fixed-length temporal clips (``clip_length`` frames every ``clip_stride`` frames), and each
clip acts as one proposal. Two backends turn pixels into features:

``"descriptor"`` (offline default; transparent, no weights, no training)
    A classical descriptor computed from pixels only (never from generator factors).

    * Image descriptor (188 numbers, used for query images and every video frame): joint RGB
      colour histogram (4x4x4 bins, 64), chroma-weighted hue histogram (12), saturation (4) and
      value (4) histograms, 4x4 spatial colour layout (mean RGB per cell, 48), 4x4 edge-density
      layout (mean Sobel magnitude per cell, 16), gradient-orientation histogram (9 unsigned
      bins in each of 2x2 cells, magnitude weighted, 36) and a structure-tensor summary (mean
      gradient magnitude, horizontal/vertical anisotropy, diagonal anisotropy, coherence, 4),
      which carries shape, pose and motion-blur direction cues of a still frame.
    * Clip descriptor (238 numbers) = appearance part (the image descriptor averaged over the
      clip's frames, 188) + motion part (50) computed from frame differences:
      frame-difference energy statistics and periodicity (5); displacements of the
      frame-difference energy centroid, histogrammed by direction (8) and magnitude (4);
      the moving region (pixels differing from the clip's temporal median background):
      centroid net displacement, mean speed, spread, straightness, velocity sign changes and
      periodicity of x and y (12); area mean, zoom log-ratio, variation and periodicity (5);
      orientation angular velocity (signed and absolute), elongation and periodicity (5);
      normal-flow direction histogram, mean normal-flow speed, rotation (curl) and
      expansion (divergence) coherence about the moving region's centroid (11). Together they
      tell direction, speed, bounce, spin, wave and zoom apart.
      Coordinates are in [-1, 1] with x to the right and y downwards (image convention), so a
      positive curl is clockwise on screen and a positive divergence is a zoom-in.
    * Proposal scores: ``None`` (no classifier, so every clip is kept and averaged).
    The block layout is in :attr:`MapIvrMediaEncoder.image_feature_blocks` and
    :attr:`MapIvrMediaEncoder.video_feature_blocks` (name -> ``(start, stop)``) so a probe can
    read the appearance and motion parts separately.

``"backbone"``
    Images through a transformers image backbone (ResNet family; the pooled output of its base
    model), clips through a transformers video backbone (VideoMAE family; the mean of the last
    encoder hidden state). When the video model has a classification head
    (``VideoMAEForVideoClassification``), a clip's confidence is its highest class probability,
    as R-C3D's proposal confidence is its highest class score. Backbones come as model instances
    or by local path / cached name (safetensors only); nothing is downloaded by this module.
    Offline, a backbone with random weights carries almost nothing: use it with trained weights.

The features are *unnormalised*; the APIVR normalisation (mean-centring + min-max scaling with
training statistics) is :class:`MapIvrFeatureExtractor`'s job.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


__all__ = ["MapIvrMediaEncoder", "read_video_frames", "image_descriptor", "clip_motion_descriptor"]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Layout of the descriptor backend's vectors: (name, size), in order.
IMAGE_DESCRIPTOR_BLOCKS: tuple[tuple[str, int], ...] = (
    ("rgb_histogram", 64),
    ("hue_histogram", 12),
    ("saturation_histogram", 4),
    ("value_histogram", 4),
    ("colour_layout", 48),
    ("edge_layout", 16),
    ("orientation_histogram", 36),
    ("structure_tensor", 4),
)
MOTION_DESCRIPTOR_BLOCKS: tuple[tuple[str, int], ...] = (
    ("difference_energy", 5),
    ("difference_centroid_direction", 8),
    ("difference_centroid_magnitude", 4),
    ("region_trajectory", 12),
    ("region_area", 5),
    ("region_orientation", 5),
    ("normal_flow", 11),
)
IMAGE_DESCRIPTOR_DIM = sum(size for _, size in IMAGE_DESCRIPTOR_BLOCKS)  # 188
MOTION_DESCRIPTOR_DIM = sum(size for _, size in MOTION_DESCRIPTOR_BLOCKS)  # 50

_EPS = 1e-8
# Edges (in units of the frame's half-width per frame) of the centroid step-magnitude histogram.
_STEP_EDGES = (0.01, 0.03, 0.1)
# Below these amplitudes a series is treated as flat, so sensor noise does not pick a frequency.
_MIN_POSITION_AMPLITUDE = 0.005
_MIN_AREA_AMPLITUDE = 0.002
_MIN_ENERGY_AMPLITUDE = 0.0005


def _blocks_to_slices(blocks: Sequence[tuple[str, int]], offset: int = 0) -> dict[str, tuple[int, int]]:
    slices, start = {}, offset
    for name, size in blocks:
        slices[name] = (start, start + size)
        start += size
    return slices


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def read_video_frames(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file's first video stream with PyAV.

    Args:
        path: the video file.
        max_frames: stop after this many frames (``None``: all).

    Returns:
        ``(T, H, W, 3)`` uint8 RGB frames.
    """
    try:
        import av  # optional dependency, only needed for files
    except ImportError as err:  # pragma: no cover - av is a declared dependency
        raise ImportError("Reading video files needs PyAV: `pip install av`.") from err
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    path = os.fspath(path)
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path!r} has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.FFmpegError as err:
        raise ValueError(f"cannot decode video file {path!r}: {err}") from err
    if not frames:
        raise ValueError(f"video file {path!r} has no decodable frames")
    return np.stack(frames)


def _as_rgb_uint8(array: Any, what: str) -> np.ndarray:
    """PIL image or array -> (H, W, 3) uint8; grey and RGBA are converted."""
    if hasattr(array, "convert") and hasattr(array, "size"):  # PIL image
        array = np.asarray(array.convert("RGB"))
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0-255), got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{what} must have shape (H, W, 3), got {tuple(array.shape)}")
    return array[..., :3]


def _as_video_uint8(video: Any, what: str, max_frames: int | None) -> np.ndarray:
    if isinstance(video, (str, os.PathLike)):
        return read_video_frames(video, max_frames=max_frames)
    video = np.asarray(video)
    if video.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0-255), got dtype {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"{what} must have shape (T, H, W, 3) with T >= 1, got {tuple(video.shape)}")
    return video[:max_frames] if max_frames is not None else video


def _frames_to_tensor(frames: np.ndarray, size: int | None) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1] (area resampling)."""
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        frames = frames.copy()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


# ----------------------------------------------------------------------------------------------
# Descriptor backend (pure functions on tensors, vectorised over a batch)
# ----------------------------------------------------------------------------------------------


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., H, W) luma."""
    return 0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]


def _sobel(grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients (scaled by 1/8: a unit step gives 0.5) of (N, H, W) -> two (N, H, W)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype) / 8.0
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).to(grey.device)
    padded = F.pad(grey.unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(padded, kernels)
    return g[:, 0], g[:, 1]


def _histogram(index: torch.Tensor, weight: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-row weighted histogram: index, weight (N, P) -> (N, bins)."""
    out = torch.zeros(index.shape[0], bins, dtype=weight.dtype, device=weight.device)
    return out.scatter_add_(1, index, weight)


def _angle_bins(angle: torch.Tensor, bins: int, period: float) -> torch.Tensor:
    """Angles -> bin index with bin 0 centred on angle 0 (period 2*pi: directions; pi: orientations)."""
    width = period / bins
    return torch.floor(torch.remainder(angle + width / 2, period) / width).long().clamp_(0, bins - 1)


def image_descriptor(images: torch.Tensor) -> torch.Tensor:
    """Classical appearance descriptor of images.

    Args:
        images: ``(N, 3, S, S)`` float RGB in [0, 1].

    Returns:
        ``(N, 188)`` float32, blocks as in ``IMAGE_DESCRIPTOR_BLOCKS``.
    """
    n, _, s, _ = images.shape
    pixels = s * s
    flat = images.reshape(n, 3, pixels)
    ones = torch.ones(n, pixels, dtype=images.dtype, device=images.device)

    # Joint RGB histogram, 4 levels per channel.
    q = (flat * 4).long().clamp_(0, 3)
    rgb_hist = _histogram(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], ones, 64) / pixels

    # HSV: hue weighted by chroma so grey pixels do not vote for an arbitrary hue.
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    maxc, argmax = flat.max(dim=1)
    chroma = maxc - flat.min(dim=1).values
    safe = chroma.clamp_min(_EPS)
    hue = torch.where(argmax == 0, torch.remainder((g - b) / safe, 6.0), torch.zeros_like(r))
    hue = torch.where(argmax == 1, (b - r) / safe + 2.0, hue)
    hue = torch.where(argmax == 2, (r - g) / safe + 4.0, hue) / 6.0
    hue_hist = _histogram((hue * 12).long().clamp_(0, 11), chroma, 12) / pixels
    saturation = chroma / maxc.clamp_min(_EPS)
    sat_hist = _histogram((saturation * 4).long().clamp_(0, 3), ones, 4) / pixels
    val_hist = _histogram((maxc * 4).long().clamp_(0, 3), ones, 4) / pixels

    colour_layout = F.adaptive_avg_pool2d(images, 4).reshape(n, 48)

    gx, gy = _sobel(_grey(images))
    magnitude = torch.sqrt(gx * gx + gy * gy)
    edge_layout = F.adaptive_avg_pool2d(magnitude.unsqueeze(1), 4).reshape(n, 16)

    # Unsigned orientation histogram in 2x2 spatial cells, L1-normalised per image.
    orientation = torch.atan2(gy, gx)
    bins = _angle_bins(orientation, 9, math.pi)
    rows = torch.arange(s, device=images.device) >= s // 2
    cell = (rows.long()[:, None] * 2 + rows.long()[None, :]).expand(n, s, s)
    hog = _histogram((cell * 9 + bins).reshape(n, pixels), magnitude.reshape(n, pixels), 36)
    hog = hog / hog.sum(dim=1, keepdim=True).clamp_min(_EPS)

    # Structure tensor: dominant gradient direction and its strength (blur smears along motion).
    jxx, jyy, jxy = (gx * gx).mean((1, 2)), (gy * gy).mean((1, 2)), (gx * gy).mean((1, 2))
    trace = (jxx + jyy).clamp_min(_EPS)
    structure = torch.stack(
        [
            magnitude.mean((1, 2)),
            (jxx - jyy) / trace,
            2 * jxy / trace,
            torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / trace,
        ],
        dim=1,
    )
    out = torch.cat([rgb_hist, hue_hist, sat_hist, val_hist, colour_layout, edge_layout, hog, structure], dim=1)
    return out.float()


def _grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: xs varies along columns, ys along rows (downwards)."""
    axis = torch.linspace(-1.0, 1.0, size, device=device)
    return axis[None, :].expand(size, size), axis[:, None].expand(size, size)


def _centroid(weight: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroid of (..., S, S) maps -> ((..., 2) centroid, (...) bool valid)."""
    total = weight.sum((-1, -2))
    valid = total > 1e-6
    denom = total.clamp_min(1e-6)
    cx = (weight * xs).sum((-1, -2)) / denom
    cy = (weight * ys).sum((-1, -2)) / denom
    centre = torch.stack([cx, cy], dim=-1) * valid.unsqueeze(-1)
    return centre, valid


def _periodicity(series: torch.Tensor, min_amplitude: float) -> torch.Tensor:
    """Dominant frequency of a detrended series and its amplitude: (C, n) -> (C, 2).

    The frequency is in cycles per frame divided by the Nyquist rate (so in (0, 1]); the amplitude
    is in the series' units. Both are 0 for series shorter than 4 samples or flatter than
    ``min_amplitude`` (a linear drift is removed first, so steady motion is not "periodic").
    """
    c, n = series.shape
    if n < 4:
        return series.new_zeros(c, 2)
    t = torch.arange(n, dtype=series.dtype, device=series.device)
    t = t - t.mean()
    centred = series - series.mean(dim=1, keepdim=True)
    slope = (centred * t).sum(dim=1, keepdim=True) / (t * t).sum()
    detrended = centred - slope * t
    spectrum = torch.fft.rfft(detrended, dim=1)[:, 1:].abs()
    peak, index = spectrum.max(dim=1)
    amplitude = 2.0 * peak / n
    frequency = (index + 1).to(series.dtype) * 2.0 / n
    keep = amplitude >= min_amplitude
    return torch.stack([frequency * keep, amplitude * keep], dim=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def clip_motion_descriptor(clips: torch.Tensor, motion_threshold: float = 0.1) -> torch.Tensor:
    """Motion descriptor of clips, from frame differences only.

    Args:
        clips: ``(C, L, 3, S, S)`` float RGB in [0, 1], ``L >= 2``.
        motion_threshold: a pixel belongs to the moving region when some channel differs from the
            clip's temporal median by more than this.

    Returns:
        ``(C, 50)`` float32, blocks as in ``MOTION_DESCRIPTOR_BLOCKS``.
    """
    c, length, _, s, _ = clips.shape
    if length < 2:
        return clips.new_zeros(c, MOTION_DESCRIPTOR_DIM)
    xs, ys = _grid(s, clips.device)
    grey = _grey(clips)  # (C, L, S, S)

    # Frame-difference energy and its periodicity.
    temporal = grey[:, 1:] - grey[:, :-1]  # (C, L-1, S, S)
    difference = temporal.abs()
    energy = difference.mean((-1, -2))  # (C, L-1)
    energy_block = torch.cat(
        [
            torch.stack([energy.mean(1), energy.std(1, unbiased=False), energy.amax(1)], dim=1),
            _periodicity(energy, _MIN_ENERGY_AMPLITUDE),
        ],
        dim=1,
    )

    # Displacements of the frame-difference energy centroid: direction and magnitude histograms.
    diff_centre, diff_valid = _centroid(difference, xs, ys)  # (C, L-1, 2), (C, L-1)
    step = diff_centre[:, 1:] - diff_centre[:, :-1]
    step_valid = diff_valid[:, 1:] & diff_valid[:, :-1]
    steps = step_valid.sum(1, keepdim=True).clamp_min(1).to(clips.dtype)
    step_length = step.norm(dim=-1) * step_valid
    direction = _angle_bins(torch.atan2(step[..., 1], step[..., 0]), 8, 2 * math.pi)
    direction_hist = _histogram(direction, step_length, 8) / steps
    magnitude_bin = torch.bucketize(step_length, torch.tensor(_STEP_EDGES, device=clips.device))
    magnitude_hist = _histogram(magnitude_bin, step_valid.to(clips.dtype), 4) / steps

    # The moving region: pixels far from the clip's temporal median (a static-background estimate).
    background = clips.median(dim=1).values  # (C, 3, S, S)
    region = ((clips - background.unsqueeze(1)).abs().amax(dim=2) > motion_threshold).to(clips.dtype)
    area = region.mean((-1, -2))  # (C, L)
    centre, valid = _centroid(region, xs, ys)  # (C, L, 2), (C, L)
    velocity = centre[:, 1:] - centre[:, :-1]
    pair = valid[:, 1:] & valid[:, :-1]
    velocity = velocity * pair.unsqueeze(-1)
    speed = velocity.norm(dim=-1)
    net = velocity.sum(1)  # (C, 2)
    mean_centre = (centre * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
    filled = torch.where(valid.unsqueeze(-1), centre, mean_centre.unsqueeze(1))  # flat where empty
    spread = torch.sqrt(_masked_mean((centre - mean_centre.unsqueeze(1)) ** 2, valid.unsqueeze(-1), dim=1))
    straightness = net.norm(dim=-1) / speed.sum(1).clamp_min(_EPS)
    moving = pair & (speed > 1e-3)
    flips = []
    for axis in range(2):
        v = velocity[..., axis]
        both = moving[:, 1:] & moving[:, :-1]
        flips.append(((v[:, 1:] * v[:, :-1] < 0) & both).sum(1).to(clips.dtype) / max(length - 2, 1))
    trajectory_block = torch.cat(
        [
            net,
            _masked_mean(speed, pair).unsqueeze(1),
            spread,
            straightness.unsqueeze(1),
            torch.stack(flips, dim=1),
            _periodicity(filled[..., 0], _MIN_POSITION_AMPLITUDE),
            _periodicity(filled[..., 1], _MIN_POSITION_AMPLITUDE),
        ],
        dim=1,
    )

    half = length // 2
    first = area[:, : max(half, 1)].mean(1)
    second = area[:, half:].mean(1)
    area_block = torch.cat(
        [
            torch.stack(
                [
                    area.mean(1),
                    torch.log((second + 0.01) / (first + 0.01)),  # > 0: zooming in
                    area.std(1, unbiased=False) / (area.mean(1) + 0.01),
                ],
                dim=1,
            ),
            _periodicity(area, _MIN_AREA_AMPLITUDE),
        ],
        dim=1,
    )

    # Orientation of the moving region from its second moments (angle 2*theta avoids the pi ambiguity).
    dx = xs - centre[..., 0, None, None]
    dy = ys - centre[..., 1, None, None]
    mass = region.sum((-1, -2)).clamp_min(1e-6)
    mu20 = (region * dx * dx).sum((-1, -2)) / mass
    mu02 = (region * dy * dy).sum((-1, -2)) / mass
    mu11 = (region * dx * dy).sum((-1, -2)) / mass
    double_angle = torch.atan2(2 * mu11, mu20 - mu02)
    elongation = torch.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2) / (mu20 + mu02).clamp_min(_EPS) * valid
    oriented = valid & (elongation > 0.1)
    turn = torch.remainder(double_angle[:, 1:] - double_angle[:, :-1] + math.pi, 2 * math.pi) - math.pi
    turning = oriented[:, 1:] & oriented[:, :-1]
    orientation_block = torch.cat(
        [
            torch.stack(
                [
                    _masked_mean(turn / 2, turning),
                    _masked_mean(turn.abs() / 2, turning),
                    _masked_mean(elongation, valid),
                ],
                dim=1,
            ),
            _periodicity(elongation * torch.cos(double_angle), _MIN_AREA_AMPLITUDE),
        ],
        dim=1,
    )

    # Normal flow (the flow component along the image gradient): -I_t * grad(I) / |grad(I)|^2.
    mid = 0.5 * (grey[:, 1:] + grey[:, :-1])
    gx, gy = _sobel(mid.reshape(-1, s, s))
    gx, gy = gx.reshape(mid.shape), gy.reshape(mid.shape)
    grad_sq = gx * gx + gy * gy
    flow_x = -temporal * gx / (grad_sq + 1e-3)
    flow_y = -temporal * gy / (grad_sq + 1e-3)
    weight = difference * torch.sqrt(grad_sq)
    total = weight.sum((1, 2, 3)).clamp_min(_EPS)
    flow_dir = _angle_bins(torch.atan2(flow_y, flow_x), 8, 2 * math.pi)
    flow_hist = _histogram(flow_dir.reshape(c, -1), weight.reshape(c, -1), 8) / total.unsqueeze(1)
    flow_speed = torch.sqrt(flow_x**2 + flow_y**2).clamp_max(5.0)
    mean_flow_speed = (weight * flow_speed).sum((1, 2, 3)) / total / s
    # Rotation and expansion about the moving region's centroid (the energy centroid when empty).
    pivot = torch.where(pair.unsqueeze(-1), centre[:, :-1], diff_centre)
    rx = xs - pivot[..., 0, None, None]
    ry = ys - pivot[..., 1, None, None]
    norm = weight * torch.sqrt(rx * rx + ry * ry) * flow_speed
    coherence = norm.sum((1, 2, 3)).clamp_min(_EPS)
    curl = (weight * (rx * flow_y - ry * flow_x)).sum((1, 2, 3)) / coherence
    divergence = (weight * (rx * flow_x + ry * flow_y)).sum((1, 2, 3)) / coherence
    flow_block = torch.cat([flow_hist, torch.stack([mean_flow_speed, curl, divergence], dim=1)], dim=1)

    out = torch.cat(
        [
            energy_block,
            direction_hist,
            magnitude_hist,
            trajectory_block,
            area_block,
            orientation_block,
            flow_block,
        ],
        dim=1,
    )
    return out.float()


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------


def _progress(iterable, total: int, show: bool, desc: str):
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return iterable
    return tqdm(iterable, total=total, desc=desc)


class MapIvrMediaEncoder:
    """Encode raw images and videos into MAP-IVR input features (see the module docstring).

    Args:
        backend: ``"descriptor"`` (offline default, classical descriptor) or ``"backbone"``.
        image_backbone: ``"backbone"`` only: a transformers image model instance (ResNet family)
            or a local path / cached name loaded with ``AutoModel`` (safetensors only).
        video_backbone: ``"backbone"`` only: a transformers video model instance (VideoMAE family;
            ``VideoMAEForVideoClassification`` also yields clip confidences) or a path / name.
        clip_length: frames per clip (proposal). Videos shorter than this give one clip of all
            their frames.
        clip_stride: frames between the starts of consecutive clips. A last clip ending on the
            last frame is added when the stride does not reach it.
        max_clips: keep at most this many clips per video (evenly spaced); ``None``: all.
        max_frames: decode at most this many frames per video file.
        descriptor_size: ``"descriptor"``: frames are resampled (area) to this square size first.
        motion_threshold: ``"descriptor"``: colour difference to the clip's median background
            above which a pixel is "moving" (0-1 scale).
        image_size: ``"backbone"``: input size; defaults to the backbone config's ``image_size``
            or 224.
        image_mean, image_std: ``"backbone"``: input normalisation (ImageNet's by default).
        batch_size: images / clips per forward batch.
        device: torch device for the backbones (default CPU).
        show_progress: tqdm bar; ``None`` shows one for lists of 256 items or more.

    Attributes:
        image_feature_dim, video_feature_dim: sizes of the returned vectors.
        image_feature_blocks, video_feature_blocks: ``"descriptor"`` only, name -> (start, stop).
    """

    def __init__(
        self,
        backend: str = "descriptor",
        image_backbone: Any = None,
        video_backbone: Any = None,
        clip_length: int = 16,
        clip_stride: int = 8,
        max_clips: int | None = None,
        max_frames: int | None = None,
        descriptor_size: int = 64,
        motion_threshold: float = 0.1,
        image_size: int | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        show_progress: bool | None = None,
    ):
        if backend not in ("descriptor", "backbone"):
            raise ValueError(f"backend must be 'descriptor' or 'backbone', got {backend!r}")
        for name, value, low in (
            ("clip_length", clip_length, 1),
            ("clip_stride", clip_stride, 1),
            ("descriptor_size", descriptor_size, 8),
            ("batch_size", batch_size, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if max_clips is not None and max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 or None, got {max_clips}")
        if not 0.0 < motion_threshold < 1.0:
            raise ValueError(f"motion_threshold must be in (0, 1), got {motion_threshold}")
        self.backend = backend
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self.max_clips = max_clips
        self.max_frames = max_frames
        self.descriptor_size = descriptor_size
        self.motion_threshold = motion_threshold
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.show_progress = show_progress
        self.image_mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)

        if backend == "descriptor":
            if image_backbone is not None or video_backbone is not None:
                raise ValueError("image_backbone / video_backbone are only used with backend='backbone'")
            self.image_model = self.video_model = None
            self.image_feature_dim = IMAGE_DESCRIPTOR_DIM
            self.video_feature_dim = IMAGE_DESCRIPTOR_DIM + MOTION_DESCRIPTOR_DIM
            self.image_feature_blocks = _blocks_to_slices(IMAGE_DESCRIPTOR_BLOCKS)
            self.video_feature_blocks = {
                **{f"appearance.{k}": v for k, v in self.image_feature_blocks.items()},
                **{f"motion.{k}": v for k, v in _blocks_to_slices(MOTION_DESCRIPTOR_BLOCKS, IMAGE_DESCRIPTOR_DIM).items()},
                "appearance": (0, IMAGE_DESCRIPTOR_DIM),
                "motion": (IMAGE_DESCRIPTOR_DIM, IMAGE_DESCRIPTOR_DIM + MOTION_DESCRIPTOR_DIM),
            }
            return

        if image_backbone is None or video_backbone is None:
            raise ValueError("backend='backbone' needs both image_backbone and video_backbone")
        self.image_model = self._load_image_model(image_backbone).to(self.device).eval()
        self.video_model = self._load_video_model(video_backbone).to(self.device).eval()
        image_config, video_config = self.image_model.config, self.video_model.config
        self.image_size = image_size or getattr(image_config, "image_size", None) or 224
        self.video_image_size = image_size or getattr(video_config, "image_size", None) or 224
        self.video_num_frames = getattr(video_config, "num_frames", None) or clip_length
        hidden_sizes = getattr(image_config, "hidden_sizes", None)
        self.image_feature_dim = int(hidden_sizes[-1]) if hidden_sizes else int(image_config.hidden_size)
        self.video_feature_dim = int(video_config.hidden_size)
        self.has_clip_classifier = any(
            arch.endswith("ForVideoClassification") for arch in (video_config.architectures or [])
        ) or type(self.video_model).__name__.endswith("ForVideoClassification")
        self.image_feature_blocks = self.video_feature_blocks = None

    # ---- backbones ----

    @staticmethod
    def _load_image_model(backbone: Any) -> torch.nn.Module:
        if isinstance(backbone, torch.nn.Module):
            return backbone
        from transformers import AutoModel

        return AutoModel.from_pretrained(backbone, use_safetensors=True)

    @staticmethod
    def _load_video_model(backbone: Any) -> torch.nn.Module:
        if isinstance(backbone, torch.nn.Module):
            return backbone
        from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

        config = AutoConfig.from_pretrained(backbone)
        if any(arch.endswith("ForVideoClassification") for arch in (config.architectures or [])):
            return AutoModelForVideoClassification.from_pretrained(backbone, use_safetensors=True)
        return AutoModel.from_pretrained(backbone, use_safetensors=True)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.image_mean) / self.image_std

    # ---- clips ----

    def clip_starts(self, num_frames: int) -> list[int]:
        """Start frames of the clips (proposals) cut from a video of ``num_frames`` frames."""
        if num_frames <= self.clip_length:
            return [0]
        starts = list(range(0, num_frames - self.clip_length + 1, self.clip_stride))
        if starts[-1] + self.clip_length < num_frames:
            starts.append(num_frames - self.clip_length)
        if self.max_clips is not None and len(starts) > self.max_clips:
            picks = np.linspace(0, len(starts) - 1, self.max_clips).round().astype(int)
            starts = [starts[i] for i in picks]
        return starts

    def _show(self, count: int) -> bool:
        return self.show_progress if self.show_progress is not None else count >= 256

    # ---- public API ----

    def encode_images(self, images: Sequence[Any], show_progress: bool | None = None) -> np.ndarray:
        """Encode still images (PIL images or ``(H, W, 3)`` uint8 arrays).

        Returns:
            ``(N, image_feature_dim)`` float32.
        """
        images = list(images)
        out = np.zeros((len(images), self.image_feature_dim), dtype=np.float32)
        show = self._show(len(images)) if show_progress is None else show_progress
        starts = range(0, len(images), self.batch_size)
        for start in _progress(starts, len(starts), show, "encode images"):
            batch = images[start : start + self.batch_size]
            arrays = [_as_rgb_uint8(image, f"image {start + i}") for i, image in enumerate(batch)]
            out[start : start + len(batch)] = self._encode_image_batch(arrays).numpy()
        return out

    @torch.no_grad()
    def _encode_image_batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        size = self.descriptor_size if self.backend == "descriptor" else self.image_size
        x = torch.cat([_frames_to_tensor(a[None], size) for a in arrays])
        if self.backend == "descriptor":
            return image_descriptor(x)
        pixel_values = self._normalise(x).to(self.device)
        pooled = self.image_model.base_model(pixel_values=pixel_values).pooler_output
        return pooled.reshape(len(arrays), -1).float().cpu()

    def encode_videos(self, videos: Sequence[Any], show_progress: bool | None = None) -> dict[str, Any]:
        """Encode videos (``(T, H, W, 3)`` uint8 arrays or video file paths) into proposal bags.

        Returns:
            dict with ``proposal_features`` ``(N, K, video_feature_dim)`` float32 (zero padding),
            ``proposal_scores`` ``(N, K)`` float32 clip confidences, or ``None`` when the backend
            has no classifier, and ``proposal_mask`` ``(N, K)`` bool (True = real clip).
            ``K`` is the largest number of clips of any video.
        """
        videos = list(videos)
        features: list[np.ndarray] = []
        scores: list[np.ndarray | None] = []
        show = self._show(len(videos)) if show_progress is None else show_progress
        starts = range(0, len(videos), self.batch_size)
        for start in _progress(starts, len(starts), show, "encode videos"):
            batch = videos[start : start + self.batch_size]
            frames = [_as_video_uint8(v, f"video {start + i}", self.max_frames) for i, v in enumerate(batch)]
            batch_features, batch_scores = self._encode_video_batch(frames)
            features.extend(batch_features)
            scores.extend(batch_scores)
        num_clips = max((f.shape[0] for f in features), default=0)
        bag = np.zeros((len(videos), num_clips, self.video_feature_dim), dtype=np.float32)
        mask = np.zeros((len(videos), num_clips), dtype=bool)
        score = np.zeros((len(videos), num_clips), dtype=np.float32)
        for i, f in enumerate(features):
            bag[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = True
            if scores[i] is not None:
                score[i, : f.shape[0]] = scores[i]
        has_scores = self.backend == "backbone" and self.has_clip_classifier
        return {"proposal_features": bag, "proposal_scores": score if has_scores else None, "proposal_mask": mask}

    @torch.no_grad()
    def _encode_video_batch(self, videos: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        if self.backend == "descriptor":
            return self._descriptor_video_batch(videos), [None] * len(videos)
        return self._backbone_video_batch(videos)

    def _descriptor_video_batch(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [_frames_to_tensor(v, self.descriptor_size) for v in videos]
        frame_descriptors = image_descriptor(torch.cat(tensors)).split([t.shape[0] for t in tensors])
        # Clips of equal length are stacked across videos and described in one batch.
        by_length: dict[int, list[tuple[int, int, int]]] = {}
        for v, t in enumerate(tensors):
            length = min(self.clip_length, t.shape[0])
            for c, start in enumerate(self.clip_starts(t.shape[0])):
                by_length.setdefault(length, []).append((v, c, start))
        outputs = [np.zeros((len(self.clip_starts(t.shape[0])), self.video_feature_dim), np.float32) for t in tensors]
        for length, items in by_length.items():
            for begin in range(0, len(items), self.batch_size):
                chunk = items[begin : begin + self.batch_size]
                clips = torch.stack([tensors[v][s : s + length] for v, _, s in chunk])
                appearance = torch.stack([frame_descriptors[v][s : s + length].mean(0) for v, _, s in chunk])
                motion = clip_motion_descriptor(clips, self.motion_threshold)
                rows = torch.cat([appearance, motion], dim=1).numpy()
                for (v, c, _), row in zip(chunk, rows):
                    outputs[v][c] = row
        return outputs

    def _backbone_video_batch(self, videos: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        items = []  # (video, clip index, frames of the clip resampled to the backbone's num_frames)
        for v, frames in enumerate(videos):
            length = min(self.clip_length, frames.shape[0])
            for c, start in enumerate(self.clip_starts(frames.shape[0])):
                picks = np.linspace(start, start + length - 1, self.video_num_frames).round().astype(int)
                items.append((v, c, frames[picks]))
        counts = [len(self.clip_starts(f.shape[0])) for f in videos]
        features = [np.zeros((n, self.video_feature_dim), np.float32) for n in counts]
        scores = [np.zeros((n,), np.float32) for n in counts]
        for begin in range(0, len(items), self.batch_size):
            chunk = items[begin : begin + self.batch_size]
            pixel_values = torch.stack(
                [self._normalise(_frames_to_tensor(f, self.video_image_size)) for _, _, f in chunk]
            ).to(self.device)  # (B, T, 3, H, W)
            output = self.video_model(pixel_values=pixel_values, output_hidden_states=True)
            hidden = output.hidden_states[-1] if output.hidden_states is not None else output.last_hidden_state
            pooled = hidden.mean(dim=1).float().cpu().numpy()
            confidence = None
            if self.has_clip_classifier:
                confidence = output.logits.float().softmax(-1).amax(-1).cpu().numpy()
            for k, (v, c, _) in enumerate(chunk):
                features[v][c] = pooled[k]
                if confidence is not None:
                    scores[v][c] = confidence[k]
        return features, [s if self.has_clip_classifier else None for s in scores]
