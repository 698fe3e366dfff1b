"""The app as a user feels it: a real Chromium against ``allconv-app``, each interaction timed from the click until
the page is idle with its images loaded (in the page's clock: from the last pointer or key press until a rerun has run
and every image is loaded), first visits and revisits apart, and the server's memory after.

    python bench/app_browser.py [--checkpoint checkpoints/all-cnn-c.safetensors] [--data CIFAR10.npz]
                                [--scan-limit 10000] [--rounds 3]

Goals (issue 13): a first visit <= 2 s, a revisit <= 300 ms. The Layer view's first scan of a layer is reported on
its own line (it scans the split once, then is cached on disk for every later visit and session). Needs Chromium
(/usr/bin/chromium) and the playwright package, as the browser test does; the app's caches go to a temp dir, so every
first visit is a real first visit. The server's start (until it answers: ``allconv-app`` prepares first, see
``app.serve``) has its own row; the first page load is timed from then, as a visitor who came at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_app_browser import ARGS, CHROMIUM, SETTLED, _free_port, _view, _wait_healthy  # noqa: E402


WATCH = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__ran = false;
  window.__at = window.__start = window.__end = null;
  if (!window.__watching) {
    window.__watching = true;
    for (const kind of ['pointerdown', 'keydown']) {
      document.addEventListener(kind, () => { window.__at = performance.now(); }, true);
    }
    new MutationObserver((records) => {  // the script state left notRunning: a rerun began; back: it ended
      const t = performance.now();
      for (const r of records) {
        window.__ran = true;
        if (r.oldValue === 'notRunning' && window.__start === null) window.__start = t;
      }
      if (app.dataset.testScriptState === 'notRunning') window.__end = t;
    }).observe(app, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
  }
}"""
DONE = f"() => (window.__ran || performance.now() - window.__at > 3000) && ({SETTLED})() && performance.now()"


def timed(page, action: Callable[[], None], text: str | None = None,  # noqa: ANN001
          prepare: Callable[[], None] | None = None) -> tuple[float, tuple[float, float, float] | None]:
    """ms, in the page's clock, from the user's last press (pointer down or key down: ``prepare``, such as opening a
    select box, comes before it) until a rerun has run and the page is idle with every image loaded (``text``: and
    shows it). A rerun not seen within 3 s (none started) counts from then. Also its phases, where seen: press until
    the rerun starts, the rerun (the server's run and its messages), its end until the page is idle (the browser)."""
    page.evaluate(WATCH)
    if prepare:
        prepare()
    action()
    if text:
        page.get_by_text(text).first.wait_for(timeout=600_000)
    done = page.wait_for_function(DONE, timeout=600_000, polling="raf").json_value()
    at, start, end = page.evaluate("[window.__at, window.__start, window.__end]")
    return done - at, (start - at, end - start, done - end) if start is not None and end is not None else None


def loaded(page, url: str, text: str) -> float:  # noqa: ANN001
    """ms of wall clock from navigating to ``url`` until ``text`` shows and the page is idle with its images."""
    t0 = time.perf_counter()
    page.goto(url)
    page.get_by_text(text).first.wait_for(timeout=600_000)
    page.wait_for_function(SETTLED, timeout=600_000)
    return 1000 * (time.perf_counter() - t0)


