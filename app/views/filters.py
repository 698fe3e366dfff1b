"""Filters view: the chosen layer's weights (RGB tiles for the first layer, per-input kernels deeper)."""

from __future__ import annotations

import streamlit as st

from allconv.errors import AllconvError

from .. import cache
from ..sidebar import Selection


def render(sel: Selection) -> None:
    st.subheader(f"Weights of {sel.layer}")
    try:
        png, caption = cache.weights_png(sel.stamp, sel.layer, sel.channel, sel.model)
    except AllconvError as e:
        st.info(f"{e}")
        return
    st.image(png, caption=caption, output_format="PNG")
