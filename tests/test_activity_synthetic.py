"""Synthetic activity test bed: renderer, class table, dataset build with the real encoder, probes, previews."""

import itertools

import numpy as np
import pytest
from PIL import Image

from xmodal.data.activity_synthetic import (
    ACTIVITY_CLASSES,
    COLOURS,
    FACTOR_COLUMNS,
    FACTOR_VALUES,
    ActivityFactors,
    default_activity_encoder,
    linear_probe,
    make_activity_dataset,
    make_factor_dataset,
    probe_factors,
    render_clip,
    render_instance,
    render_query_image,
    sample_instance_factors,
    save_clip_gif,
    save_sample_grid,
)


def factors(**overrides):
    base = dict(shape="square", colour="yellow", texture="solid", scene="night", motion="translate", direction="forward", speed="fast")
    base.update(overrides)
    return ActivityFactors(**base)


def yellow_mask(frames):
    """Actor pixels of a yellow actor on the night scene (stars are white, the sky dark blue)."""
    frames = frames.astype(int)
    return (frames[..., 0] > 120) & (frames[..., 1] > 100) & (frames[..., 2] < 90)


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


# ---- renderer ----


def test_render_clip_shapes_and_determinism():
    clip = render_clip(factors(), 16, 64, np.random.default_rng(0))
    assert clip.shape == (16, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(factors(), 16, 64, np.random.default_rng(0)))
    assert not np.array_equal(clip, render_clip(factors(), 16, 64, np.random.default_rng(1)))
    small = render_clip(factors().to_dict(), num_frames=5, size=32, rng=np.random.default_rng(0))
    assert small.shape == (5, 32, 32, 3)


def test_render_query_image_shapes_and_determinism():
    image = render_query_image(factors(), 64, np.random.default_rng(3))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render_query_image(factors(), 64, np.random.default_rng(3)))
    assert not np.array_equal(image, render_query_image(factors(), 64, np.random.default_rng(4)))


@pytest.mark.parametrize(
    "bad, field",
    [(dict(colour="teal"), "colour"), (dict(motion="fly"), "motion"), (dict(direction="up"), "direction"), (dict(speed=1), "speed")],
)
def test_invalid_factor_names_the_field(bad, field):
    with pytest.raises(ValueError, match=f"ActivityFactors.{field}="):
        factors(**bad)
    with pytest.raises(ValueError, match="unknown factor names"):
        render_clip({**factors().to_dict(), "size": 3})
    with pytest.raises(ValueError, match="num_frames"):
        render_clip(factors(), num_frames=0)
    with pytest.raises(ValueError, match="rng"):
        render_clip(factors(), rng=0)


@pytest.mark.parametrize("direction, sign", [("forward", 1), ("backward", -1)])
def test_translate_moves_the_actor_the_way_of_its_direction(direction, sign):
    clip = render_clip(factors(direction=direction), 16, 64, np.random.default_rng(5))
    x_first, y_first = centroid(yellow_mask(clip[0]))
    x_last, y_last = centroid(yellow_mask(clip[-1]))
    assert sign * (x_last - x_first) > 0.4 * 64  # fast travel is 0.55 of the frame
    assert abs(y_last - y_first) < 1.0


@pytest.mark.parametrize("direction, grows", [("forward", True), ("backward", False)])
def test_zoom_scales_the_actor_in_place(direction, grows):
    clip = render_clip(factors(motion="zoom", direction=direction), 16, 64, np.random.default_rng(6))
    areas = [yellow_mask(frame).sum() for frame in clip]
    assert (areas[-1] > 2.0 * areas[0]) if grows else (areas[0] > 2.0 * areas[-1])
    assert np.hypot(*np.subtract(centroid(yellow_mask(clip[0])), centroid(yellow_mask(clip[-1])))) < 1.5


