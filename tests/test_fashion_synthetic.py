"""Synthetic fashion test bed: determinism, splits by product, captions and visible factors."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from xmodal.data.fashion_synthetic import (
    COLOR_PALETTE,
    FACTOR_COLUMNS,
    PATTERNS,
    SUBCATEGORY_OPTIONS,
    GarmentFactors,
    ViewParams,
    describe_garment,
    make_fashion_dataset,
    render_garment,
    sample_garment_factors,
    save_sample_grid,
)


@pytest.fixture(scope="module")
def small_dataset():
    return make_fashion_dataset(num_products=66, views_per_product=2, image_size=64, seed=7)


def test_same_seed_gives_identical_bytes(small_dataset):
    again = make_fashion_dataset(num_products=66, views_per_product=2, image_size=64, seed=7)
    for split in ("train", "validation", "test"):
        a = small_dataset[split].cast_column("image", small_dataset[split].features["image"].__class__(decode=False))
        b = again[split].cast_column("image", again[split].features["image"].__class__(decode=False))
        assert [r["bytes"] for r in a["image"]] == [r["bytes"] for r in b["image"]]
        for column in ("text", "product_id", "view") + FACTOR_COLUMNS:
            assert a[column] == b[column]
    other = make_fashion_dataset(num_products=66, views_per_product=2, image_size=64, seed=8)
    assert other["train"]["text"] != small_dataset["train"]["text"]


def test_columns_and_types(small_dataset):
    ds = small_dataset["train"]
    assert set(ds.column_names) == {"image", "text", "product_id", "view"} | set(FACTOR_COLUMNS)
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert isinstance(row["drawstring"], bool)
    assert row["category"] == SUBCATEGORY_OPTIONS[row["subcategory"]]["category"]


def test_split_by_product_views_and_stratification(small_dataset):
    seen = {}
    total_rows = 0
    for split, ds in small_dataset.items():
        products = ds["product_id"]
        total_rows += len(products)
        for pid in set(products):
            assert pid not in seen, f"{pid} in {seen.get(pid)} and {split}"
            seen[pid] = split
        # Each product has all its views, in order, with one caption.
        by_product = {}
        for pid, view, text in zip(products, ds["view"], ds["text"]):
            by_product.setdefault(pid, []).append((view, text))
        for rows in by_product.values():
            assert [v for v, _ in rows] == [0, 1]
            assert rows[0][1] == rows[1][1]
    assert len(seen) == 66 and total_rows == 132
    # 66 products = 6 per sub-category: 80/10/10 gives 5/0/1 or similar in every sub-category.
    counts = {split: len(set(ds["product_id"])) for split, ds in small_dataset.items()}
    assert counts["train"] + counts["validation"] + counts["test"] == 66
    assert set(small_dataset["train"]["subcategory"]) == set(SUBCATEGORY_OPTIONS)


def test_products_do_not_depend_on_dataset_size():
    small = make_fashion_dataset(num_products=22, views_per_product=1, image_size=48, seed=3,
                                 split_fractions={"all": 1.0})
    large = make_fashion_dataset(num_products=44, views_per_product=1, image_size=48, seed=3,
                                 split_fractions={"all": 1.0})
    a = {r["product_id"]: r["text"] for r in small["all"].remove_columns("image")}
    b = {r["product_id"]: r["text"] for r in large["all"].remove_columns("image")}
    assert all(b["syn-" + pid[4:]] == text for pid, text in a.items())


# Phrases a caption must contain for each factor value ("-" = must not mention the listed word).
_MUST = {
    ("sleeve_length", "short"): "short sleeve",
    ("sleeve_length", "long"): "long sleeve",
    ("sleeve_length", "sleeveless"): "sleeveless",
    ("neckline", "crew neck"): "crew",
    ("neckline", "v-neck"): "v-neck",
    ("neckline", "spread collar"): "spread collar",
    ("neckline", "stand collar"): "stand collar",
    ("neckline", "notched lapels"): "lapel",
    ("closure", "zip"): "zip",
    ("closure", "buttons"): "button",
    ("pockets", "patch pockets"): "patch pocket",
    ("pockets", "kangaroo pocket"): "kangaroo pocket",
    ("pockets", "chest pocket"): "chest",
    ("hem", "rib knit"): "rib knit",
    ("pattern", "horizontal stripes"): "horizontal",
    ("pattern", "vertical stripes"): "vertical",
    ("pattern", "diagonal stripes"): "diagonal",
    ("pattern", "polka dots"): "polka dot",
    ("pattern", "plaid"): "plaid",
    ("pattern", "graphic print"): "graphic print",
}
_MUST_NOT = {("closure", "none"): ("zip", "button"), ("pockets", "none"): ("pocket",), ("hem", "plain"): ("rib",),
             ("pattern", "solid"): ("stripe", "dot", "plaid", "print")}


def test_captions_state_every_factor():
    rng = np.random.default_rng(0)
    captions = set()
    for i in range(600):
        f = sample_garment_factors(rng)
        text = describe_garment(f, np.random.default_rng(i))
        captions.add(text)
        low = text.lower()
        assert f.subcategory in low and f.color in low, text
        if f.pattern != "solid":
            assert f.accent_color in low, text
        for name in ("sleeve_length", "neckline", "closure", "pockets", "hem", "pattern"):
            value = getattr(f, name)
            if (name, value) in _MUST:
                assert _MUST[(name, value)] in low, (name, value, text)
            for word in _MUST_NOT.get((name, value), ()):
                assert word not in low, (name, value, text)
        assert ("drawstring" in low) == f.drawstring, text
        assert text[0].isupper() and text.endswith(".")
    assert len(captions) > 550  # phrasing and order vary


def test_caption_phrasing_varies_for_one_product():
    f = GarmentFactors("tops", "hoodie", "black", sleeve_length="long", neckline="hood", closure="zip",
                       drawstring=True, pockets="patch pockets", hem="rib knit")
    texts = {describe_garment(f, np.random.default_rng(s)) for s in range(40)}
    assert len(texts) >= 5
    for t in texts:
        assert t.lower().startswith(("long sleeve hoodie in black.", "black long sleeve hoodie."))


def test_factors_are_sampled_from_allowed_values_independently():
    rng = np.random.default_rng(1)
    samples = [sample_garment_factors(rng, "hoodie") for _ in range(3000)]
    for name in ("sleeve_length", "closure", "pockets", "hem", "drawstring"):
        values = [getattr(s, name) for s in samples]
        assert set(values) == set(SUBCATEGORY_OPTIONS["hoodie"][name])
    # Independence (roughly): P(zip | long sleeve) close to P(zip).
    zip_all = np.mean([s.closure == "zip" for s in samples])
    zip_long = np.mean([s.closure == "zip" for s in samples if s.sleeve_length == "long"])
    assert abs(zip_all - zip_long) < 0.06
    assert {s.pattern for s in samples} == set(PATTERNS)
    for s in samples:
        if s.pattern != "solid":
            assert np.linalg.norm(np.subtract(COLOR_PALETTE[s.color], COLOR_PALETTE[s.accent_color])) > 140


def test_invalid_factors_name_the_field():
    with pytest.raises(ValueError, match="closure of a t-shirt"):
        GarmentFactors("tops", "t-shirt", "navy", sleeve_length="short", neckline="crew neck", closure="zip")
    with pytest.raises(ValueError, match="color"):
        GarmentFactors("tops", "t-shirt", "teal", sleeve_length="short", neckline="crew neck")
    with pytest.raises(ValueError, match="category of 'skirt'"):
        GarmentFactors("tops", "skirt", "navy")


BASE = dict(category="tops", subcategory="hoodie", color="navy", sleeve_length="long", neckline="hood",
            closure="none", drawstring=False, pockets="none", hem="plain")
VIEW = ViewParams(shift_x=0.0, shift_y=0.0, scale=0.96, background=(240, 240, 240))


def _pixels(factors, size=128):
    return np.asarray(render_garment(GarmentFactors(**factors), size, VIEW), dtype=np.int16)


@pytest.mark.parametrize(
    "change",
    [
        {"closure": "zip"},
        {"drawstring": True},
        {"pockets": "kangaroo pocket"},
        {"pockets": "patch pockets"},
        {"hem": "rib knit"},
        {"sleeve_length": "short"},
        {"sleeve_length": "sleeveless"},
        {"color": "blue"},
        {"pattern": "horizontal stripes", "accent_color": "white"},
        {"pattern": "vertical stripes", "accent_color": "white"},
        {"pattern": "polka dots", "accent_color": "white"},
        {"pattern": "plaid", "accent_color": "white"},
        {"pattern": "graphic print", "accent_color": "white"},
    ],
)
@pytest.mark.parametrize("size", [64, 128])
def test_each_factor_changes_the_image(change, size):
    """Every factor a caption states is visible: changing it alone changes many pixels."""
    a, b = _pixels(BASE, size), _pixels({**BASE, **change}, size)
    changed = np.mean(np.abs(a - b).sum(-1) > 30)
    assert changed > 0.002, (change, changed)


def test_near_colours_are_distinct_and_solid_fabric_is_exact():
    img = _pixels(BASE, 128)
    centre = img[80, 64]  # lower torso, away from seams and details
    assert tuple(centre) == COLOR_PALETTE["navy"]
    other = _pixels({**BASE, "color": "blue"}, 128)[80, 64]
    assert tuple(other) == COLOR_PALETTE["blue"]
    assert tuple(img[2, 2]) == (240, 240, 240)  # background


@pytest.mark.parametrize("subcategory", sorted(SUBCATEGORY_OPTIONS))
@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_subcategory_renders_at_any_size(subcategory, size):
    f = sample_garment_factors(np.random.default_rng(0), subcategory)
    image = render_garment(f, size, np.random.default_rng(1))
    assert image.size == (size, size) and image.mode == "RGB"
    pixels = np.asarray(image)
    # The garment covers a good part of the frame (and not all of it).
    background = np.all(np.abs(pixels.astype(int) - pixels[0, 0]) < 12, axis=-1).mean()
    assert 0.3 < background < 0.9


def test_views_differ_but_keep_the_product():
    f = sample_garment_factors(np.random.default_rng(2), "jacket")
    a = render_garment(f, 64, np.random.default_rng([0, 1]))
    b = render_garment(f, 64, np.random.default_rng([0, 2]))
    assert a.tobytes() != b.tobytes()
    assert render_garment(f, 64, np.random.default_rng([0, 1])).tobytes() == a.tobytes()
    row = {**dataclasses.asdict(f)}
    assert render_garment(row, 64, np.random.default_rng([0, 1])).tobytes() == a.tobytes()


def test_save_sample_grid(tmp_path, small_dataset):
    path = save_sample_grid(small_dataset["train"], str(tmp_path / "grid.png"), n=6, columns=3, tile_size=96)
    with Image.open(path) as grid:
        assert grid.format == "PNG"
        assert grid.size[0] == 3 * (96 + 12) and grid.size[1] > 2 * 96
        first = np.asarray(grid.convert("RGB"))[6:6 + 96, 6:6 + 96]
    expected = np.asarray(small_dataset["train"][0]["image"].resize((96, 96), Image.NEAREST))
    np.testing.assert_array_equal(first, expected)


def test_png_bytes_are_lossless(small_dataset):
    import datasets

    raw = small_dataset["test"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    row = small_dataset["test"].remove_columns("image")[0]
    decoded = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    pid = int(row["product_id"][4:])
    view_rng = np.random.default_rng([7, pid, 1 + row["view"]])
    np.testing.assert_array_equal(decoded, np.asarray(render_garment(row, 64, view_rng)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_products"):
        make_fashion_dataset(num_products=0)
    with pytest.raises(ValueError, match="image_size"):
        render_garment(sample_garment_factors(np.random.default_rng(0)), 16)


def test_rendering_in_worker_processes_gives_the_same_rows(monkeypatch):
    from xmodal.data import fashion_synthetic

    serial = fashion_synthetic.generate_fashion_columns(13, 2, 32, seed=5, show_progress=False)
    monkeypatch.setattr(fashion_synthetic, "_PARALLEL_FROM_IMAGES", 1)  # every render in workers, in jobs of 4 products
    monkeypatch.setattr(fashion_synthetic, "_RENDER_CHUNK", 4)
    parallel = fashion_synthetic.generate_fashion_columns(13, 2, 32, seed=5, show_progress=False)
    assert parallel == serial
