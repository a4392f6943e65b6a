"""
app.py in a real browser: serve it on 127.0.0.1 with a tiny checkpoint (with dual-encoder heads) and a small
catalogue, type a description in headless Chromium, and check that result images appear (a screenshot is saved under
tmp_path).

Needs gradio and selenium (PyPI) and Debian's `chromium` + `chromium-driver` (`/usr/bin/chromium`,
`/usr/bin/chromedriver`); skipped with the reason when any is missing, so CI without them stays green. The MAP-IVR
tab's handler is also called directly (no browser; needs only gradio) on a tiny checkpoint and gallery.
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import PIL.Image
import pytest


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytest.importorskip("gradio", reason="the demo needs gradio (pip install gradio)")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None
BROWSER_MISSING = (
    "the browser tests need selenium (pip install selenium)"
    if webdriver is None
    else None
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
    else "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
)
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"app.py did not serve {url} within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """One app process for the browser tests (starting Gradio takes most of their time)."""
    if BROWSER_MISSING:
        pytest.skip(BROWSER_MISSING)
    from tiny_fashionbert import save_golden_fashionbert_with_heads

    port = free_port()
    folder = tmp_path_factory.mktemp("app")
    log = folder / "app.log"
    command = [
        sys.executable, str(ROOT / "app.py"),
        "--fashionbert_model", str(save_golden_fashionbert_with_heads(folder / "model")),
        "--num_products", "55", "--views_per_product", "1", "--image_size", "32",
        "--catalogue_dir", str(folder / "catalogue"), "--rerank_top_n", "20",
        "--no_activity", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@needs_browser
def test_typing_a_description_shows_ranked_result_images(served_app, browser, tmp_path):
    url, log = served_app
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    box = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#text-query textarea")))
    box.send_keys("red long sleeve dress")
    browser.find_element(By.CSS_SELECTOR, "#text-search").click()

    # 55 products, one view each; top-5 (the default) shows 5 of them.
    def result_images(driver):
        images = driver.find_elements(By.CSS_SELECTOR, "#image-results img")
        loaded = [i for i in images if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
        return loaded if len(loaded) >= 5 else False  # the gallery renders its images one by one

    images = wait.until(result_images)
    note = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#text-note").text.strip() or False)
    screenshot = tmp_path / "app_text_to_images.png"
    assert browser.save_screenshot(str(screenshot)), "the screenshot was not written"
    assert screenshot.stat().st_size > 1000
    assert len(images) == 5, f"expected the top-5 images, got {len(images)}"
    assert note.startswith("The dual-encoder index (exact") and "over 55 catalogue images" in note, note
    assert "score" in browser.find_element(By.CSS_SELECTOR, "#image-results").text
    assert "Traceback" not in log.read_text()


@needs_browser
def test_a_bad_checkpoint_path_is_a_message_not_a_traceback(served_app, browser):
    url, _ = served_app
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    path = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#fashionbert-path textarea")))
    path.clear()
    path.send_keys("/no/such/checkpoint")
    browser.find_element(By.CSS_SELECTOR, "#text-query textarea").send_keys("dress")
    browser.find_element(By.CSS_SELECTOR, "#text-search").click()
    message = wait.until(
        lambda d: next((e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body, .toast-wrap") if "/no/such/checkpoint" in e.text), False)
    )
    assert "is not a folder" in message and "Traceback" not in message


def test_map_ivr_tab_ranks_animated_videos_with_the_three_scores(tmp_path):
    """The "Image -> videos" handler on a tiny gallery (3 classes x 2 test videos) and a tiny checkpoint."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    import app
    from xmodal import MapIvrConfig, MapIvrFeatureExtractor, MapIvrModel
    from xmodal.data.activity_synthetic import make_activity_dataset
    from xmodal.hub import save_model_folder

    data = make_activity_dataset(
        num_videos_per_class=2, class_ids=[0, 1, 2], keep_media=True, show_progress=False, seed=3
    ).with_format("numpy")
    train, test = data["train"], data["test"]
    train_images, train_videos = np.asarray(train["image_features"]), np.asarray(train["video_features"])
    extractor = MapIvrFeatureExtractor(
        image_feature_dim=train_images.shape[1], video_feature_dim=train_videos.shape[-1]
    ).fit(train_images, train_videos)
    torch.manual_seed(0)
    config = MapIvrConfig(
        image_feature_dim=extractor.image_feature_dim, video_feature_dim=extractor.video_feature_dim,
        appearance_dim=8, motion_dim=8, latent_dim=4, encoder_hidden_sizes=[16], decoder_hidden_sizes=[16],
        num_labels=3, num_samples=4,
    )  # fmt: skip
    save_model_folder(tmp_path / "map_ivr", MapIvrModel(config), extractor)
    gallery = app.ActivityGallery(
        image_features=np.asarray(test["image_features"], dtype=np.float32),
        video_features=np.asarray(test["video_features"], dtype=np.float32),
        proposal_scores=np.asarray(test["proposal_scores"], dtype=np.float32) if "proposal_scores" in test.column_names else None,
        images=np.asarray(test["image"]),
        videos=test["video"],
        labels=[int(x) for x in test["label"]],
        label_names=test.features["label"].names,
        gif_dir=tmp_path / "gifs",
    )
    gallery.gif_dir.mkdir()
    demo = app.build_demo(None, gallery, "unused", str(tmp_path / "map_ivr"))
    search_videos = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "search_videos")

    query, label, items, rows = search_videos(str(tmp_path / "map_ivr"), 1, 0.25, 3, 4)
    assert query.size == (128, 128)
    assert label == f"query class: {gallery.label_names[gallery.labels[1]]}"
    assert len(items) == len(rows) == 4
    for (gif, caption), row in zip(items, rows):
        with PIL.Image.open(gif) as preview:
            assert preview.format == "GIF" and preview.n_frames == gallery.videos[row[1]].shape[0]
        rank, _, _, _, s_a, s_v, s_all = row
        assert caption.startswith(f"{rank}. ") and abs(s_all - (0.75 * s_a + 0.25 * s_v)) < 2e-4
    assert [r[6] for r in rows] == sorted(r[6] for r in rows)  # closest first

    import gradio as gr

    with pytest.raises(gr.Error, match="is not a folder"):
        search_videos(str(tmp_path / "missing"), 1, 0.5, 3, 4)


def test_app_defaults_follow_train_py():
    sys.path.insert(0, str(ROOT))
    import app
    import train

    args = train.parse_args([])
    assert app.TRAIN_DEFAULTS == {name: getattr(args, name) for name in app.TRAIN_DEFAULTS}
    defaults = app.build_parser().parse_args([])
    assert (defaults.fashionbert_model, defaults.map_ivr_model) == ("outputs/fashionbert/final", "outputs/map_ivr/final")
    assert Path(args.output_dir) / "final" == Path(defaults.fashionbert_model)
    assert Path(defaults.catalogue_dir).parent == Path(args.output_dir)  # the indexes live beside the checkpoint
    assert defaults.num_products >= 10_000 and defaults.catalogue_seed != args.seed  # a catalogue of unseen products
