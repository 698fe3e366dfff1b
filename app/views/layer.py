"""Layer view: the paper's Figure 2 for the chosen layer -- each filter's top-k dataset patches and their
reconstructions -- from a scan of the dataset split (computed once with a progress bar, then cached on disk)."""

from __future__ import annotations

import streamlit as st

import vis
from allconv.errors import AllconvError

from .. import cache, config
from ..sidebar import Selection

PER_PAGE = 8  # filters per figure


def render(sel: Selection) -> None:
    if sel.data is None:
        st.info("Figure 2 needs a dataset to scan: set one in the sidebar or with ALLCONV_DATA.")
        return
    assert sel.model is not None and sel.meta is not None
    try:
        limit = config.scan_limit()
    except AllconvError as e:
        sel.errors.append(str(e))
        return
    images = (sel.data.x_test if sel.split == "test" else sel.data.x_train)[:limit]
    n = cache.num_filters(sel.stamp, sel.layer, sel.model)
    filters = tuple(range(sel.channel, min(n, sel.channel + PER_PAGE)))
    st.subheader(f"{sel.layer}: top {config.SCAN_TOP_K} {sel.split} patches of filters {filters[0]}-{filters[-1]}")
    bar = st.progress(0.0, text=f"Scanning {len(images)} {sel.split} images through {sel.layer} (first time only)...")
    update = lambda done, total: bar.progress(done / total, text=f"Scanned {done}/{total} images")  # noqa: E731
    try:
        s = cache.scan(sel.stamp, sel.source, sel.split, sel.layer, len(images), sel.model, images,
                       sel.meta.preprocess, update)
        labels = (sel.data.y_test if sel.split == "test" else sel.data.y_train)[:limit]
        png = cache.figure_png(sel.stamp, sel.source, sel.split, sel.layer, len(images), vis.METHODS, filters,
                               sel.model, images, sel.meta.preprocess, s, tuple(sel.meta.classes), labels)
    except AllconvError as e:
        bar.empty()
        sel.errors.append(str(e))
        return
    bar.empty()
    st.image(png, caption=f"Figure 2 for {sel.layer} ({', '.join(vis.METHODS)}): rows are filters, columns the {s.top_k} "
             f"strongest of {s.num_images} {sel.split} images; receptive field {s.rf_size}x{s.rf_size} px",
             output_format="PNG")
    st.caption("Move the Filter slider to page through filters; the figure shows it and the next "
               f"{PER_PAGE - 1}. Scan size: ALLCONV_SCAN_LIMIT={len(images)}.")
