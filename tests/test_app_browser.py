"""End to end in a real headless browser: start ``allconv-app`` (``python -m app.cli``) on a free localhost port with a tiny
checkpoint and dataset, drive it with Playwright (Debian's /usr/bin/chromium, never ``playwright install``): switch
layer and method, click a grid tile, upload an image, visit every view; check that images render, the URL follows the
selection, and no exception box appears.

Skips when chromium or playwright is missing, except under CI=true, where that is a failure. Screenshots go to
pytest's tmp dir, and are copied to ``$ALLCONV_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from allconv.checkpoint import Meta, save
from allconv.models import create
from allconv.preprocess import Preprocess
from app.allow import NO_CHECKPOINT, NO_DATASET

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# A finished rerun: the script has stopped, no element is left over from the previous run (Streamlit marks those
# data-stale until the run ends), no spinner, and every image in the main area has loaded.
SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const imgs = [...document.querySelectorAll('[data-testid="stMain"] img')];
  return app && app.dataset.testScriptState === 'notRunning' && !document.querySelector('[data-stale="true"]')
    && !document.querySelector('[data-testid="stSpinner"]') && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def _require_browser() -> None:
    """Skip without a browser, but fail under CI: there the browser test must run."""
    missing = [] if CHROMIUM.exists() else [str(CHROMIUM)]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        msg = f"browser test needs {' and '.join(missing)} (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _assets(root: Path) -> dict[str, str]:
    """A 20-image dataset and a random All-CNN-C checkpoint; the app's env pointing at them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(root / "tiny.npz", x_train=x, y_train=y, x_test=x, y_test=y, label_names=np.array(CLASSES))
    torch.manual_seed(0)
    pre = Preprocess.fit("standardize", torch.from_numpy(x).permute(0, 3, 1, 2))
    history = [{"epoch": e, "train_loss": 2.3 / e, "train_acc": 0.1 * e, "val_acc": 0.09 * e} for e in range(1, 4)]
    save(root / "ckpts" / "tiny.safetensors", create("all-cnn-c"),
         Meta(model="all-cnn-c", classes=CLASSES, preprocess=pre, metrics={"test_acc": 0.3}, history=history))
    (root / "outside").mkdir()
    shutil.copy(root / "ckpts" / "tiny.safetensors", root / "outside" / "real.safetensors")
    (root / "inside").mkdir()
    (root / "inside" / "link.safetensors").symlink_to(root / "outside" / "real.safetensors")
    return {"ALLCONV_DATA": str(root / "tiny.npz"), "ALLCONV_CHECKPOINT": str(root / "ckpts" / "tiny.safetensors"),
            "ALLCONV_CHECKPOINT_DIR": str(root / "inside"), "ALLCONV_DATA_ROOT": str(root / "inside"),
            "ALLCONV_SCAN_LIMIT": "20", "ALLCONV_CACHE": str(root / "cache")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture()
def app_url(tmp_path: Path) -> Iterator[str]:
    """The app, served on a free localhost port for the test, stopped after it."""
    _require_browser()
    port = _free_port()
    cmd = [sys.executable, "-m", "app.cli", "--server.port", str(port)]  # allconv-app: prepares, then serves
    env = {**os.environ, **_assets(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(f"http://localhost:{port}", proc)
        yield f"http://localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _settle(page, *texts: str) -> None:  # noqa: ANN001
    """Wait for every text (new in this rerun) to show, then for the rerun to finish; no exception box allowed."""
    for text in texts:
        page.get_by_text(text).first.wait_for(timeout=120_000)
    page.wait_for_function(SETTLED, timeout=120_000)
    exceptions = page.get_by_test_id("stException")
    assert exceptions.count() == 0, exceptions.first.inner_text()


def _shot(page, name: str, tmp_path: Path) -> Path:  # noqa: ANN001
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("ALLCONV_SCREENSHOTS"):
        out = Path(os.environ["ALLCONV_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def _click_tile(page, index: int, n: int, cols: int) -> None:  # noqa: ANN001
    """Click the centre of tile ``index`` in the grid chart (tiles fill the chart evenly: see app.tiles.cells)."""
    box = page.get_by_test_id("stVegaLiteChart").locator("canvas, svg").first.bounding_box()
    rows = -(-n // cols)
    row, col = divmod(index, cols)
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.6) * box["height"] / rows)


def _view(page, name: str) -> None:  # noqa: ANN001
    """Pick a view in the segmented control at the top of the page (the main area's first button group)."""
    page.get_by_test_id("stMain").get_by_test_id("stButtonGroup").first.get_by_text(name, exact=True).click()


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def _figure_tile(root: Path, layer: str, first: int, j: int) -> tuple[int, tuple[float, float]]:
    """The Layer view's figure drawn again from the scan the app saved: pick j of filter ``first`` (the figure's
    first row) as (its image index, the centre of its tile in the deconvnet figure's reconstruction panel, as
    fractions of that figure)."""
    import vis
    from allconv.checkpoint import load
    from app import scans
    from app.tiles import panel_cells

    model, meta = load(root / "ckpts" / "tiny.safetensors")
    (npz,) = (root / "cache" / "scans").glob(f"{layer}-*.npz")
    s = vis.load_scan(npz)
    images = torch.from_numpy(np.load(root / "tiny.npz")["x_test"]).permute(0, 3, 1, 2).contiguous()
    img = scans.render(model, images, meta.preprocess, s, ["deconvnet"], list(range(first, first + 8)),
                       meta.classes, torch.arange(20) % 10)
    cell = panel_cells(img.info["panels"][1], 8 * s.top_k, s.top_k, [""] * 8 * s.top_k)[j]
    centre = ((cell["x0"] + cell["x1"]) / 2 / img.width, (cell["y0"] + cell["y1"]) / 2 / img.height)
    return int(s.image_index[first, j]), centre


def test_app_in_a_real_browser(app_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from app.compute import grid_columns

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(f"{app_url}/?filter=3")
            _settle(page, "conv1: every filter (guided)", "conv1 filter 3", "tiny test #0 (airplane)")
            sidebar = page.get_by_test_id("stSidebar")

            sidebar.get_by_test_id("stSelectbox").filter(has_text="Layer").click()
            page.get_by_role("option", name="conv3", exact=True).click()
            _settle(page, "conv3: every filter (guided)", "conv3 filter 3")
            sidebar.get_by_text("deconvnet", exact=True).click()
            _settle(page, "conv3: every filter (deconvnet)")
            main = page.get_by_test_id("stMain")
            assert main.locator("img").count() == 6  # the image and the close-up's five; the grid is the chart
            assert "layer=conv3" in page.url and "method=deconvnet" in page.url and "filter=3" in page.url

            _click_tile(page, 21, 96, grid_columns(96))  # a click on tile 21 picks filter 21
            _settle(page, "conv3 filter 21")
            assert "filter=21" in page.url
            _shot(page, "app-image-view.png", tmp_path)

            sidebar.locator('input[type="file"]').set_input_files(
                files=[{"name": "red.png", "mimeType": "image/png", "buffer": _png((220, 30, 30))}])
            _settle(page, "uploaded red.png: 48x40 RGB: center-cropped to 40x40, resized to 32x32", "conv3 filter 21")

            views = {"Layer": ["Figure 2 for conv3 (guided, deconvnet, backprop)"], "Filters": ["Weights of conv3"],
                     "Models": ["Table 3: CIFAR-10 test error", "Training curves"],
                     "Sanity": ["Model randomization check: predicted class"]}
            for view, texts in views.items():
                _view(page, view)
                _settle(page, *texts)
                assert f"view={view}" in page.url
                _shot(page, f"app-{view.lower()}-view.png", tmp_path)
            assert page.get_by_test_id("stVegaLiteChart").count() >= 1  # the Sanity view's chart drew

            sidebar.get_by_label("Remove red.png").click()  # the dataset image again
            _view(page, "Layer")
            _settle(page, "Figure 2 for conv3 (guided, deconvnet, backprop)")
            idx, (x, y) = _figure_tile(tmp_path, "conv3", 21, 4)
            box = page.get_by_test_id("stVegaLiteChart").nth(1).locator("canvas, svg").first.bounding_box()
            page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])  # pick 4 of filter 21
            _settle(page, f"tiny test #{idx} ({CLASSES[idx % 10]})", "conv3 filter 21")
            assert "view=" not in page.url and f"image={idx}" in page.url  # the Image view and class "all": defaults
        finally:
            browser.close()
    assert (tmp_path / "app-image-view.png").stat().st_size > 10_000


HOSTILE = {"checkpoint_path=/etc/passwd": NO_CHECKPOINT, "checkpoint_path=../../../../etc/passwd": NO_CHECKPOINT,
           "checkpoint_path=/proc/self/environ": NO_CHECKPOINT, "checkpoint=/etc/passwd": NO_CHECKPOINT,
           "checkpoint_path=IN/link.safetensors": NO_CHECKPOINT, "data=/": NO_DATASET, "data=/usr": NO_DATASET,
           "data=../../../etc": NO_DATASET}


def test_hostile_links_in_a_real_browser(app_url: str, tmp_path: Path) -> None:
    """Each link gets its one neutral message, no traceback and no server path; the page keeps working."""
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            for link, message in HOSTILE.items():
                key, value = link.split("=", 1)
                page.goto(f"{app_url}/?view=Filters&{key}={quote(value.replace('IN', str(tmp_path / 'inside')))}")
                _settle(page, message.split(":")[0])
                text = page.inner_text("body")
                assert "Traceback" not in text and str(tmp_path) not in text, link
                assert not any(p in text for p in ("/etc", "/proc", "/usr", str(REPO))), link
        finally:
            browser.close()


def test_missing_browser_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CI must not pass by skipping the browser test."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="browser test needs"):
        _require_browser()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        _require_browser()
