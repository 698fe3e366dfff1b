"""Sanity view: vis's model-randomization check (Adebayo et al. 2018) for the chosen image: how much each method's map
changes as the net's weights are re-randomized from the top down. The unit explained is the predicted class score
(as in the paper) or the chosen filter."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from .. import cache
from ..sidebar import Selection

UNITS = ("class", "filter")
UNDEFINED = "undefined: constant map"  # a blank map has no rank order to compare: not "completely changed" (0)


def render(sel: Selection, x: torch.Tensor | None) -> None:
    if sel.picked is None or x is None:
        st.info("Pick a dataset image or upload one in the sidebar.")
        return
    assert sel.net is not None
    cls = cache.predicted(sel.stamp, sel.picked.key, sel.model, x)
    name = sel.net.classes[cls] if cls < len(sel.net.classes) else str(cls)
    titles = {"class": f"predicted class ({name})", "filter": f"{sel.layer} filter {sel.channel}"}
    unit = st.segmented_control("Explain", UNITS, default="class", key="unit", format_func=titles.get,
                                required=True) or "class"
    layer, channel = (None, cls) if unit == "class" else (sel.layer, sel.channel)
    st.subheader(f"Model randomization check: {titles[unit]}")
    stages, similarity, png = cache.sanity(sel.stamp, sel.picked.key, layer, channel, sel.model, x)
    df = pd.DataFrame(similarity, index=pd.Index(stages, name="randomized"))
    st.line_chart(df.reset_index(drop=True), x_label="stage: 0 = trained, k = top k convs re-randomized",
                  y_label="Spearman |map| vs trained")
    st.dataframe(df.style.format("{:.3f}", na_rep=UNDEFINED))
    st.image(png, caption="maps per method (rows) as more layers are re-randomized (columns)", output_format="PNG")
    st.caption("A method that explains the model should change when the weights do: guided backprop and deconvnet "
               "are known to stay similar (they partly reconstruct the image), plain backprop changes. For a filter, "
               "randomizing the layers above it changes nothing by construction. "
               f"\"{UNDEFINED}\" (a gap in the chart): a randomized net's map is blank, so there is no order "
               "to correlate.")