def test_spin_turns_the_actor_in_place_and_the_appearance_stays():
    clip = render_clip(factors(motion="spin"), 16, 64, np.random.default_rng(7))
    masks = [yellow_mask(frame) for frame in clip]
    centres = np.array([centroid(m) for m in masks])
    assert np.abs(centres - centres.mean(0)).max() < 1.0
    assert (masks[0] != masks[2]).sum() > 20  # the square turned
    areas = np.array([m.sum() for m in masks])
    assert areas.std() / areas.mean() < 0.05  # same actor, same size


def test_bounce_moves_the_actor_up_and_down():
    clip = render_clip(factors(motion="bounce"), 16, 64, np.random.default_rng(8))
    heights = np.array([centroid(yellow_mask(frame))[1] for frame in clip])
    assert heights.max() - heights.min() > 10
    # fast bounce hops 3 times: the height series turns around several times
    turns = np.sum(np.diff(np.sign(np.diff(heights))) != 0)
    assert turns >= 4


def test_query_image_blurs_along_the_direction_of_travel():
    def edge_ratio(image):
        """Squared gradient energy across x over across y, in a window on the actor."""
        cx, cy = (int(v) for v in centroid(yellow_mask(image)))
        grey = image.astype(float).mean(-1)[max(cy - 16, 0) : cy + 16, max(cx - 16, 0) : cx + 16]
        return (np.diff(grey, axis=1) ** 2).sum() / (np.diff(grey, axis=0) ** 2).sum()

    def mean_ratio(**overrides):
        return np.mean([edge_ratio(render_query_image(factors(**overrides), 64, np.random.default_rng(s))) for s in range(5)])

    # a square's edges are balanced when it does not travel; horizontal travel smears its vertical edges
    # (less energy across x), a bounce its horizontal ones
    assert mean_ratio(motion="translate") < 0.8 < mean_ratio(motion="zoom", speed="slow") < 1.25 < mean_ratio(motion="bounce")


def test_stick_figure_pose_follows_the_motion():
    # the waving arm is raised above the shoulders; with "backward" it is the other arm
    image = render_clip(factors(shape="stick_figure", motion="wave", direction="forward"), 16, 64, np.random.default_rng(10))[0]
    mask = yellow_mask(image)
    ys, _ = np.nonzero(mask)
    standing = yellow_mask(render_clip(factors(shape="stick_figure", motion="zoom", speed="slow"), 16, 64, np.random.default_rng(10))[8])
    # a waving figure is wider at the top than a standing one (the raised arm)
    assert mask[: ys.min() + 8].sum() > standing[: np.nonzero(standing)[0].min() + 8].sum()


# ---- class table ----


def test_class_table_appearance_and_motion_structure():
    names = [c.name for c in ACTIVITY_CLASSES]
    assert len(set(names)) == len(names)
    for c in ACTIVITY_CLASSES:
        for field in ("shape", "colour", "texture", "motion"):
            assert getattr(c, field) in FACTOR_VALUES[field]
    same_appearance = [(a, b) for a, b in itertools.combinations(ACTIVITY_CLASSES, 2) if a.appearance == b.appearance]
    same_motion = [(a, b) for a, b in itertools.combinations(ACTIVITY_CLASSES, 2) if a.motion == b.motion]
    # classes that look the same differ only in motion (and there are several such groups) ...
    assert len(same_appearance) >= 6 and all(a.motion != b.motion for a, b in same_appearance)
    assert len({a.appearance for a, _ in same_appearance}) >= 4
    # ... and classes that move the same differ in appearance
    assert len(same_motion) >= 6 and all(a.appearance != b.appearance for a, b in same_motion)
    # some differ only in a near colour, or in colour and texture alone
    near = {frozenset(p) for p in [("red", "crimson"), ("green", "lime"), ("blue", "navy")]}
    fine = [(a, b) for a, b in same_motion if a.shape == b.shape and frozenset((a.colour, b.colour)) in near]
    assert len(fine) >= 2
    # no two classes are the same factor combination
    assert len({(c.appearance, c.motion) for c in ACTIVITY_CLASSES}) == len(ACTIVITY_CLASSES)


