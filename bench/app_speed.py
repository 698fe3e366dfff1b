"""How fast the app re-renders: AppTest reruns of app/main.py for each kind of interaction, timed.

    python bench/app_speed.py [--reruns 10] [--checkpoint PATH] [--data PATH] [--scan-limit 500]

Uses the default checkpoint (shipped All-CNN-C or newest run) or, if none, a random All-CNN-C saved to a temp dir;
data: CIFAR-10 as ``allconv.data.load(None)`` finds it, else 200 random images. Two tables:

* warm: every state visited once first, then each interaction toggles between visited states -- what a user feels
  going back and forth (the issue's target: < 300 ms);
* cold: states never seen before (the reconstruction grid or filter close-up is computed in that rerun).

Each figure is one full rerun (script + caches + PNG transfer to the test harness), median and p90 in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _setup(args: argparse.Namespace, tmp: Path) -> str:
    """Point the app at a checkpoint and a dataset; returns a description."""
    from allconv.checkpoint import Meta, default_checkpoint, save
    from allconv.data import find_offline_cifar10
    from allconv.models import create
    from allconv.preprocess import Preprocess

    data = args.data or find_offline_cifar10()
    if data is None:
        x = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp / "random.npz", x_train=x, y_train=np.arange(200) % 10, x_test=x, y_test=np.arange(200) % 10)
        data = tmp / "random.npz"
    os.environ["ALLCONV_DATA"] = str(data)
    os.environ["ALLCONV_SCAN_LIMIT"] = str(args.scan_limit)
    os.environ.setdefault("ALLCONV_CACHE", str(tmp / "cache"))
    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(REPO / "runs")
    if ckpt is None:
        torch.manual_seed(0)
        x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
        ckpt = save(tmp / "ckpts" / "random-all-cnn-c.safetensors", create("all-cnn-c"),
                    Meta(model="all-cnn-c", classes=[str(i) for i in range(10)],
                         preprocess=Preprocess.fit("standardize", x)))
    os.environ["ALLCONV_CHECKPOINT"] = str(ckpt)  # the app opens on it
    return f"checkpoint {ckpt}, data {data}, scan limit {os.environ['ALLCONV_SCAN_LIMIT']}"


def _timed(at, step: Callable[[], None]) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    step()
    at.run()
    ms = 1000 * (time.perf_counter() - t0)
    if at.exception or at.error:
        raise RuntimeError(f"the page shows an error: {[e.value for e in [*at.exception, *at.error]]}")
    return ms


def _stats(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return statistics.median(ms), q[8]


def _set(at, key: str, value: object) -> Callable[[], None]:  # noqa: ANN001
    """A step that sets sidebar widget ``key`` (looked up in the current tree: each run makes a new one)."""
    def step() -> None:
        w = at.sidebar.get("selectbox" if key == "layer" else "select_slider" if key == "filter" else
                           "button_group" if key == "method" else "number_input")
        widget = next(x for x in w if x.key == key)
        widget.select(value) if key == "layer" else widget.set_value(value)
    return step


def _view(at, value: str) -> Callable[[], None]:  # noqa: ANN001
    return lambda: at.segmented_control(key="view").set_value(value)


def _actions(at, n: int) -> dict[str, list[Callable[[], None]]]:  # noqa: ANN001
    """Per interaction, the widget changes of one round (n even). Each group ends where it started (conv3, filter 0,
    guided, image 0, Image view), so a second round revisits exactly the states of the first: all warm."""
    views = ["Filters", "Image", "Sanity", "Image", "Layer", "Image", "Models", "Image"]
    return {
        "change layer (conv3 <-> conv6)": [_set(at, "layer", v) for v in ["conv6", "conv3"] * (n // 2)],
        "change filter (0..9)": [_set(at, "filter", i % 10) for i in range(1, n)] + [_set(at, "filter", 0)],
        "change method (guided <-> deconvnet)": [_set(at, "method", v) for v in ["deconvnet", "guided"] * (n // 2)],
        "change image (index 0 <-> 1)": [_set(at, "image", v) for v in [1, 0] * (n // 2)],
        "switch view (Image <-> Filters/Sanity/Layer/Models)": [_view(at, v) for v in (views * n)[:n]],
    }


def _cold(at, n: int) -> dict[str, list[float]]:  # noqa: ANN001
    """Reruns whose state was never seen before: the work happens in the rerun."""
    layers = [_timed(at, _set(at, "layer", v)) for v in ("conv1", "conv2", "conv4", "conv5", "conv7", "conv8", "conv9")]
    _timed(at, _set(at, "layer", "conv3"))  # back to a layer with >= 96 filters (conv9 has 10)
    return {
        "change layer (new layer)": layers,
        "change filter (new filter)": [_timed(at, _set(at, "filter", v)) for v in range(20, 20 + min(n, 9))],
        "change method (new method)": [_timed(at, _set(at, "method", "backprop"))],
        "change image (new image)": [_timed(at, _set(at, "image", v)) for v in range(2, 2 + n)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=10)
    ap.add_argument("--checkpoint")
    ap.add_argument("--data")
    ap.add_argument("--scan-limit", type=int, default=500, help="images in the Layer view's Figure 2 scan")
    args = ap.parse_args(argv)
    args.reruns = max(2, args.reruns + args.reruns % 2)  # even: every toggle returns to its start
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        what = _setup(args, Path(tmp))
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=600)
        at.query_params.update({"layer": "conv3"})
        t0 = time.perf_counter()
        at.run()
        first = 1000 * (time.perf_counter() - t0)
        actions = _actions(at, args.reruns)
        for steps in actions.values():  # warm-up: the same round once, untimed
            for step in steps:
                _timed(at, step)
        warm = {name: [_timed(at, s) for s in steps] for name, steps in actions.items()}
        cold = _cold(at, args.reruns)
    print(f"# app re-render times (AppTest), {what}")
    print(f"# torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; first page load {first:.0f} ms")
    print(f"{'interaction':58s} {'n':>3s} {'median ms':>10s} {'p90 ms':>8s}")
    for title, table in (("warm (state seen before)", warm), ("cold (state never seen)", cold)):
        print(f"-- {title}")
        for name, ms in table.items():
            med, p90 = _stats(ms)
            print(f"{name:58s} {len(ms):3d} {med:10.0f} {p90:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
