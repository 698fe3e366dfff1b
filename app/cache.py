"""The app's caches, shared by every session: one model per checkpoint file and one dataset per source
(``st.cache_resource``, at most 4 and 2); rendered images per (checkpoint, image, layer, method) as PNG bytes and the
other results (``lru.memo``), so a revisited selection costs no compute and no re-encoding. Every cache is bounded in
entries, and the memoized ones and the scans in bytes too: about 275 MB together at most, besides the models and
datasets.

Cached functions take the checkpoint's ``stamp`` (path, size, mtime) as their key, so replacing a checkpoint file
reloads it; arguments starting with ``_`` (models, tensors) are not hashed.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st
import torch
from torch import nn

from allconv.data import Splits
from allconv.data import load as load_data
from allconv.preprocess import Preprocess
from vis.sources import Source, checkpoint_source, resize_crop

from . import compute, precompute, scans, zoo
from .lru import BoundedLRU, memo

MB = 1 << 20


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def model(stamp: str) -> Source:
    """The model in eval mode with its preprocessing, classes and input size, by its stamp: one of our checkpoints
    (``sources.stamp``) or an offered torchvision model (``zoo.stamp``)."""
    if zoo.is_label(stamp):
        return zoo.load(stamp)
    return checkpoint_source(stamp.rsplit(":", 2)[0], torch.device("cpu"))


@st.cache_resource(max_entries=1, show_spinner="Resizing the dataset's images for the model...")
def fitted(source: str, split: str, limit: int, size: int, resize: int, _images: torch.Tensor) -> torch.Tensor:
    """The first ``limit`` images of a split at a torchvision model's input (short side ``resize``, center crop
    ``size``), as the Layer view scans them; one such batch at a time (224x224 images are 49x CIFAR's)."""
    return torch.stack([resize_crop(im, resize, size) for im in _images[:limit]])


@st.cache_resource(max_entries=2, show_spinner="Loading dataset...")
def dataset(source: str) -> Splits:
    """The dataset at ``source`` ("" = CIFAR-10 wherever ``allconv.data`` finds it)."""
    return load_data(source or None)


@memo(256, 1 * MB)
def top5(stamp: str, image_key: str, _model: nn.Module, _x: torch.Tensor,
         classes: list[str]) -> list[tuple[str, float]]:
    return compute.top5(_model, _x, classes)


@memo(64, 1 * MB)
def num_filters(stamp: str, layer: str, _model: nn.Module, size: int = 32) -> int:
    return compute.num_filters(_model, layer, size)


@memo(16, 1 * MB)
def layers(stamp: str, _net: Source) -> list[str]:
    return compute.layers(_net)


@memo(128, 64 * MB, spinner="Reconstructing the layer's filters...")
def grid_png(stamp: str, image_key: str, layer: str, method: str, _model: nn.Module, _x: torch.Tensor,
             classes: tuple[str, ...] = (), filters: range | None = None) -> bytes:
    return compute.png(compute.reconstruction_grid(_model, _x, layer, method, classes, filters))


@memo(256, 32 * MB)
def detail(stamp: str, image_key: str, layer: str, channel: int, _model: nn.Module, _x: torch.Tensor,
           _image: torch.Tensor) -> compute.Detail:
    return compute.filter_detail(_model, _x, _image, layer, channel)


@memo(64, 16 * MB)
def weights_png(stamp: str, layer: str, channel: int, _model: nn.Module) -> tuple[bytes, str]:
    img, caption = compute.weights_image(_model, layer, channel)
    return compute.png(img), caption


_SCANS = BoundedLRU(16, 64 * MB)  # scans in memory (their arrays only: tiles are drawn on copies)


def scan(stamp: str, source: str, split: str, layer: str, limit: int, model: nn.Module, images: torch.Tensor,
         pre: Preprocess, progress: Callable[[int, int], None] | None = None) -> scans.Scan:
    """The Figure 2 scan, shared by every session (memory, then disk, then computed while ``progress`` reports).

    Not memoized by ``memo``: the progress bar is drawn inside the computation, and a hit must not draw it."""
    key = (stamp, source, split, layer, limit)
    hit, s = _SCANS.get(key)
    if hit:
        return s
    job = precompute.running(stamp, source, split, layer, limit)
    if job is not None:  # the background pass is scanning this layer: wait for it rather than scan twice, unless starved
        job.wait(progress)
    s = scans.load_or_compute(scans.disk_keys(stamp, split, [layer], images)[layer], model, images, pre, progress)
    _SCANS.put(key, s)
    return s


@memo(64, 64 * MB, spinner="Reconstructing the top patches...")
def figure_png(stamp: str, source: str, split: str, layer: str, limit: int, methods: tuple[str, ...],
               filters: tuple[int, ...],
               _model: nn.Module, _images: torch.Tensor, _pre: Preprocess, _scan: scans.Scan,
               classes: tuple[str, ...] = (), _labels: torch.Tensor | None = None) -> tuple[bytes, list[dict]]:
    """The figure's PNG and where its panels lie in it (``vis.layout.compose``'s ``info["panels"]``)."""
    img = scans.render(_model, _images, _pre, _scan, list(methods), list(filters), classes, _labels)
    return compute.png(img), img.info["panels"]


@memo(256, 1 * MB)
def predicted(stamp: str, image_key: str, _model: nn.Module, _x: torch.Tensor) -> int:
    return compute.predicted(_model, _x)


@memo(32, 32 * MB, spinner="Randomizing the net layer by layer...")
def sanity(stamp: str, image_key: str, layer: str | None, channel: int, _model: nn.Module,
           _x: torch.Tensor) -> tuple[list[str], dict[str, list[float]], bytes]:
    r = compute.sanity(_model, _x, layer, channel)
    return r.stages, r.similarity, compute.png(r.maps)