def test_sample_instance_factors_keeps_the_class_factors():
    rng = np.random.default_rng(0)
    for c in ACTIVITY_CLASSES:
        f = sample_instance_factors(c, rng)
        assert (f.shape, f.colour, f.texture, f.motion) == (c.shape, c.colour, c.texture, c.motion)
    seen = {sample_instance_factors(ACTIVITY_CLASSES[0], rng).scene for _ in range(40)}
    assert seen == set(FACTOR_VALUES["scene"])


# ---- datasets built with the real encoder ----


@pytest.fixture(scope="module")
def tiny_dataset():
    return make_activity_dataset(
        num_videos_per_class=3, num_queries_per_class=2, seed=11, class_ids=[0, 1, 3], num_frames=8, size=32, show_progress=False
    )


def test_dataset_splits_columns_and_shapes(tiny_dataset):
    encoder = default_activity_encoder()
    assert sorted(tiny_dataset) == ["test", "train"]
    for split in ("train", "test"):
        data = tiny_dataset[split]
        assert len(data) == 9
        rows = data.with_format("numpy")[:]
        assert rows["image_features"].shape == (9, encoder.image_feature_dim)
        assert rows["video_features"].shape == (9, 1, encoder.video_feature_dim)  # an 8-frame clip is one proposal
        assert np.isfinite(rows["image_features"]).all() and np.isfinite(rows["video_features"]).all()
        assert rows["label"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert data.features["label"].names == ["ball_pass", "ball_bounce", "person_walk"]
        assert rows["is_query"].tolist() == ([True] * 9 if split == "train" else [True, True, False] * 3)
        for row_label, class_id in zip(rows["label"], [0, 0, 0, 1, 1, 1, 3, 3, 3]):
            assert row_label == [0, 1, 3].index(class_id)
        for field in ("shape", "colour", "texture", "motion"):
            names = data.features[field].names
            assert [names[v] for v in rows[field]] == [getattr(ACTIVITY_CLASSES[c], field) for c in [0, 0, 0, 1, 1, 1, 3, 3, 3]]
        assert set(FACTOR_COLUMNS) <= set(data.column_names)
        assert {"image_scene", "image_direction", "image_speed"} <= set(data.column_names)
        assert "proposal_scores" not in data.column_names  # the descriptor has no classifier


def test_dataset_train_and_test_instances_are_disjoint(tiny_dataset):
    train = tiny_dataset["train"].with_format("numpy")[:]
    test = tiny_dataset["test"].with_format("numpy")[:]
    for column in ("image_features", "video_features"):
        a = train[column].reshape(len(train[column]), -1)
        b = test[column].reshape(len(test[column]), -1)
        assert not (a[:, None, :] == b[None, :, :]).all(-1).any()
        assert len(np.unique(a, axis=0)) == len(a)


def test_dataset_features_come_from_the_encoder_on_the_rendered_pixels(tiny_dataset):
    encoder = default_activity_encoder()
    rendered = [render_instance(11, "test", c, i, num_frames=8, size=32) for c in (0, 1, 3) for i in range(3)]
    rows = tiny_dataset["test"].with_format("numpy")[:]
    # encoded as one batch, like the build's chunk, the features are equal to the bit
    np.testing.assert_array_equal(rows["video_features"], encoder.encode_videos([r[1] for r in rendered])["proposal_features"])
    np.testing.assert_array_equal(rows["image_features"], encoder.encode_images([r[3] for r in rendered]))
    names = tiny_dataset["test"].features
    for k, (video_factors, _, image_factors, _) in enumerate(rendered):
        assert names["scene"].names[rows["scene"][k]] == video_factors.scene
        assert names["speed"].names[rows["speed"][k]] == video_factors.speed
        assert names["image_direction"].names[rows["image_direction"][k]] == image_factors.direction


def test_dataset_is_deterministic_and_independent_of_the_class_subset(tiny_dataset):
    alone = make_activity_dataset(
        num_videos_per_class=3, num_queries_per_class=2, seed=11, class_ids=[1], num_frames=8, size=32, show_progress=False, keep_media=True
    )
    a = tiny_dataset["train"].with_format("numpy")[3:6]
    b = alone["train"].with_format("numpy")[:]
    # same pixels; features equal up to float rounding (the encoder batches a different set of clips)
    for k in range(3):
        assert np.array_equal(b["video"][k], render_instance(11, "train", 1, k, num_frames=8, size=32)[1])
    np.testing.assert_allclose(a["video_features"], b["video_features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["image_features"], b["image_features"], rtol=1e-5, atol=1e-6)
    assert b["video"].shape == (3, 8, 32, 32, 3) and b["image"].shape == (3, 32, 32, 3)
    assert b["label"].tolist() == [0, 0, 0] and alone["train"].features["label"].names == ["ball_bounce"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_videos_per_class=0), "num_videos_per_class"),
        (dict(num_videos_per_class=2, num_queries_per_class=3), "num_queries_per_class"),
        (dict(class_ids=[0, 0]), "class_ids"),
        (dict(class_ids=[99]), "class_ids"),
    ],
)
def test_dataset_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_activity_dataset(show_progress=False, **kwargs)


