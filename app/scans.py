"""Figure 2 scans for the Layer view: computed in chunks (so a progress bar can follow), merged, and kept on disk.

A scan of the CIFAR-10 test split takes a while on a CPU, so it runs once per (checkpoint contents, dataset, split,
layer, limit) and is saved under ``config.scan_dir()``; later sessions and app restarts load it in milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess
from vis import figure2
from vis.figure2 import Scan

from .config import SCAN_TOP_K, scan_dir

CHUNK = 500  # images per scan call: the progress bar's step
TILE_PX = 45  # Figure 2 tiles are upscaled to about this many pixels, whatever the layer's receptive field


def scan_path(key: dict[str, object]) -> Path:
    """Where the scan identified by ``key`` lives on disk."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return scan_dir() / f"{key['layer']}-{digest}.npz"


def merge(a: Scan, b: Scan, offset: int) -> Scan:
    """``a`` (images 0..offset-1) merged with ``b`` (images offset..): each filter's top-k over both, ties to ``a``."""
    k = a.top_k
    vals = np.concatenate([a.values, b.values], axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    pick = lambda x, y: np.take_along_axis(np.concatenate([x, y], axis=1), order[(...,) + (None,) * (x.ndim - 2)],
                                           axis=1)  # noqa: E731
    return dataclasses.replace(a, values=pick(a.values, b.values),
                               image_index=pick(a.image_index, b.image_index + offset),
                               positions=pick(a.positions, b.positions), boxes=pick(a.boxes, b.boxes),
                               num_images=a.num_images + b.num_images,
                               seconds={"scan": a.seconds.get("scan", 0) + b.seconds.get("scan", 0)})


def compute(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, layer: str, split: str,
            progress: Callable[[int, int], None] | None = None, chunk: int = CHUNK) -> Scan:
    """Scan ``images`` chunk by chunk, calling ``progress(done, total)`` after each."""
    total = len(images)
    if total < 1:
        raise AllconvError("the dataset split is empty; nothing to scan")
    k = min(SCAN_TOP_K, total, chunk)
    out: Scan | None = None
    for start in range(0, total, chunk):
        part = figure2.scan(model, images[start:start + chunk], preprocess, layer=layer, top_k=k, progress=False,
                            split=split)
        part = _pad_k(part, k)
        out = part if out is None else merge(out, part, start)
        if progress is not None:
            progress(min(start + chunk, total), total)
    assert out is not None
    return out


def _pad_k(s: Scan, k: int) -> Scan:
    """A last chunk smaller than k has fewer picks: pad with -inf so merging keeps only real ones."""
    have = s.values.shape[1]
    if have == k:
        return s
    pad = lambda x, v: np.concatenate([x, np.full((x.shape[0], k - have, *x.shape[2:]), v, x.dtype)], 1)  # noqa
    return dataclasses.replace(s, top_k=k, values=pad(s.values, -np.inf), image_index=pad(s.image_index, 0),
                               positions=pad(s.positions, 0), boxes=pad(s.boxes, 0))


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
    scale = max(2, min(10, TILE_PX // max(1, min(s.rf_size, *s.image_size))))
    return figure2.render_scan(model, images, preprocess, work, methods=list(methods), filters=filters, scale=scale,
                               classes=list(classes) or None, labels=labels)