def rss_mb(pid: int) -> tuple[float, float]:
    """The server's resident and peak resident memory, MB (its own process: streamlit runs the app in it)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def run(url: str, pid: int, rounds: int) -> dict[str, dict[str, list]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, dict[str, list]] = {}

    def note(kind: str, visit: str, result: float | tuple[float, tuple[float, float, float] | None]) -> None:
        ms, phases = result if isinstance(result, tuple) else (result, None)
        got = times.setdefault(kind, {"first": [], "revisit": [], "phases": []})
        got[visit].append(ms)
        if visit == "revisit" and phases:
            got["phases"].append(phases)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        note("first page load", "first", loaded(page, url, "every filter"))
        side = page.get_by_test_id("stSidebar")

        def open_layers() -> None:
            side.get_by_test_id("stSelectbox").filter(has_text="Layer").click()

        def layer(name: str) -> Callable[[], None]:
            return lambda: page.get_by_role("option", name=name, exact=True).click()

        def method(name: str) -> Callable[[], None]:
            return lambda: side.get_by_text(name, exact=True).click()

        def image(step: str) -> Callable[[], None]:
            return lambda: side.get_by_test_id("stNumberInput").get_by_test_id(
                "stNumberInputStepUp" if step == "+" else "stNumberInputStepDown").click()

        def filt(i: int) -> Callable[[], None]:
            return lambda: side.get_by_test_id("stSlider").get_by_role("slider").press("ArrowRight")

        layers = ["conv1", "conv2", "conv4", "conv6", "conv7", "conv9"][:rounds + 2]  # the page opens on conv1
        for name in layers[1:]:  # first visits, then back and forth between visited ones
            note("change layer", "first", timed(page, layer(name), f"{name}: every filter", open_layers))
        for name in layers[-2:] * rounds:
            note("change layer", "revisit", timed(page, layer(name), f"{name}: every filter", open_layers))
        for m in ("deconvnet", "backprop"):
            note("change method", "first", timed(page, method(m), f"({m})"))
        for m in ("guided", "deconvnet") * rounds:
            note("change method", "revisit", timed(page, method(m), f"({m})"))
        for _ in range(rounds):
            note("change filter", "first", timed(page, filt(1)))
        for _ in range(rounds):
            note("change image", "first", timed(page, image("+")))
        for step in ("-", "+") * rounds:
            note("change image", "revisit", timed(page, image(step)))
        note("open the Layer view", "first", timed(page, lambda: _view(page, "Layer"), "Figure 2 for"))
        for view in ("Image", "Layer") * rounds:
            note("switch view", "revisit", timed(page, lambda v=view: _view(page, v)))
        for view in ("Filters", "Models", "Sanity"):
            note(f"open the {view} view", "first", timed(page, lambda v=view: _view(page, v)))
        browser.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "all-cnn-c.safetensors"))
    ap.add_argument("--data", help="dataset (default: the offline CIFAR-10 copy)")
    ap.add_argument("--scan-limit", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from allconv.data import find_offline_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ALLCONV_CHECKPOINT": args.checkpoint, "ALLCONV_CACHE": tmp,
               "ALLCONV_DATA": args.data or str(find_offline_cifar10()), "ALLCONV_SCAN_LIMIT": str(args.scan_limit)}
        port = _free_port()
        cmd = [sys.executable, "-m", "app.cli", "--server.port", str(port)]  # allconv-app, as a user starts it
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_healthy(f"http://localhost:{port}", proc)
            up_ms = 1000 * (time.perf_counter() - t0)
            start = rss_mb(proc.pid)[0]
            times = run(f"http://localhost:{port}", proc.pid, args.rounds)
            time.sleep(5)
            rss, peak = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"app in Chromium: {args.checkpoint}, scan limit {args.scan_limit}, {os.cpu_count()} CPUs; ms from the "
          "click until the page is idle with its images loaded\n")
    print("| interaction | first visit median / max ms | revisit median / max ms |\n|---|---:|---:|")
    print(f"| start the server (allconv-app until it answers) | {up_ms:,.0f} (n=1) | - |")
    for kind, t in times.items():
        cell = lambda xs: f"{statistics.median(xs):,.0f} / {max(xs):,.0f} (n={len(xs)})" if xs else "-"  # noqa
        print(f"| {kind} | {cell(t['first'])} | {cell(t['revisit'])} |")
    print("\nrevisits, median ms per phase: press -> rerun starts | the rerun (server) | rerun ends -> page idle "
          "(browser)")
    for kind, t in times.items():
        if t["phases"]:
            print(f"  {kind}: " + " | ".join(f"{statistics.median(x):,.0f}" for x in zip(*t["phases"])))
    print(f"\nserver memory: {start:.0f} MB at start, {rss:.0f} MB after the session (peak {peak:.0f} MB)")


if __name__ == "__main__":
    main()
