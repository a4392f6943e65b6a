"""
The README's picture of the demo: start app.py on a free port of 127.0.0.1 with a trained FashionBERT folder and its
catalogue, open the page in headless Chromium at a fixed window size, type a description into the "Text -> images"
tab, click "Search images", wait until the result images have loaded, scroll so the query and the result tiles are
both in view, and save a PNG of them (cut a little below the tiles unless --no_crop). The server is stopped afterwards
(also on an error, Ctrl-C or SIGTERM).

    python train.py                                  # once: outputs/fashionbert/final (the quickstart's folder)
    python bench/demo_screenshot.py                  # writes docs/demo_screenshot.png
    python bench/demo_screenshot.py --query "black wool coat with pockets" --output /tmp/coat.png

The first start of app.py renders the 10,000-product catalogue into --catalogue_dir and indexes it with the checkpoint
(about 10 minutes on a 2-core CPU, see docs/demo.md); later starts load the saved indexes. Needs the demo extras
(`pip install -e ".[demo]"`), selenium (`pip install selenium`) and Debian's `chromium` and `chromium-driver`
(`/usr/bin/chromium`, `/usr/bin/chromedriver`), as tests/test_app_browser.py.
"""

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from xmodal.benchmarking import AppServer, bench_parser

ROOT = Path(__file__).resolve().parents[1]
PROG = "demo_screenshot.py"


def fail(message: str) -> None:
    raise SystemExit(f"{PROG}: error: {message}")


