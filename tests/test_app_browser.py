"""End to end in a real headless browser: start ``streamlit run app/main.py`` on a free localhost port with a tiny
checkpoint and dataset, drive it with Playwright (Debian's /usr/bin/chromium, never ``playwright install``), switch
layer and method, and check that images render, the URL follows the selection, and no exception box appears.

Skips when chromium or playwright is missing, except under CI=true, where that is a failure. Screenshots go to
``out/screenshots/`` (gitignored) and pytest's tmp dir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from allconv.checkpoint import Meta, save
from allconv.models import create
from allconv.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGES_OK = """() => { const imgs = [...document.querySelectorAll('[data-testid="stMain"] img')];
                       return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0; }"""


def _require_browser() -> None:
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
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(root / "tiny.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    torch.manual_seed(0)
    pre = Preprocess.fit("standardize", torch.from_numpy(x).permute(0, 3, 1, 2))
    save(root / "ckpts" / "tiny.safetensors", create("all-cnn-c"),
         Meta(model="all-cnn-c", classes=[str(i) for i in range(10)], preprocess=pre))
    return {"ALLCONV_DATA": str(root / "tiny.npz"), "ALLCONV_CHECKPOINT_DIR": str(root / "ckpts"),
            "ALLCONV_SCAN_LIMIT": "20", "ALLCONV_CACHE": str(root / "cache")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def _settle(page, *texts: str) -> None:  # noqa: ANN001
    """Wait until every text (new in this rerun, drawn late) is on the page, no spinner is left and images loaded."""
    for text in texts:
        page.get_by_text(text).first.wait_for(timeout=90_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSpinner\"]')", timeout=90_000)
    page.wait_for_function(IMAGES_OK, timeout=30_000)


def _shot(page, name: str, tmp_path: Path) -> None:  # noqa: ANN001
    out = REPO / "out" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / name), full_page=True)
    page.screenshot(path=str(tmp_path / name), full_page=True)


def test_app_in_a_real_browser(tmp_path: Path) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://localhost:{port}"
    env = {**os.environ, **_assets(tmp_path)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"), "--server.port", str(port),
           "--server.headless", "true", "--server.address", "localhost", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1700})
                page.goto(f"{url}/?filter=3")
                _settle(page, "conv1, guided: each filter", "conv1 filter 3")

                sidebar = page.get_by_test_id("stSidebar")
                sidebar.get_by_test_id("stSelectbox").filter(has_text="Layer").click()
                page.get_by_role("option", name="conv3", exact=True).click()
                _settle(page, "conv3, guided: each filter", "conv3 filter 3")
                sidebar.get_by_text("deconvnet", exact=True).click()
                _settle(page, "conv3, deconvnet: each filter", "conv3 filter 3")

                assert page.eval_on_selector_all('[data-testid="stMain"] img', "els => els.length") == 7
                assert page.locator('[data-testid="stException"]').count() == 0
                assert "layer=conv3" in page.url and "method=deconvnet" in page.url and "filter=3" in page.url
                _shot(page, "app-image-view.png", tmp_path)

                page.get_by_test_id("stMain").get_by_text("Layer", exact=True).first.click()
                _settle(page, "conv3: top 9 test patches of filters 3-10", "Figure 2 for conv3 (deconvnet)")
                assert "view=Layer" in page.url
                assert page.locator('[data-testid="stException"]').count() == 0
                _shot(page, "app-layer-view.png", tmp_path)
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert (tmp_path / "app-image-view.png").stat().st_size > 10_000
