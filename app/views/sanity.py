"""Sanity view: vis's model-randomization check (Adebayo et al. 2018) for the chosen image, layer and filter: how
much each method's map changes as the net's weights are re-randomized from the top down."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from .. import cache
from ..sidebar import Selection


def render(sel: Selection, x: torch.Tensor | None) -> None:
    if sel.picked is None or x is None:
        st.info("Pick a dataset image or upload one in the sidebar.")
        return
    st.subheader(f"Model randomization check: {sel.layer} filter {sel.channel}")
    stages, similarity, png = cache.sanity(sel.stamp, sel.picked.key, sel.layer, sel.channel, sel.model, x)
    df = pd.DataFrame(similarity, index=pd.Index(stages, name="randomized"))
    st.line_chart(df.reset_index(drop=True), x_label="stage: 0 = trained, k = top k convs re-randomized",
                  y_label="Spearman vs trained map")
    st.dataframe(df.round(3))
    st.image(png, caption="maps per method (rows) as more layers are re-randomized (columns)",
             output_format="PNG")
    st.caption("A method that explains the model should change when the weights do: guided backprop and deconvnet "
               "are known to stay similar (they partly reconstruct the image), plain backprop changes.")
