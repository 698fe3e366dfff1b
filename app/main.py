"""The allconv app: ``allconv-app`` or ``streamlit run app/main.py``. A Streamlit script: it reruns top to bottom on
every interaction; all heavy work is cached (see ``app.cache``), so a rerun mostly re-sends cached PNGs.

Messages reach the page through ``allow.scrub`` (no server paths), and an unexpected error in a view is one neutral
line on the page with its traceback in the server's log, never a traceback box in a visitor's browser."""

from __future__ import annotations

import logging

import streamlit as st

from app import allow, memory, sidebar
from app.config import VIEWS
from app.views import filters, image, layer, models, sanity

st.set_page_config(page_title="allconv: guided backprop explorer", page_icon=":mag:", layout="wide")
memory.map_large_blocks()  # before the first big tensor: scans and grids then give their memory back as they free it

view = st.segmented_control("View", VIEWS, default="Image", key="view", bind="query-params", required=True,
                            label_visibility="collapsed") or "Image"
alerts = st.container()
try:
    sel = sidebar.render()
    layer.warm(sel)
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
except Exception as e:  # noqa: BLE001 - st.stop/st.rerun are BaseExceptions and pass through
    logging.getLogger("allconv.app").exception("view %s failed", view)
    sel = sidebar.Selection(errors=[f"this view failed ({type(e).__name__}); the server's log has the details. "
                                    "Try another selection, or report it with the page's URL."])

with alerts:
    for message in dict.fromkeys(sel.notes):
        st.warning(allow.scrub(message))
    for message in dict.fromkeys(sel.errors):
        st.error(allow.scrub(message))

memory.freeze_libraries()  # what a newly imported library made: out of the full collection Streamlit runs after each run
memory.trim()  # the rerun's temporaries go back to the system, not to a thread's arena
