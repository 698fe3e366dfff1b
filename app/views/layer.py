"""Layer view: the paper's Figure 2 for the chosen layer -- each filter's top-k dataset patches and their
reconstructions -- from a scan of the dataset split (computed once with a progress bar, then cached on disk). One figure per method, each
beside the patches, so every one is shown at full size with labels that read. A click on any tile opens that pick's
image in the Image view at its filter."""

from __future__ import annotations

from functools import partial

import streamlit as st
import torch

import vis
from allconv.errors import AllconvError

from .. import cache, compute, config, precompute, tiles
from ..sidebar import Selection

PER_PAGE = 8  # filters per figure


def render(sel: Selection) -> None:
    if sel.data is None:
        st.info("Figure 2 needs a dataset to scan: set one in the sidebar or with ALLCONV_DATA.")
        return
    assert sel.model is not None and sel.net is not None
    try:
        limit = config.scan_limit()
    except AllconvError as e:
        sel.errors.append(str(e))
        return
    images = _images(sel, limit)
    n = cache.num_filters(sel.stamp, sel.layer, sel.model, sel.net.size)
    filters = tuple(range(sel.channel, min(n, sel.channel + PER_PAGE)))
    st.subheader(f"{sel.layer}: top {config.SCAN_TOP_K} {sel.split} patches of filters {filters[0]}-{filters[-1]}")
    bar = st.progress(0.0, text=f"Scanning {len(images)} {sel.split} images through {sel.layer} (first time only)...")
    update = lambda done, total: bar.progress(done / total, text=f"Scanned {done}/{total} images")  # noqa: E731
    try:
        s = cache.scan(sel.stamp, sel.source, sel.split, sel.layer, len(images), sel.model, images,
                       sel.net.preprocess, update)
        labels = (sel.data.y_test if sel.split == "test" else sel.data.y_train)[:len(images)]
        bar.empty()
        for m in vis.METHODS:  # one figure per method, each at full size beside the patches
            png, panels = cache.figure_png(sel.stamp, sel.source, sel.split, sel.layer, len(images), (m,), filters,
                                           sel.model, images, sel.net.preprocess, s, tuple(sel.net.classes),
                                           labels)
            _figure(sel, s, png, panels, filters, m)
    except AllconvError as e:
        bar.empty()
        sel.errors.append(str(e))
        return
    st.caption(f"Figure 2 for {sel.layer} ({', '.join(vis.METHODS)}), each beside the patches: rows are filters, "
               f"columns the {s.top_k} strongest of {s.num_images} {sel.split} images; receptive field {s.rf_size}x{s.rf_size} px. Click "
               "a tile to open its image in the Image view at that filter. Move the Filter slider to page through "
               f"filters; the figure shows it and the next {PER_PAGE - 1}. Scan size: {len(images)} images "
               f"(ALLCONV_SCAN_LIMIT; at most {config.LARGE_SCAN_LIMIT} at a torchvision model's input).")


def warm(sel: Selection) -> None:
    """Start the background scans of the selected net's layers over the server's test split (``app.precompute``):
    our 32x32 nets only (a torchvision model's scan is 49x the work per image)."""
    if sel.net is None or sel.net.torchvision or sel.data is None or sel.source != config.data_source():
        return
    try:
        limit = config.scan_limit()
    except AllconvError:
        return  # the Layer view says what is wrong with it
    precompute.start(sel.stamp, sel.source, "test", sel.net, sel.data.x_test[:limit], cache.layers(sel.stamp, sel.net))


def _images(sel: Selection, limit: int) -> torch.Tensor:
    """The split's first ``limit`` images as the net takes them: as stored for our 32x32 nets; resized to a
    torchvision model's input, at most ``config.LARGE_SCAN_LIMIT`` of them (each is 49x a CIFAR image)."""
    assert sel.data is not None and sel.net is not None
    images = sel.data.x_test if sel.split == "test" else sel.data.x_train
    if tuple(images.shape[-2:]) == (sel.net.size, sel.net.size):
        return images[:limit]
    limit = min(limit, config.LARGE_SCAN_LIMIT)
    return cache.fitted(sel.source, sel.split, limit, sel.net.size, sel.net.resize or sel.net.size, images)


def _figure(sel: Selection, s: vis.Scan, png: bytes, panels: list[dict], filters: tuple[int, ...],
            method: str) -> None:
    """The figure as a chart: every panel's tile i is pick i (filter ``filters[i // k]``, its (i % k)-th image)."""
    k = s.top_k
    picks = [(f, int(s.image_index[f, j])) for f in filters for j in range(k)]
    classes = sel.data.classes if sel.data is not None else []
    labels = (sel.data.y_test if sel.split == "test" else sel.data.y_train) if sel.data is not None else None
    rows = compute.tile_labels(sel.model, sel.layer, s.num_filters, list(sel.net.classes)) if sel.net else []
    tips = [f"{sel.layer} #{f}" + (f" {rows[f]}" if rows and rows[f] != str(f) else "") + f": {sel.split} image {i}"
            + (f" ({classes[int(labels[i])]})" if labels is not None and classes else "") for f, i in picks]
    boxes = [box for p in panels for box in tiles.panel_cells(p, len(picks), k, tips)]
    key = f"figure2-{sel.layer}-{filters[0]}-{method}"
    st.vega_lite_chart(spec=tiles.spec(png, len(picks), k, None, tiles.MAX_WIDTH, boxes), key=key, width="content",
                       theme=None, on_select=partial(_open, key, picks), selection_mode=tiles.PARAM)


def _open(key: str, picks: list[tuple[int, int]]) -> None:
    """Chart callback: open the clicked pick's image (the whole split, by index) in the Image view at its filter."""
    i = tiles.picked(st.session_state.get(key))
    if i is not None and 0 <= i < len(picks):
        st.session_state.update(view="Image", cls="all", filter=picks[i][0], image=picks[i][1])
