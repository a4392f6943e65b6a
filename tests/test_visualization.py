"""xmodal.visualization: the retrieval grid and the task-weight curves are real PNGs with the expected content."""

import json

import numpy as np
import PIL.Image
import pytest

from xmodal.visualization import loss_keys, save_loss_curves, save_retrieval_grid, save_training_curves


GREEN = (22, 163, 74)


def solid(colour, size=24):
    return PIL.Image.new("RGB", (size, size), colour)


def green_frame_pixels(image: PIL.Image.Image) -> int:
    return int(np.all(np.asarray(image) == GREEN, axis=-1).sum())


def test_retrieval_grid_marks_the_ground_truth(tmp_path):
    gallery = [solid((255, 0, 0)), solid((0, 0, 255)), solid((255, 255, 0)), solid((0, 0, 0)), solid((9, 9, 9)), solid((200, 0, 200))]
    path = save_retrieval_grid(
        "red dress", gallery, [2, 0, 5, 1, 3, 4], [3.0, 2.5, 1.0, 0.5, 0.1, -1.0], tmp_path / "sub" / "grid.png",
        ground_truth=0, tile_size=64, title="text -> images",
    )  # fmt: skip
    image = PIL.Image.open(path)
    assert image.format == "PNG"
    gap = 8
    assert image.width == 6 * (64 + gap) + gap  # query + top-5 (the sixth result is cut)
    pixels = np.asarray(image.convert("RGB"))
    header = 10 + 10 + gap  # font size 10 (tile 64) + 10, then the gap
    # Tile 2 (result #2, gallery item 0 = red) is the ground truth: green frame around a red tile.
    x = gap + 2 * (64 + gap)
    assert tuple(pixels[header + 32, x + 32]) == (255, 0, 0)
    assert tuple(pixels[header + 32, x - 2]) == GREEN
    # Result #1 (yellow, not the ground truth) has a thin grey frame, no green.
    x1 = gap + 64 + gap
    assert tuple(pixels[header + 32, x1 + 32]) == (255, 255, 0)
    assert tuple(pixels[header + 32, x1 - 1]) != GREEN
    assert green_frame_pixels(image) >= 4 * 4 * 64  # a 4-px frame around one 64-px tile


def test_retrieval_grid_with_image_query_and_caption_results_and_missed_ground_truth(tmp_path):
    captions = ["red dress", "blue coat", "black boots"]
    path = save_retrieval_grid(solid((0, 255, 0)), captions, [1, 2], [0.9, 0.1], tmp_path / "grid.png", ground_truth=[0])
    image = PIL.Image.open(path).convert("RGB")
    assert image.width == 3 * (128 + 8) + 8
    assert green_frame_pixels(image) == 0  # no result is the ground truth
    red_text = np.all(np.asarray(image) == (200, 30, 30), axis=-1).sum()
    assert red_text > 0  # the "ground truth not in the top 2" note


