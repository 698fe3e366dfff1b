"""Streamlit caches: one model per checkpoint file and one dataset per source, shared by every session
(``st.cache_resource``); rendered images per (checkpoint, image, layer, method) as PNG bytes (``st.cache_data``), so a
revisited selection costs no compute and no re-encoding.

Cached functions take the checkpoint's ``stamp`` (path, size, mtime) as their key, so replacing a checkpoint file
reloads it; arguments starting with ``_`` (models, tensors) are not hashed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import streamlit as st
import torch
from torch import nn

from allconv import checkpoint
from allconv.checkpoint import Meta
from allconv.data import Splits
from allconv.data import load as load_data
from allconv.preprocess import Preprocess

from . import compute, scans
from .config import SCAN_TOP_K


@st.cache_resource(max_entries=4, show_spinner="Loading checkpoint...")
def model(stamp: str) -> tuple[nn.Module, Meta]:
    """``(model in eval mode, meta)`` for a checkpoint, by its stamp (see ``sources.stamp``)."""
    path = Path(stamp.rsplit(":", 2)[0])
    return checkpoint.load(path)


@st.cache_resource(max_entries=2, show_spinner="Loading dataset...")
def dataset(source: str) -> Splits:
    """The dataset at ``source`` ("" = CIFAR-10 wherever ``allconv.data`` finds it)."""
    return load_data(source or None)


@st.cache_data(max_entries=256, show_spinner=False)
def top5(stamp: str, image_key: str, _model: nn.Module, _x: torch.Tensor,
         classes: list[str]) -> list[tuple[str, float]]:
    return compute.top5(_model, _x, classes)


@st.cache_data(max_entries=64, show_spinner=False)
def num_filters(stamp: str, layer: str, _model: nn.Module) -> int:
    return compute.num_filters(_model, layer)


@st.cache_data(max_entries=128, show_spinner="Reconstructing every filter of the layer...")
def grid_png(stamp: str, image_key: str, layer: str, method: str, _model: nn.Module, _x: torch.Tensor,
             classes: tuple[str, ...] = ()) -> bytes:
    return compute.png(compute.reconstruction_grid(_model, _x, layer, method, classes))


@st.cache_data(max_entries=256, show_spinner=False)
def detail(stamp: str, image_key: str, layer: str, channel: int, _model: nn.Module, _x: torch.Tensor,
           _image: torch.Tensor) -> compute.Detail:
    return compute.filter_detail(_model, _x, _image, layer, channel)


@st.cache_data(max_entries=64, show_spinner=False)
def weights_png(stamp: str, layer: str, channel: int, _model: nn.Module) -> tuple[bytes, str]:
    img, caption = compute.weights_image(_model, layer, channel)
    return compute.png(img), caption


_SCANS: "OrderedDict[tuple, scans.Scan]" = OrderedDict()
_SCANS_LOCK = threading.Lock()
MAX_SCANS = 16


def scan(stamp: str, source: str, split: str, layer: str, limit: int, model: nn.Module, images: torch.Tensor,
         pre: Preprocess, progress: Callable[[int, int], None] | None = None) -> scans.Scan:
    """The Figure 2 scan, shared by every session (memory, then disk, then computed while ``progress`` reports).

    A plain LRU rather than ``st.cache_resource``: the progress bar is drawn inside the computation, which Streamlit's
    caches refuse to replay."""
    key = (stamp, source, split, layer, limit)
    with _SCANS_LOCK:
        if key in _SCANS:
            _SCANS.move_to_end(key)
            return _SCANS[key]
    disk_key = {"checkpoint": stamp, "data": source, "split": split, "layer": layer, "limit": limit,
                "top_k": SCAN_TOP_K}
    s = scans.load_or_compute(disk_key, model, images, pre, progress)
    with _SCANS_LOCK:
        _SCANS[key] = s
        while len(_SCANS) > MAX_SCANS:
            _SCANS.popitem(last=False)
    return s


@st.cache_data(max_entries=64, show_spinner="Reconstructing the top patches...")
def figure_png(stamp: str, source: str, split: str, layer: str, limit: int, methods: tuple[str, ...],
               filters: tuple[int, ...],
               _model: nn.Module, _images: torch.Tensor, _pre: Preprocess, _scan: scans.Scan,
               classes: tuple[str, ...] = (), _labels: torch.Tensor | None = None) -> tuple[bytes, list[dict]]:
    """The figure's PNG and where its panels lie in it (``vis.layout.compose``'s ``info["panels"]``)."""
    img = scans.render(_model, _images, _pre, _scan, list(methods), list(filters), classes, _labels)
    return compute.png(img), img.info["panels"]


@st.cache_data(max_entries=256, show_spinner=False)
def predicted(stamp: str, image_key: str, _model: nn.Module, _x: torch.Tensor) -> int:
    return compute.predicted(_model, _x)


@st.cache_data(max_entries=32, show_spinner="Randomizing the net layer by layer...")
def sanity(stamp: str, image_key: str, layer: str | None, channel: int, _model: nn.Module,
           _x: torch.Tensor) -> tuple[list[str], dict[str, list[float]], bytes]:
    r = compute.sanity(_model, _x, layer, channel)
    return r.stages, r.similarity, compute.png(r.maps)
