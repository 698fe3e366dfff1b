"""Image view: the image, its top-5 classes, every filter's reconstruction at the chosen layer, and one filter large
(three methods side by side, its activation map, and the input patch under its strongest unit's receptive field)."""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st
import torch

import vis

from .. import cache, compute, tiles
from ..sidebar import Selection


def render(sel: Selection, x: torch.Tensor | None) -> None:
    if sel.picked is None or x is None:
        st.info("Pick a dataset image or upload one in the sidebar.")
        return
    assert sel.model is not None and sel.net is not None
    left, right = st.columns([1, 2])
    with left:
        st.image(compute.png(compute.uint8_image(sel.picked.image)), caption=sel.picked.caption, output_format="PNG")
    with right:
        st.subheader("Top-5 classes")
        rows = cache.top5(sel.stamp, sel.picked.key, sel.model, x, list(sel.net.classes))
        df = pd.DataFrame(rows, columns=["class", "probability"])
        st.dataframe(df, hide_index=True, column_config={
            "probability": st.column_config.ProgressColumn("probability", format="%.3f", min_value=0, max_value=1)})
    _grid(sel, x)
    _detail(sel, x)


def _grid(sel: Selection, x: torch.Tensor) -> None:
    """The layer's reconstruction grid as one PNG (every filter; on a large input the page of filters that holds the
    selected one); clicking a tile picks that filter (a fresh chart per pick, so clicking the same tile again after
    moving the slider still counts)."""
    assert sel.picked is not None and sel.net is not None
    n = cache.num_filters(sel.stamp, sel.layer, sel.model, sel.net.size)
    shown = compute.grid_filters(n, sel.channel, sel.net.size)
    which = "every filter" if len(shown) == n else f"filters {shown.start}-{shown.stop - 1} of {n}"
    st.subheader(f"{sel.layer}: {which} ({sel.method})")
    png = cache.grid_png(sel.stamp, sel.picked.key, sel.layer, sel.method, sel.model, x, tuple(sel.net.classes),
                         shown)
    key = f"grid-{sel.layer}-{sel.channel}"
    spec = tiles.spec(png, len(shown), compute.grid_columns(len(shown)), sel.channel - shown.start)
    st.vega_lite_chart(spec=spec, key=key, width="content", theme=None, on_select=partial(_pick, key, shown.start),
                       selection_mode=tiles.PARAM)
    more = "" if len(shown) == n else f"; move the Filter slider past {shown.stop - 1} for the next page"
    st.caption(f"{sel.layer}, {sel.method}: each filter's reconstruction at its strongest position; click a tile "
               f"to see that filter large{more}")


def _pick(key: str, first: int) -> None:
    """Chart callback: the clicked tile (``first`` is the grid's first filter) becomes the Filter slider's value
    (before the rerun draws it)."""
    tile = tiles.picked(st.session_state.get(key))
    if tile is not None:
        st.session_state["filter"] = first + tile


def _detail(sel: Selection, x: torch.Tensor) -> None:
    assert sel.picked is not None
    d = cache.detail(sel.stamp, sel.picked.key, sel.layer, sel.channel, sel.model, x, sel.picked.image)
    st.subheader(f"{sel.layer} filter {sel.channel}")
    cols = st.columns(len(vis.METHODS) + 2)
    for col, m in zip(cols, vis.METHODS):
        col.image(compute.png(d.recons[m]), caption=f"{m} (its receptive field)", output_format="PNG")
    h, w = d.map_size
    cols[-2].image(compute.png(d.activation), caption=f"activation {h}x{w}, max {d.value:.3g} at {d.position}",
                   output_format="PNG")
    t, l, b, r = d.box
    cols[-1].image(compute.png(d.patch), caption=f"receptive field rows {t}-{b - 1}, cols {l}-{r - 1}",
                   output_format="PNG")