def test_retrieval_grid_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="2 indices but 1 scores"):
        save_retrieval_grid("q", ["a", "b"], [0, 1], [1.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside the gallery"):
        save_retrieval_grid("q", ["a", "b"], [5], [1.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="gallery item 0 is not an image"):
        save_retrieval_grid("q", [np.zeros((4, 4))], [0], [1.0], tmp_path / "x.png")


HISTORY = [
    {"step": 10, "loss": 2.0, "weight_mlm": 0.30, "weight_mpm": 0.33, "weight_tia": 0.37, "lr": 1e-4},
    {"step": 20, "loss": 1.5, "weight_mlm": 0.29, "weight_mpm": 0.31, "weight_tia": 0.40, "lr": 1e-4},
    {"step": 30, "loss": 1.2, "weight_mlm": 0.31, "weight_mpm": 0.30, "weight_tia": 0.39, "lr": 1e-4},
]


def test_task_weight_curves_pil_draws_one_coloured_line_per_task(tmp_path):
    path = tmp_path / "curves" / "weights.png"
    assert save_training_curves(HISTORY, path, backend="pil") == "pil"
    image = np.asarray(PIL.Image.open(path).convert("RGB"))
    assert image.shape == (360, 640, 3)
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # mlm, mpm, tia
        assert np.all(image == colour, axis=-1).sum() > 50, colour
    assert np.all(image == (214, 39, 40), axis=-1).sum() == 0  # no fourth curve


def test_task_weight_curves_reads_train_history_json_and_reports_its_backend(tmp_path):
    history = json.loads(json.dumps(HISTORY))  # as train_history.json holds it
    backend = save_training_curves(history, tmp_path / "weights.png")
    try:
        import matplotlib  # noqa: F401

        assert backend == "matplotlib"
    except ImportError:
        assert backend == "pil"
    assert PIL.Image.open(tmp_path / "weights.png").format == "PNG"


def test_task_weight_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        save_training_curves([{"step": 1, "loss": 2.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="backend"):
        save_training_curves(HISTORY, tmp_path / "x.png", backend="svg")


EQUAL_WEIGHTS = [  # after the alignment warm-up, MLM, MPM and TIA weigh the same: three coinciding lines
    {"step": s, "weight_mlm": 1 / 3, "weight_mpm": 1 / 3, "weight_tia": 1 / 3} for s in range(1, 41)
]
COLOURS = {"weight_mlm": (31, 119, 180), "weight_mpm": (255, 127, 14), "weight_tia": (44, 160, 44)}
PLOT_RIGHT = 640 - 150  # the Pillow chart's plot area ends here; the legend is to its right


def test_equal_task_weights_stay_visible_one_over_another(tmp_path):
    save_training_curves(EQUAL_WEIGHTS, tmp_path / "weights.png", backend="pil")
    plot = np.asarray(PIL.Image.open(tmp_path / "weights.png").convert("RGB"))[:, :PLOT_RIGHT]
    # Each curve, drawn over the previous ones, is thinner and dashed: the lines below show beside and between it.
    for key, colour in COLOURS.items():
        assert np.all(plot == colour, axis=-1).sum() > 100, key


def test_loss_curves_plot_every_loss_key_on_one_axis(tmp_path):
    history = [
        {"step": s, "loss": 3.0 / s, "mlm_loss": 4.0 / s, "tia_loss": 0.7 / s**0.5, "weight_tia": 0.3, "lr": 1e-4}
        for s in range(1, 31)
    ]
    history[3]["itc_loss"] = 0.5  # a key that only some rows have
    assert loss_keys(history) == ["mlm_loss", "tia_loss", "itc_loss"]
    for log_scale in (False, True):
        path = tmp_path / f"losses_{log_scale}.png"
        assert save_loss_curves(history, path, backend="pil", log_scale=log_scale) == "pil"
        image = np.asarray(PIL.Image.open(path).convert("RGB"))
        for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # mlm, tia, itc (one point: a marker)
            assert np.all(image == colour, axis=-1).sum() > 5, (log_scale, colour)
        assert np.all(image == (214, 39, 40), axis=-1).sum() == 0  # no fourth curve: `loss` does not end in `_loss`
    # The same through save_training_curves with explicit keys, and a log scale that drops non-positive values.
    save_training_curves(history + [{"step": 31, "mlm_loss": 0.0}], tmp_path / "x.png", keys=["mlm_loss"],
                         title="MLM", ylabel="loss", backend="pil", log_scale=True)  # fmt: skip
    with pytest.raises(ValueError, match="nothing to plot"):
        save_loss_curves([{"step": 1, "loss": 2.0}], tmp_path / "none.png")


def test_curves_with_matplotlib_when_installed(tmp_path):
    pytest.importorskip("matplotlib")
    assert save_training_curves(EQUAL_WEIGHTS, tmp_path / "weights.png", backend="matplotlib") == "matplotlib"
    assert save_loss_curves(
        [{"step": s, "mlm_loss": 1.0 / s, "tia_loss": 0.69} for s in range(1, 20)], tmp_path / "losses.png",
        backend="matplotlib", log_scale=True,
    ) == "matplotlib"  # fmt: skip
    for name in ("weights.png", "losses.png"):
        assert PIL.Image.open(tmp_path / name).format == "PNG"
