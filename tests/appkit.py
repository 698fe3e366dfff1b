"""Shared pieces of the app tests: the tiny assets, the environment that points the app at them, and page helpers.

A tiny random All-CNN-C checkpoint and a 40-image .npz dataset are made once per module in a temp dir (the ``assets``
fixture in conftest.py); the app finds them through ALLCONV_CHECKPOINT_DIR / ALLCONV_DATA (``env``; ALLCONV_CACHE keeps
its caches in the temp dir too).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from allconv.checkpoint import Meta, save
from allconv.models import create
from allconv.preprocess import Preprocess

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_assets(root: Path) -> dict[str, Path]:
    """tiny.npz (20 train / 20 test images, 2 per class) and ckpts/tiny.safetensors (random All-CNN-C) in ``root``."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    np.savez(root / "tiny.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:],
             label_names=np.array(CLASSES))
    torch.manual_seed(0)
    pre = Preprocess.fit("standardize", torch.from_numpy(x).permute(0, 3, 1, 2))
    history = [{"epoch": e, "train_loss": 2.3 - 0.1 * e, "train_acc": 0.1 + 0.05 * e, "val_acc": 0.1 + 0.04 * e,
                "test_acc": None, "lr": 0.01, "time": 1.0} for e in range(1, 6)]
    save(root / "ckpts" / "tiny.safetensors", create("all-cnn-c"),
         Meta(model="all-cnn-c", classes=CLASSES, preprocess=pre, metrics={"test_acc": 0.42}, history=history))
    return {"root": root, "data": root / "tiny.npz", "ckpts": root / "ckpts",
            "ckpt": root / "ckpts" / "tiny.safetensors"}


def point_app(assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The app pointed at the tiny assets only: the repository's shipped checkpoints and local runs are hidden."""
    import allconv.checkpoint
    import app.sources

    monkeypatch.setattr(allconv.checkpoint, "SHIPPED_DIR", assets["root"] / "no-shipped")
    monkeypatch.setattr(app.sources, "REPO", assets["root"])
    monkeypatch.chdir(assets["root"])
    monkeypatch.setenv("ALLCONV_CHECKPOINT", str(assets["ckpt"]))
    monkeypatch.setenv("ALLCONV_DATA", str(assets["data"]))
    monkeypatch.setenv("ALLCONV_CHECKPOINT_DIR", str(assets["ckpts"]))
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "20")
    monkeypatch.setenv("ALLCONV_CACHE", str(assets["root"] / "cache"))
    monkeypatch.setenv("ALLCONV_PRECOMPUTE", "0")  # no background scans unless a test asks (test_app_precompute)
    return assets


def run(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params.update(query or {})
    return at.run()


def captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def image_urls(at: AppTest) -> list[str]:
    return [u for img in at.image for u in img.value]


def grid_spec(at: AppTest) -> dict:
    """The Image view's clickable grid: the Vega-Lite spec of its one chart (the grid PNG inside, one box per tile)."""
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1, f"{len(charts)} charts"
    return json.loads(charts[0].proto.spec)


def grid_png(at: AppTest) -> bytes:
    """The grid picture the Image view sends: the PNG inside the chart's data URL."""
    url = grid_spec(at)["layer"][0]["data"]["values"][0]["url"]
    assert url.startswith("data:image/png;base64,"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def grid_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if "each filter's reconstruction" in c.value)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def ok(at: AppTest) -> AppTest:
    """No exception box and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    return at


def png_header(width: int, height: int) -> bytes:
    """A PNG that promises width x height pixels (header only): a few bytes that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def png_bytes(size: tuple[int, int] = (50, 40), mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 255) if mode == "RGBA" else 120).save(buf, format="PNG")
    return buf.getvalue()
