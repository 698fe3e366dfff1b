"""Figure 2 scans for the Layer view: computed with a progress bar, then kept on disk.

A scan of the CIFAR-10 test split takes a while on a CPU, so it runs once per (checkpoint contents, images, split,
layer) and is saved under ``config.scan_dir()``; later sessions and app restarts load it in milliseconds. Keys are
content digests (``app.identity``), so the scans shipped in ``checkpoints/scans/`` (``python -m app.shipped``) serve
the shipped nets over CIFAR's test split on any machine, before the first scan ever runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from allconv import checkpoint
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess
from vis import figure2
from vis.figure2 import Scan

from . import identity
from .config import SCAN_TOP_K, scan_dir

CHUNK = 500  # images per scan batch: the progress bar's step
TILE_PX = 45  # Figure 2 tiles are upscaled to about this many pixels, whatever the layer's receptive field
MAX_FIGURE_PX = 2400  # a wider figure (a torchvision model's large receptive fields) is shrunk to this width


def disk_keys(stamp: str, split: str, layers: Sequence[str], images: torch.Tensor) -> dict[str, dict[str, object]]:
    """What identifies each layer's saved scan, by content: the checkpoint's and the images' digests (computed once),
    split, layer, image count and k."""
    ids = {"checkpoint": identity.checkpoint(stamp), "images": identity.images(images), "split": split}
    return {layer: {**ids, "layer": layer, "limit": len(images), "top_k": SCAN_TOP_K} for layer in layers}


def scan_path(key: dict[str, object], folder: Path | None = None) -> Path:
    """Where the scan identified by ``key`` is saved: in ``folder``, by default the app's scan cache."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (folder or scan_dir()) / f"{key['layer']}-{digest}.npz"


def shipped() -> Path:
    """The folder of the shipped nets' scans over their datasets' test splits (``app.shipped``), read-only."""
    return checkpoint.SHIPPED_DIR / "scans"


def find(key: dict[str, object]) -> list[Path]:
    """The saved scans for ``key``, the cache's before the shipped one (a damaged one is recomputed into the cache)."""
    return [p for p in (scan_path(key), scan_path(key, shipped())) if p.is_file()]


def compute(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, layer: str, split: str,
            progress: Callable[[int, int], None] | None = None, chunk: int = CHUNK) -> Scan:
    """Scan ``images`` (in bf16 with fp32 rescoring where native: fp32's picks), calling ``progress(done, total)``
    after each batch of ``chunk`` images."""
    if len(images) < 1:
        raise AllconvError("the dataset split is empty; nothing to scan")
    return figure2.scan(model, images, preprocess, layer=layer, top_k=min(SCAN_TOP_K, len(images)),
                        batch_size=chunk, progress=progress or False, split=split)


def load_or_compute(key: dict[str, object], model: nn.Module, images: torch.Tensor, preprocess: Preprocess,
                    progress: Callable[[int, int], None] | None = None) -> Scan:
    """The saved scan for ``key`` if there is a readable one, else a fresh one (saved best-effort)."""
    for path in find(key):
        try:
            return figure2.load_scan(path)
        except AllconvError:
            pass  # damaged: recompute into the cache
    s = compute(model, images, preprocess, str(key["layer"]), str(key["split"]), progress)
    try:
        figure2.save_scan(s, scan_path(key))
    except OSError:
        pass  # a read-only cache must not break the page
    return s


def render(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, s: Scan, methods: Sequence[str],
           filters: list[int], classes: Sequence[str] = (), labels: torch.Tensor | None = None) -> Image.Image:
    """Figure 2 for ``filters`` with ``methods`` side by side, drawn on a copy so the cached scan is never mutated; tiles of small
    receptive fields are upscaled more, so every layer's figure reads at a similar size. On the class layer, rows
    are named by ``classes`` and each patch by its image's label."""
    work = dataclasses.replace(s, recons={}, seconds=dict(s.seconds))
    side = max(1, min(s.rf_size, *s.image_size))
    scale = max(2, min(10, TILE_PX // side)) if side <= 2 * TILE_PX else 1
    return shrink(figure2.render_scan(model, images, preprocess, work, methods=list(methods), filters=filters,
                                      scale=scale, classes=list(classes) or None, labels=labels))


def shrink(img: Image.Image, width: int = MAX_FIGURE_PX) -> Image.Image:
    """``img`` at most ``width`` px wide (smoothly), its ``info["panels"]`` boxes scaled alike."""
    if img.width <= width:
        return img
    f = width / img.width
    out = img.resize((width, max(1, round(img.height * f))), Image.Resampling.LANCZOS)
    out.info["panels"] = [{**p, **{k: round(p[k] * f) for k in ("x", "y", "width", "height")}}
                          for p in img.info.get("panels", [])]
    return out
