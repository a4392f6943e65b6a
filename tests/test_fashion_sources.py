"""Real-data loaders: datasets/imagefolder/csv/parquet sources and the Fashion-Gen HDF5 reader."""

import io
import json
import logging

import h5py
import numpy as np
import pytest
from PIL import Image

from xmodal.data.fashion_sources import (
    decode_fashiongen_text,
    load_fashion_dataset,
    load_fashiongen,
    load_fashiongen_h5,
)


def colour_image(k, size=(12, 10)):
    return Image.new("RGB", size, (10 * k, 255 - 10 * k, 7 * k))


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def csv_source(tmp_path):
    """data/train.csv with image paths relative to the csv, in an images/ sub-folder."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    for k in range(5):
        colour_image(k).save(root / "images" / f"{k}.png")
        rows.append([f"images/{k}.png", f"caption number {k}", f"sub{k % 2}", 100 + k // 2, "extra"])
    write_csv(root / "train.csv", ["path", "caption", "kind", "pid", "unused"], rows)
    return root


def test_imagefolder_with_metadata(tmp_path, cache_dir):
    folder = tmp_path / "shop"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for k in range(4):
            colour_image(k).save(folder / f"img{k}.png")
            f.write(json.dumps({"file_name": f"img{k}.png", "text": f" desc {k} ", "subcategory": "SHIRTS",
                                "product_id": k // 2, "category": "TOPS"}) + "\n")
    ds = load_fashion_dataset(dataset_name=str(folder), category_column="category", cache_dir=cache_dir)
    train = ds["train"]
    assert set(train.column_names) == {"image", "text", "subcategory", "product_id", "category"}
    rows = sorted(train, key=lambda r: r["text"])
    assert [r["text"] for r in rows] == [f"desc {k}" for k in range(4)]  # stripped
    assert [r["product_id"] for r in rows] == ["0", "0", "1", "1"]
    assert {r["subcategory"] for r in rows} == {"SHIRTS"} and {r["category"] for r in rows} == {"TOPS"}
    for k, r in enumerate(rows):
        np.testing.assert_array_equal(np.asarray(r["image"]), np.asarray(colour_image(k)))


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "hf_cache")


def test_csv_with_relative_image_paths(csv_source, cache_dir):
    ds = load_fashion_dataset(train_file=str(csv_source / "train.csv"), image_column="path", caption_column="caption",
                              subcategory_column="kind", product_id_column="pid", cache_dir=cache_dir)
    train = ds["train"]
    assert list(ds) == ["train"]
    assert train.column_names == ["image", "text", "subcategory", "product_id"]
    assert train["text"] == [f"caption number {k}" for k in range(5)]
    assert train["subcategory"] == ["sub0", "sub1", "sub0", "sub1", "sub0"]
    assert train["product_id"] == ["100", "100", "101", "101", "102"]
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(train[k]["image"]), np.asarray(colour_image(k)))


def test_parquet_with_image_bytes_and_fallbacks(tmp_path, cache_dir, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [png_bytes(colour_image(k, (9, 9))) for k in range(3)]
    table = pa.table({"img": pa.array(images, pa.binary()), "text": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "val.parquet")
    with caplog.at_level(logging.WARNING):
        ds = load_fashion_dataset(validation_file=str(tmp_path / "val.parquet"), image_column="img",
                                  cache_dir=cache_dir)
    val = ds["validation"]
    assert val["product_id"] == ["0", "1", "2"]  # fallback: row index
    assert val["subcategory"] == [None, None, None]  # fallback: unknown
    assert "No 'subcategory' column" in caplog.text and "No 'product_id' column" in caplog.text
    np.testing.assert_array_equal(np.asarray(val[2]["image"]), np.asarray(colour_image(2, (9, 9))))


def test_missing_column_errors_list_available_columns(csv_source, cache_dir):
    path = str(csv_source / "train.csv")
    with pytest.raises(ValueError) as error:
        load_fashion_dataset(train_file=path, image_column="path", caption_column="description", cache_dir=cache_dir)
    message = str(error.value)
    assert "'description' (caption_column)" in message and "split 'train'" in message
    assert "['path', 'caption', 'kind', 'pid', 'unused']" in message
    with pytest.raises(ValueError, match="'image' \\(image_column\\)"):
        load_fashion_dataset(train_file=path, caption_column="caption", cache_dir=cache_dir)
    # A non-default sub-category column that is absent is an error, not a silent fallback.
    with pytest.raises(ValueError, match="'category_name' \\(subcategory_column\\)"):
        load_fashion_dataset(train_file=path, image_column="path", caption_column="caption",
                             subcategory_column="category_name", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="'dept' \\(category_column\\)"):
        load_fashion_dataset(train_file=path, image_column="path", caption_column="caption", category_column="dept",
                             cache_dir=cache_dir)


def test_wrong_types_and_sources(csv_source, tmp_path, cache_dir):
    path = str(csv_source / "train.csv")
    with pytest.raises(ValueError, match="'pid' \\(caption_column\\).*must hold text"):
        load_fashion_dataset(train_file=path, image_column="path", caption_column="pid", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="'pid' \\(image_column\\).*must hold images"):
        load_fashion_dataset(train_file=path, image_column="pid", caption_column="caption", cache_dir=cache_dir)
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match="extension '.xlsx'"):
        load_fashion_dataset(train_file=str(tmp_path / "x.xlsx"))
    with pytest.raises(ValueError, match="not both"):
        load_fashion_dataset(dataset_name="x", train_file=path)
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_fashion_dataset(train_file=path, on_bad_rows="ignore")


@pytest.fixture
def bad_csv(tmp_path):
    """Rows: 0 good, 1 corrupt bytes, 2 zero-byte file, 3 truncated PNG, 4 empty caption, 5 missing file,
    6 good, 7 whitespace caption, 8 not an image (text file)."""
    root = tmp_path / "bad"
    root.mkdir()
    colour_image(0).save(root / "good0.png")
    colour_image(6).save(root / "good6.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "empty.png").write_bytes(b"")
    full = png_bytes(colour_image(3, (64, 64)))
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    colour_image(4).save(root / "good4.png")
    (root / "notes.txt").write_text("hello")
    rows = [["good0.png", "fine"], ["corrupt.png", "x"], ["empty.png", "x"], ["truncated.png", "x"],
            ["good4.png", ""], ["missing.png", "x"], ["good6.png", "also fine"], ["good4.png", "   "],
            ["notes.txt", "x"]]
    write_csv(root / "train.csv", ["image", "text"], rows)
    return root / "train.csv"


def test_bad_rows_raise_naming_row_and_file(bad_csv, cache_dir):
    with pytest.raises(ValueError) as error:
        load_fashion_dataset(train_file=str(bad_csv), cache_dir=cache_dir)
    message = str(error.value)
    assert message.startswith("7 bad row(s) in split 'train'")
    assert "first: row 1: image file '" in message and "corrupt.png': cannot be decoded" in message
    assert "on_bad_rows='skip'" in message


def test_bad_rows_skipped_with_count_and_rows(bad_csv, cache_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds, bad = load_fashion_dataset(train_file=str(bad_csv), on_bad_rows="skip", cache_dir=cache_dir,
                                       return_bad_rows=True)
    assert ds["train"]["text"] == ["fine", "also fine"]
    assert [b.index for b in bad["train"]] == [1, 2, 3, 4, 5, 7, 8]
    reasons = {b.index: b.reason for b in bad["train"]}
    assert "empty file (0 bytes)" in reasons[2]
    assert "truncated.png': cannot be decoded" in reasons[3]
    assert reasons[4] == "empty caption (null)"  # csv reads an empty field as null
    assert "missing.png': file not found" in reasons[5]
    assert reasons[7] == "empty caption (only whitespace)"
    assert "notes.txt': cannot be decoded (UnidentifiedImageError" in reasons[8]
    assert "Skipped 7 bad row(s) of 9 in split 'train'" in caplog.text
    # Product ids fall back to the index of the row in the source, not after skipping.
    assert ds["train"]["product_id"] == ["0", "6"]


def test_decompression_bomb_is_a_bad_row(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 100 px limit: a 30x30 image is > 2x -> error
    colour_image(1, (30, 30)).save(tmp_path / "big.png")
    colour_image(2, (5, 5)).save(tmp_path / "small.png")
    write_csv(tmp_path / "t.csv", ["image", "text"], [["big.png", "a"], ["small.png", "b"]])
    ds, bad = load_fashion_dataset(train_file=str(tmp_path / "t.csv"), on_bad_rows="skip", cache_dir=cache_dir,
                                   return_bad_rows=True)
    assert ds["train"]["text"] == ["b"]
    assert "decompression-bomb limit" in bad["train"][0].reason


# ------------------------------------------------------------------ Fashion-Gen HDF5


def write_fashiongen(path, n=5, size=16, drop=(), overrides=None):
    """A small file in the release's schema: (N, 1) fixed-length byte strings, (N, 1) int ids."""
    rng = np.random.default_rng(0)
    descriptions = [b"Long sleeve shirt in navy.", "Caf\u00e9 cr\u00e8me hoodie.".encode("utf-8"),
                    b"It\x92s a \x93quoted\x94 knit.", b"Trousers\x00\x00", b"Plain tee \x81."]
    data = {
        "input_image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
        "input_description": np.array([[d] for d in (descriptions * n)[:n]], dtype="S64"),
        "input_productID": np.array([[1000 + k // 2] for k in range(n)], dtype=np.int64),
        "input_subcategory": np.array([[b"SHIRTS" if k % 2 else b"SWEATERS"] for k in range(n)], dtype="S32"),
        "input_category": np.array([[b"TOPS"] for _ in range(n)], dtype="S32"),
        "input_brand": np.array([[b"ACME"] for _ in range(n)], dtype="S32"),
    }
    data.update(overrides or {})
    with h5py.File(path, "w") as h5:
        for key, value in data.items():
            if key not in drop:
                h5.create_dataset(key, data=value)
    return data


def test_decode_fashiongen_text():
    assert decode_fashiongen_text(np.array([b"caf\xc3\xa9  "], dtype="S8")) == "caf\u00e9"
    assert decode_fashiongen_text(b"It\x92s") == "It\u2019s"  # cp1252 apostrophe
    assert decode_fashiongen_text(b"tee \x81") == "tee \x81"  # undefined in cp1252 -> latin-1
    assert decode_fashiongen_text("already text ") == "already text"


def test_fashiongen_h5_round_trip(tmp_path, cache_dir):
    path = tmp_path / "fashiongen_256_256_validation.h5"
    data = write_fashiongen(path, n=5)
    ds = load_fashiongen_h5(str(path), split_name="validation", cache_dir=cache_dir)
    assert ds.split == "validation"
    assert ds.column_names == ["image", "text", "subcategory", "product_id", "category"]
    assert ds["text"] == ["Long sleeve shirt in navy.", "Caf\u00e9 cr\u00e8me hoodie.",
                          "It\u2019s a \u201cquoted\u201d knit.", "Trousers", "Plain tee \x81."]
    assert ds["product_id"] == ["1000", "1000", "1001", "1001", "1002"]
    assert ds["subcategory"] == ["SWEATERS", "SHIRTS", "SWEATERS", "SHIRTS", "SWEATERS"]
    assert ds["category"] == ["TOPS"] * 5
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(ds[k]["image"]), data["input_image"][k])
    # Folder form finds the file by its official name.
    dd = load_fashiongen(str(tmp_path), cache_dir=cache_dir)
    assert list(dd) == ["validation"] and dd["validation"]["text"] == ds["text"]


def test_fashiongen_h5_one_dimensional_keys_and_chunks(tmp_path, cache_dir):
    path = tmp_path / "flat.h5"
    n = 7
    write_fashiongen(path, n=n, drop=("input_category",), overrides={
        "input_description": np.array([f"item {k}".encode() for k in range(n)], dtype="S16"),
        "input_productID": np.arange(n, dtype=np.int32),
        "input_subcategory": np.array([b"SKIRTS"] * n),
    })
    ds = load_fashiongen_h5(str(path), chunk_size=3, cache_dir=cache_dir)
    assert ds["text"] == [f"item {k}" for k in range(n)]
    assert ds["product_id"] == [str(k) for k in range(n)]
    assert "category" not in ds.column_names


def test_fashiongen_h5_cache_follows_file_changes(tmp_path, cache_dir):
    import os

    path = tmp_path / "f.h5"
    write_fashiongen(path, n=3)
    first = load_fashiongen_h5(str(path), cache_dir=cache_dir)["text"]
    write_fashiongen(path, n=4)
    os.utime(path, ns=(1, 1))  # a different modification time
    assert len(load_fashiongen_h5(str(path), cache_dir=cache_dir)) == 4
    assert len(first) == 3


def test_fashiongen_h5_empty_description_rows(tmp_path, cache_dir):
    path = tmp_path / "e.h5"
    write_fashiongen(path, n=4, overrides={"input_description": np.array([[b"ok"], [b"  "], [b""], [b"fine"]])})
    with pytest.raises(ValueError, match="2 bad row\\(s\\).*row 1: .*e.h5' key 'input_description' row 1: empty"):
        load_fashiongen_h5(str(path), cache_dir=cache_dir)
    ds, bad = load_fashiongen_h5(str(path), on_bad_rows="skip", cache_dir=cache_dir, return_bad_rows=True)
    assert ds["text"] == ["ok", "fine"] and [b.index for b in bad] == [1, 2]


@pytest.mark.parametrize(
    "drop, overrides, pattern",
    [
        (("input_description",), None, "missing key 'input_description' \\(required\\)"),
        (("input_image",), None, "missing key 'input_image'"),
        (("input_productID",), None, "missing key 'input_productID'"),
        ((), {"input_image": np.zeros((5, 16, 16), np.uint8)}, "key 'input_image' must be a \\(N, H, W, 3\\) uint8"),
        ((), {"input_image": np.zeros((5, 16, 16, 3), np.float32)}, "key 'input_image' must be .* dtype float32"),
        ((), {"input_description": np.array([[b"a"]] * 4)}, "key 'input_description' has 4 rows but 'input_image' has 5"),
        ((), {"input_productID": np.arange(6)}, "key 'input_productID' has 6 rows"),
        ((), {"input_subcategory": np.zeros((5, 2), dtype="S4")}, "key 'input_subcategory' must have shape"),
        ((), {"input_description": np.zeros((5, 1), np.float64)}, "key 'input_description' must hold strings"),
        ((), {"input_image": np.zeros((0, 16, 16, 3), np.uint8), "input_description": np.zeros((0, 1), "S4"),
              "input_productID": np.zeros((0, 1), np.int64), "input_subcategory": np.zeros((0, 1), "S4"),
              "input_category": np.zeros((0, 1), "S4"), "input_brand": np.zeros((0, 1), "S4")}, "holds no rows"),
    ],
)
def test_malformed_fashiongen_files_name_file_and_key(tmp_path, cache_dir, drop, overrides, pattern):
    path = tmp_path / "broken.h5"
    write_fashiongen(path, n=5, drop=drop, overrides=overrides)
    with pytest.raises(ValueError, match=pattern) as error:
        load_fashiongen_h5(str(path), cache_dir=cache_dir)
    assert "broken.h5" in str(error.value)


def test_corrupt_chunk_names_file_key_and_rows(tmp_path, cache_dir):
    path = tmp_path / "corrupt.h5"
    n = 6
    images = np.random.default_rng(0).integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    write_fashiongen(path, n=n, drop=("input_image",))
    with h5py.File(path, "a") as h5:
        dset = h5.create_dataset("input_image", data=images, chunks=(2, 16, 16, 3), compression="gzip")
        info = dset.id.get_chunk_info(1)  # rows 2-3
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + 4)
        f.write(b"\xff" * 32)
    with pytest.raises(ValueError, match="corrupt.h5': cannot read key 'input_image' rows 0-5"):
        load_fashiongen_h5(str(path), chunk_size=6, cache_dir=cache_dir)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="fake.h5' is not a readable HDF5 file"):
        load_fashiongen_h5(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        load_fashiongen_h5(str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="no fashiongen_256_256_train.h5"):
        load_fashiongen(str(tmp_path))
