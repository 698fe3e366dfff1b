"""The allconv app: ``allconv-app`` or ``streamlit run app/main.py``. A Streamlit script: it reruns top to bottom on
every interaction; all heavy work is cached (see ``app.cache``), so a rerun mostly re-sends cached PNGs."""

from __future__ import annotations

import streamlit as st

from app import sidebar
from app.config import VIEWS
from app.views import filters, image, layer, models, sanity

st.set_page_config(page_title="allconv: guided backprop explorer", page_icon=":mag:", layout="wide")

view = st.segmented_control("View", VIEWS, default="Image", key="view", bind="query-params", required=True,
                            label_visibility="collapsed") or "Image"
alerts = st.container()
sel = sidebar.render()
x = sidebar.model_input(sel)

if view == "Models":
    models.render(sel)
elif sel.model is None:
    st.info("Pick a checkpoint in the sidebar to explore a trained net.")
elif view == "Image":
    image.render(sel, x)
elif view == "Layer":
    layer.render(sel)
elif view == "Filters":
    filters.render(sel)
else:
    sanity.render(sel, x)

with alerts:
    for message in dict.fromkeys(sel.notes):
        st.warning(message)
    for message in dict.fromkeys(sel.errors):
        st.error(message)