def browser_modules():
    """selenium's modules, or a one-line error naming what is missing (checked before app.py is started)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        fail("selenium is missing (pip install selenium)")
    return webdriver, By, expected_conditions, WebDriverWait


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", chromedriver)) if not Path(path).exists()]
    if missing:
        fail(f"Debian's {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (apt-get install chromium chromium-driver)")
    return chromium, chromedriver


def from_root(path: str) -> str:
    """`path` (relative to the current folder) as app.py, run in the repository root, reads it: relative where it is
    inside the repository (the page shows the checkpoint's path), absolute otherwise."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


SCROLL_SCRIPT = """
window.scrollTo(0, 0);
const tiles = [...document.querySelectorAll('#image-results img')].map(i => i.closest('button') || i);
const bottom = Math.max(...tiles.map(t => t.getBoundingClientRect().bottom));
const queryTop = document.querySelector('#text-query').getBoundingClientRect().top;
const needed = bottom + 16 - window.innerHeight;
if (needed > 0) window.scrollTo(0, Math.min(needed, queryTop - 12));
return Math.max(...tiles.map(t => t.getBoundingClientRect().bottom));
"""


def take_screenshot(url: str, args, chromium: str, chromedriver: str) -> int:
    """Search `args.query` on the page at `url` and save the window to `args.output`; returns the result images shown."""
    webdriver, By, expected_conditions, WebDriverWait = browser_modules()
    from selenium.webdriver.common.action_chains import ActionChains
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={args.width},{args.height}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    try:
        # The window's frame takes part of --window-size even headless: size the window so the page gets width x height.
        inner_width, inner_height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        outer_width, outer_height = driver.get_window_size()["width"], driver.get_window_size()["height"]
        driver.set_window_size(args.width + outer_width - inner_width, args.height + outer_height - inner_height)
        driver.get(url)
        wait = WebDriverWait(driver, args.query_timeout)
        box = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#text-query textarea")))
        box.clear()
        box.send_keys(args.query)
        top_k_box = driver.find_elements(By.CSS_SELECTOR, "#text-top-k input[type=number]")
        top_k = int(float(top_k_box[0].get_attribute("value") or 5)) if top_k_box else 5
        driver.find_element(By.CSS_SELECTOR, "#text-search").click()

        def loaded_images(d):
            images = d.find_elements(By.CSS_SELECTOR, "#image-results img")
            loaded = [i for i in images if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
            return loaded if len(loaded) >= top_k else False  # the gallery renders its images one by one

        images = wait.until(loaded_images)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#text-note").text.strip() or False)
        # A first start answers before it is done (the captions, the activity gallery): the page's start-up line
        # empties once it is, and the picture shows the page as a later visitor sees it.
        WebDriverWait(driver, args.start_timeout).until(
            lambda d: all(not e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "#startup-status"))
        )
        # The pointer off the tiles (the click left it where a tile now is, which highlights it), then the page from
        # its top (title, tabs, query) down to the result tiles: scrolled only as far as the tiles need, never past
        # the query's box.
        ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, "#text-note")).perform()
        tiles_bottom = driver.execute_script(SCROLL_SCRIPT)
        time.sleep(args.settle)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(output)):
            fail(f"Chromium did not write {output}")
        if not args.no_crop:  # the empty rest of the gallery's box below the tiles
            with PIL.Image.open(output) as shot:
                height = min(shot.height, int(tiles_bottom) + 24)
                shot.crop((0, 0, shot.width, height)).save(output)
        return len(images)
    finally:
        driver.quit()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--fashionbert_model", default="outputs/fashionbert/final", help="A FashionBERT folder with dual-encoder heads (train.py's default output).")
    parser.add_argument("--catalogue_dir", default="outputs/fashionbert/catalogue", help="app.py's catalogue and saved indexes (rendered and indexed on a first start).")
    parser.add_argument("--query", default="red long-sleeve dress with a round neck", help="The description typed into the page.")
    parser.add_argument("--output", default="docs/demo_screenshot.png", help="Where the PNG is saved.")
    parser.add_argument("--width", type=int, default=1280, help="Browser window width in pixels.")
    parser.add_argument("--height", type=int, default=900, help="Browser window height in pixels.")
    parser.add_argument("--start_timeout", type=float, default=900.0, help="Seconds to wait for app.py to answer (a first start renders and indexes the catalogue).")
    parser.add_argument("--query_timeout", type=float, default=300.0, help="Seconds to wait for the page and for the results.")
    parser.add_argument("--no_crop", action="store_true", help="Keep the whole window (by default the PNG ends a little below the result tiles).")
    parser.add_argument("--settle", type=float, default=1.5, help="Seconds to wait after the results loaded, before the screenshot.")
    parser.add_argument("--app_log", default=None, help="app.py's output (default: a file in the temporary folder).")
    args = parser.parse_args()
    if not Path(args.fashionbert_model).is_dir():
        fail(f"--fashionbert_model {args.fashionbert_model}: not a folder (python train.py writes outputs/fashionbert/final)")
    browser_modules()
    from selenium.common.exceptions import TimeoutException, WebDriverException

    chromium, chromedriver = browser_paths()

    log = Path(args.app_log) if args.app_log else Path(tempfile.mkstemp(prefix="demo_screenshot_app_", suffix=".log")[1])
    arguments = ["--fashionbert_model", from_root(args.fashionbert_model), "--catalogue_dir", from_root(args.catalogue_dir),
                 "--no_activity", "--host", "127.0.0.1"]  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{PROG}: stopped by SIGTERM"))  # so the server is stopped too
    with AppServer(ROOT, arguments, log) as server:
        print(f"starting app.py on port {server.port} (log: {log}) ...", flush=True)
        try:
            seconds = server.wait_for_page(args.start_timeout)
        except RuntimeError as error:
            print(str(error).split("\n", 1)[-1], file=sys.stderr)
            fail(str(error).splitlines()[0])
        print(f"app.py answered after {seconds:.0f} s; searching {args.query!r} in headless Chromium ...", flush=True)
        try:
            count = take_screenshot(server.url, args, chromium, chromedriver)
        except WebDriverException as error:  # TimeoutException included: no page or no results in --query_timeout
            if isinstance(error, TimeoutException):
                what = f"no page or no result images within --query_timeout {args.query_timeout:.0f} s"
            else:
                what = (error.msg or type(error).__name__).strip().splitlines()[0]
            fail(f"headless Chromium: {what}; app.py's log: {log}")
    with PIL.Image.open(args.output) as shot:
        size = f"{shot.width}x{shot.height}"
    print(f"saved {args.output} ({size} of a {args.width}x{args.height} window; query {args.query!r}, {count} result images)")


if __name__ == "__main__":
    main()
