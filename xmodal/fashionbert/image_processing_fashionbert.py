# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Image processor for FashionBERT (transformers' PIL/NumPy backend, no torchvision).

Every input image becomes an RGB array of `image_size` x `image_size` pixels, rescaled to [0, 1] and normalised
with ImageNet statistics. The processor does not cut patches: the model's patch encoder cuts the
`patch_grid` x `patch_grid` grid itself (the paper's 8 x 8 grid of 32 x 32 pixel patches on 256 x 256 images), in
every patch-encoder mode. Next to `pixel_values` the processor returns `patch_mask`, one 1 per patch (the attention
mask over patches, like ViLT's `pixel_mask`).

Conversion to RGB of each accepted input (in float32, in the 0..255 range, before resizing):

- PIL "RGB": as is. "L" and "1": grey copied to the three channels ("1" is 0 or 255).
- PIL "LA", "RGBA", "PA", "P" (through RGBA, so a transparent palette entry counts): alpha composited on **white**,
  `rgb * a + 255 * (1 - a)`, because fashion product shots are on white. "La", "RGBa" (premultiplied alpha):
  `rgb + 255 * (1 - a)`.
- PIL "I;16" ("I;16B", "I;16L", "I;16N"): 16-bit grey scaled by the dtype's range, `v * 255 / 65535` (not clipped).
- PIL "I" (32-bit signed): scaled as 16-bit data (`v * 255 / 65535`) when every value lies in [0, 65535] (what
  Pillow produces when it converts a 16-bit image to "I"), otherwise by the int32 range,
  `(v + 2**31) * 255 / (2**32 - 1)`.
- PIL "F" (32-bit float): values must lie in [0, 1] (the float-image convention); multiplied by 255.
- Other PIL modes ("CMYK", "YCbCr", "RGBX", "HSV", "LAB", ...): Pillow's `convert("RGB")`.
- NumPy arrays and torch tensors of shape (H, W), (H, W, C) or (C, H, W), C in 1, 2, 3, 4 (grey, grey + alpha, RGB,
  RGBA; alpha composited on white). dtype uint8 as is, uint16 scaled by 255 / 65535, bool as 0 / 255, float must
  lie in [0, 1] (multiplied by 255); other integer dtypes are refused (their range is ambiguous). When both the
  first and the last axis could hold channels, NumPy arrays are read channels-last (PIL's and OpenCV's layout) and
  torch tensors channels-first (torch's layout); `input_data_format` overrides this.
- `str` / `os.PathLike`: a local image file opened with Pillow (its decompression-bomb limit stays on); an http(s)
  URL through transformers' `load_image`.

PIL images also get their EXIF orientation applied (`ImageOps.exif_transpose`: a photo taken in portrait comes out
upright), and an animated image (GIF, WebP, APNG) contributes its first frame (the frame the caller had selected is
restored afterwards). Errors name the offending item (`images[3]`) and the problem (unsupported shape, dtype, value
range, unreadable file).

Resizing (`do_resize`, default on) goes to exactly `image_size` x `image_size` (non-square images are stretched; the
Fashion-Gen images the paper uses are 256 x 256 already, where resizing is the identity). It runs per channel on
Pillow's 32-bit float images ("F" mode), so 16-bit and float inputs keep their precision and every input type goes
through the same arithmetic; the result is clipped to [0, 255] because bicubic filters overshoot. The default filter is
bicubic (`resample=PILImageResampling.BICUBIC`, as ViLT); bilinear is `PILImageResampling.BILINEAR`.
"""

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import PIL.Image
from PIL import ExifTags, ImageOps
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature, get_size_dict
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType


__all__ = ["FashionBertImageProcessor"]


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "RGBA", "PA", "P")  # converted through RGBA and composited on white
_PREMULTIPLIED_MODES = ("La", "RGBa")
_UINT16_MAX = 65535.0
_INT32_MIN = -(2.0**31)
_INT32_RANGE = 2.0**32 - 1


class FashionBertImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    image_size (`int`, *optional*, defaults to `self.image_size`):
        Side of the square image the processor outputs, in pixels.
    patch_grid (`int`, *optional*, defaults to `self.patch_grid`):
        Patches per side of the grid the model cuts; `patch_mask` has `patch_grid ** 2` entries per image.
    """

    image_size: int | None
    patch_grid: int | None


class FashionBertImageProcessor(PilBackend):
    r"""
    Turns images into FashionBERT's `pixel_values` (B, 3, image_size, image_size) float32 and `patch_mask`
    (B, patch_grid ** 2) int64 (all ones). See the module docstring for how each input type and PIL mode is converted.

    Args:
        image_size (`int`, *optional*, defaults to 256):
            Side of the square output image. Must match the model config's `image_size`.
        patch_grid (`int`, *optional*, defaults to 8):
            Number of patches per side (8 -> 64 patches); `image_size` must be divisible by it. Must match the model
            config's `patch_grid`.
        do_resize (`bool`, *optional*, defaults to `True`):
            Resize every image to `image_size` x `image_size`. When `False`, images must already have that size.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Filter used for resizing.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Scale applied when `do_rescale` is set.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Subtract `image_mean` and divide by `image_std`, per channel.
        image_mean (`float` or `list[float]`, *optional*, defaults to ImageNet's `[0.485, 0.456, 0.406]`):
            Per-channel mean (the statistics the paper's ImageNet-pretrained ResNet expects).
        image_std (`float` or `list[float]`, *optional*, defaults to ImageNet's `[0.229, 0.224, 0.225]`):
            Per-channel standard deviation.

    `size` is derived from `image_size` (always square); passing a non-square `size` is an error. Images are always
    converted to RGB (`do_convert_rgb` is ignored) and returned channels-first (`data_format` is ignored). With
    `return_tensors=None` the outputs are stacked NumPy arrays.
    """

    valid_kwargs = FashionBertImageProcessorKwargs
    model_input_names = ["pixel_values", "patch_mask"]

    image_size = 256
    patch_grid = 8
    size = None  # derived from image_size in `_standardize_kwargs`
    do_resize = True
    resample = PILImageResampling.BICUBIC
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD

    def __init__(self, **kwargs: Unpack[FashionBertImageProcessorKwargs]):
        size = kwargs.pop("size", None)
        if size is not None:
            side = _square_side(size, "size")
            if kwargs.get("image_size") is not None and kwargs["image_size"] != side:
                raise ValueError(
                    f"`size` {size} disagrees with `image_size`={kwargs['image_size']}; pass only `image_size`."
                )
            kwargs["image_size"] = side
        super().__init__(**kwargs)
        self._validate_fields(
            image_size=self.image_size,
            patch_grid=self.patch_grid,
            rescale_factor=self.rescale_factor,
            image_mean=self.image_mean,
            image_std=self.image_std,
            resample=self.resample,
        )

    # ------------------------------------------------------------------ kwargs

    def preprocess(self, images: Any, *args, **kwargs: Unpack[FashionBertImageProcessorKwargs]) -> BatchFeature:
        """Preprocess an image or a list of images; returns a `BatchFeature` with `pixel_values` and `patch_mask`."""
        if kwargs.get("size") is not None:
            raise ValueError(
                f"FashionBertImageProcessor resizes to a square of side `image_size`; got size={kwargs['size']}. "
                "Pass image_size=... instead."
            )
        kwargs.pop("size", None)
        return super().preprocess(images, *args, **kwargs)

    def _standardize_kwargs(self, image_size: int | None = None, **kwargs) -> dict:
        kwargs.pop("size", None)
        kwargs = super()._standardize_kwargs(**kwargs)
        # `size` always follows `image_size`, so the two can never disagree.
        kwargs["size"] = (
            SizeDict(height=image_size, width=image_size) if isinstance(image_size, int) and image_size > 0 else None
        )
        kwargs["image_size"] = image_size
        return kwargs

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        self._validate_fields(
            image_size=kwargs.get("image_size"),
            patch_grid=kwargs.get("patch_grid"),
            rescale_factor=kwargs.get("rescale_factor"),
            image_mean=kwargs.get("image_mean"),
            image_std=kwargs.get("image_std"),
            resample=kwargs.get("resample"),
        )
        super()._validate_preprocess_kwargs(**kwargs)

    @staticmethod
    def _validate_fields(image_size, patch_grid, rescale_factor, image_mean, image_std, resample) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
        if isinstance(patch_grid, bool) or not isinstance(patch_grid, int) or patch_grid < 1:
            raise ValueError(f"`patch_grid` must be a positive int, got {patch_grid!r}.")
        if image_size % patch_grid != 0:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by `patch_grid` ({patch_grid}) so that every patch "
                "has the same number of pixels."
            )
        if not isinstance(rescale_factor, (int, float)) or not np.isfinite(rescale_factor) or rescale_factor <= 0:
            raise ValueError(f"`rescale_factor` must be a positive finite number, got {rescale_factor!r}.")
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            values = np.atleast_1d(np.asarray(value, dtype=np.float64))
            if values.ndim != 1 or values.shape[0] not in (1, 3) or not np.all(np.isfinite(values)):
                raise ValueError(f"`{name}` must be one finite number or three (one per RGB channel), got {value!r}.")
            if name == "image_std" and np.any(values <= 0):
                raise ValueError(f"`image_std` must be positive, got {value!r}.")
        if resample is not None:
            try:
                PILImageResampling(resample)
            except ValueError:
                raise ValueError(f"`resample` must be a PIL resampling filter (0..5), got {resample!r}.") from None

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("size", None)  # derived from image_size
        if output.get("resample") is not None:
            output["resample"] = int(output["resample"])
        return output

    # ------------------------------------------------------------------ inputs

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """
        Returns the inputs unchanged (`FashionBertProcessor` calls this before preprocessing): `process_image` opens
        paths and URLs itself, so a bad one is an error naming its item (`images[1]`), and a string is never read as
        base64 image data as transformers' `load_image` would.
        """
        return image_url_or_urls

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        """Flatten the input into a list of single images (a list/tuple of images, or a 4-D array = a batch)."""
        if isinstance(images, (list, tuple)):
            flat = []
            for index, item in enumerate(images):
                if isinstance(item, (list, tuple)):
                    raise ValueError(
                        f"images[{index}] is a nested {type(item).__name__}; pass a flat list of images."
                    )
                flat.append(item)
            images = flat
        elif _is_array_like(images) and len(images.shape) == 4:
            images = list(images)
        else:
            images = [images]
        if len(images) == 0:
            raise ValueError("`images` is empty: pass at least one image.")
        return images

    def _prepare_image_like_inputs(
        self, images: Any, *args, expected_ndims: int = 3, input_data_format=None, **kwargs
    ) -> list[np.ndarray]:
        images = self._prepare_images_structure(images)
        processed = []
        for index, image in enumerate(images):
            try:
                processed.append(self.process_image(image, input_data_format=input_data_format))
            except (ValueError, TypeError, OSError, PIL.Image.DecompressionBombError) as error:
                raise ValueError(f"images[{index}]{_describe(image)}: {error}") from error
        return processed

    def process_image(
        self, image: Any, input_data_format: str | ChannelDimension | None = None, **kwargs
    ) -> np.ndarray:
        """Convert one input (PIL image, array, tensor or path) to a (3, H, W) float32 array in 0..255."""
        if isinstance(image, (str, os.PathLike)):
            image = _open_image(image)
        if isinstance(image, PIL.Image.Image):
            rgb = _pil_to_rgb(image)
        elif _is_array_like(image):
            rgb = _array_to_rgb(image, input_data_format)
        else:
            raise TypeError(
                f"unsupported input type {type(image).__name__}; expected a PIL image, a NumPy array, a torch "
                "tensor or a path"
            )
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"image has zero size ({rgb.shape[0]}x{rgb.shape[1]} pixels)")
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)

    # ------------------------------------------------------------------ operations

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: "PILImageResampling | int | None" = None, **kwargs
    ) -> np.ndarray:
        """Resize a (C, H, W) 0..255 float array to `size` with Pillow's float ("F") images; clipped to [0, 255]."""
        resample = PILImageResampling(resample if resample is not None else self.resample)
        height, width = size.height, size.width
        if image.shape[-2:] == (height, width):
            return image.astype(np.float32, copy=False)
        channels = [
            np.asarray(
                PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                    (width, height), resample=resample
                )
            )
            for channel in image
        ]
        # Bicubic/Lanczos overshoot at edges; clip back to the valid pixel range like a uint8 resize does.
        return np.clip(np.stack(channels), 0.0, 255.0)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: "PILImageResampling | int | None",
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Iterable[float],
        image_std: float | Iterable[float],
        return_tensors: str | TensorType | None,
        image_size: int,
        patch_grid: int,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for index, image in enumerate(images):
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            elif image.shape[-2:] != (image_size, image_size):
                raise ValueError(
                    f"images[{index}] is {image.shape[-2]}x{image.shape[-1]} pixels but do_resize=False and "
                    f"image_size={image_size}"
                )
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image.astype(np.float32, copy=False))
        data = {
            "pixel_values": np.stack(processed),
            "patch_mask": np.ones((len(processed), patch_grid * patch_grid), dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


# ---------------------------------------------------------------------- helpers


def _square_side(size: Any, name: str) -> int:
    size_dict = get_size_dict(size, param_name=name)
    height, width = size_dict.get("height"), size_dict.get("width")
    if height is None or height != width:
        raise ValueError(
            f"`{name}` must describe a square (FashionBERT images are image_size x image_size), got {size!r}."
        )
    return int(height)


def _is_array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (type(value).__module__.startswith("torch") and hasattr(value, "numpy"))


def _describe(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return f" ({os.fspath(image)!r})"
    filename = getattr(image, "filename", None)
    return f" ({filename!r})" if filename else ""


def _open_image(path: str | os.PathLike) -> PIL.Image.Image:
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        from transformers.image_utils import load_image

        return load_image(path)
    if not os.path.isfile(path):
        raise ValueError(f"no such image file: {path!r}")
    return PIL.Image.open(path)


def _first_frame(image: PIL.Image.Image) -> PIL.Image.Image:
    """The first frame of an animated image (the caller's frame position is restored); the image itself otherwise."""
    if getattr(image, "n_frames", 1) <= 1:
        return image
    current = image.tell()
    image.seek(0)
    try:
        frame = image.copy()
    finally:
        image.seek(current)
    return frame


def _exif_upright(image: PIL.Image.Image) -> PIL.Image.Image:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF metadata (many failure types in Pillow): the pixels are still usable
        orientation = 1
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _composite_on_white(color: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Composite a 0..255 colour array (H, W, C) with a 0..255 alpha (H, W, 1) on a white background."""
    alpha = alpha / 255.0
    if premultiplied:
        return color + 255.0 * (1.0 - alpha)
    return color * alpha + 255.0 * (1.0 - alpha)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _scale_int32(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    if values.size == 0 or (values.min() >= 0 and values.max() <= _UINT16_MAX):
        return values * (255.0 / _UINT16_MAX)  # 16-bit data stored in a 32-bit image
    return (values - _INT32_MIN) * (255.0 / _INT32_RANGE)


def _scale_float(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"{what} has values in [{float(values.min()):.4g}, {float(values.max()):.4g}] but float images must lie "
            "in [0, 1]; divide by 255 (or pass uint8)"
        )
    return values.astype(np.float32) * 255.0


def _pil_to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """(H, W, 3) float32 array in 0..255 from a PIL image of any mode."""
    image = _exif_upright(_first_frame(image))
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.float32)
    if mode in ("L", "1"):
        return _grey_to_rgb(np.asarray(image.convert("L"), dtype=np.float32))
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(np.asarray(image).astype(np.float32) * np.float32(255.0 / _UINT16_MAX))
    if mode == "I":
        return _grey_to_rgb(_scale_int32(np.asarray(image)).astype(np.float32))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(image), 'mode "F" image'))
    if mode in _PREMULTIPLIED_MODES:
        array = np.asarray(image, dtype=np.float32)
        color = array[:, :, :-1]
        if color.shape[2] == 1:
            color = np.repeat(color, 3, axis=2)
        return _composite_on_white(color, array[:, :, -1:], premultiplied=True)
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        return _composite_on_white(rgba[:, :, :3], rgba[:, :, 3:])
    try:
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    except (ValueError, OSError) as error:
        raise ValueError(f'unsupported PIL mode "{mode}": {error}') from error


def _array_to_rgb(array: Any, input_data_format: str | ChannelDimension | None) -> np.ndarray:
    """(H, W, 3) float32 array in 0..255 from a NumPy array or torch tensor."""
    is_tensor = not isinstance(array, np.ndarray)
    if is_tensor:
        array = array.detach().cpu()
        if array.is_floating_point():
            array = array.float()
        array = array.numpy()
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        channels_last = _channels_last(array.shape, input_data_format, prefer_last=not is_tensor)
        if not channels_last:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"unsupported array shape {tuple(array.shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1..4"
        )

    what = f"{array.dtype} array"
    if array.dtype == np.bool_:
        values = array.astype(np.float32) * 255.0
    elif array.dtype == np.uint8:
        values = array.astype(np.float32)
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) * np.float32(255.0 / _UINT16_MAX)
    elif np.issubdtype(array.dtype, np.floating):
        values = _scale_float(array, what)
    else:
        raise ValueError(
            f"unsupported dtype {array.dtype}; pass uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]"
        )

    channels = values.shape[2]
    if channels == 1:
        return _grey_to_rgb(values[:, :, 0])
    if channels == 2:
        return _composite_on_white(_grey_to_rgb(values[:, :, 0]), values[:, :, 1:])
    if channels == 3:
        return values
    return _composite_on_white(values[:, :, :3], values[:, :, 3:])


def _channels_last(shape: tuple, input_data_format: str | ChannelDimension | None, prefer_last: bool) -> bool:
    if input_data_format is not None:
        try:
            input_data_format = ChannelDimension(input_data_format)
        except ValueError:
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            ) from None
        channel_axis = -1 if input_data_format == ChannelDimension.LAST else 0
        if shape[channel_axis] not in (1, 2, 3, 4):
            raise ValueError(
                f"array of shape {tuple(shape)} has {shape[channel_axis]} channels on the axis that "
                f"input_data_format={input_data_format.value!r} names; expected 1, 2, 3 or 4"
            )
        return input_data_format == ChannelDimension.LAST
    first, last = shape[0] in (1, 2, 3, 4), shape[-1] in (1, 2, 3, 4)
    if first and last:
        return prefer_last
    if last:
        return True
    if first:
        return False
    raise ValueError(
        f"unsupported array shape {tuple(shape)}: no axis of size 1, 2, 3 or 4 to read as channels; expected "
        "(H, W), (H, W, C) or (C, H, W)"
    )
