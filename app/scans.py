"""Figure 2 scans for the Layer view: computed with a progress bar, then kept on disk.

A scan of the CIFAR-10 test split takes a while on a CPU, so it runs once per (checkpoint contents, dataset, split,
layer, limit) and is saved under ``config.scan_dir()``; later sessions and app restarts load it in milliseconds.
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

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess
from vis import figure2
from vis.figure2 import Scan

from .config import SCAN_TOP_K, scan_dir

CHUNK = 500  # images per scan batch: the progress bar's step
TILE_PX = 45  # Figure 2 tiles are upscaled to about this many pixels, whatever the layer's receptive field
MAX_FIGURE_PX = 2400  # a wider figure (a torchvision model's large receptive fields) is shrunk to this width


def disk_key(stamp: str, source: str, split: str, layer: str, limit: int) -> dict[str, object]:
    """What identifies a saved scan: the checkpoint's contents, the data, split, layer, image count and k."""
    return {"checkpoint": stamp, "data": source, "split": split, "layer": layer, "limit": limit, "top_k": SCAN_TOP_K}


def scan_path(key: dict[str, object]) -> Path:
    """Where the scan identified by ``key`` lives on disk."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return scan_dir() / f"{key['layer']}-{digest}.npz"


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
    path = scan_path(key)
    if path.is_file():
        try:
            return figure2.load_scan(path)
        except AllconvError:
            pass  # damaged: recompute and overwrite
    s = compute(model, images, preprocess, str(key["layer"]), str(key["split"]), progress)
    try:
        figure2.save_scan(s, path)
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