@pytest.mark.slow
def test_probe_on_the_real_encoder_finds_scene_colour_and_motion():
    data = make_factor_dataset(num_samples=80, seed=0, num_frames=16, size=32, show_progress=False)
    assert set(FACTOR_COLUMNS) <= set(data.column_names)
    video = probe_factors(data, ["scene", "colour", "motion"], epochs=150)
    for factor, result in video.items():
        assert result["accuracy"] > result["chance"] + 0.25, (factor, result)
    image = probe_factors(data, ["scene"], feature_column="image_features", epochs=150)
    assert image["scene"]["accuracy"] > image["scene"]["chance"] + 0.25


# ---- probes ----


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    separable = np.eye(3)[labels] * 3.0 + 0.1 * rng.standard_normal((300, 3))
    assert linear_probe(separable, labels, seed=1) == 1.0
    noise = rng.standard_normal((300, 8))
    accuracy = linear_probe(noise, labels, seed=1)
    assert accuracy < 0.55  # chance is 1/3
    assert linear_probe(noise, labels, seed=1) == accuracy  # deterministic


def test_probe_factors_on_arrays_reports_chance():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=200)
    b = rng.integers(0, 4, size=200)
    features = np.stack([a * 2.0, rng.standard_normal(200)], axis=1)[:, None, :].repeat(3, axis=1)  # bags of 3
    result = probe_factors(features, {"a": a, "b": b}, seed=2)
    assert result["a"]["accuracy"] == 1.0
    assert result["a"]["num_classes"] == 2 and result["b"]["uniform_chance"] == 0.25
    assert 0.2 < result["b"]["chance"] < 0.4 and result["b"]["accuracy"] < 0.45
    with pytest.raises(ValueError, match="factor_columns must map"):
        probe_factors(features, ["a"])


# ---- previews ----


def test_save_sample_grid_writes_a_png(tmp_path):
    path = save_sample_grid(str(tmp_path / "grid.png"), class_ids=[0, 5], num_frames_shown=3, num_frames=6, size=32, scale=2)
    image = Image.open(path)
    assert image.format == "PNG"
    cell, gap = 64, 4
    assert image.size == (200 + 4 * (cell + gap) + gap, 16 + 2 * (cell + gap) + gap)
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=-1).mean() > 0.3  # tiles were pasted


def test_save_clip_gif_writes_every_frame(tmp_path):
    clip = render_clip(factors(), 6, 32, np.random.default_rng(0))
    path = save_clip_gif(clip, str(tmp_path / "clip.gif"), fps=5, scale=2)
    gif = Image.open(path)
    assert gif.n_frames == 6 and gif.size == (64, 64)
    with pytest.raises(ValueError, match="uint8"):
        save_clip_gif(clip.astype(np.float32), str(tmp_path / "bad.gif"))


def test_colour_palette_has_near_pairs():
    for a, b in [("red", "crimson"), ("green", "lime"), ("blue", "navy")]:
        assert np.abs(np.subtract(COLOURS[a], COLOURS[b])).max() <= 65
