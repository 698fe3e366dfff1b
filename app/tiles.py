"""A clickable tile grid: the composed grid PNG drawn by Vega-Lite under one transparent rectangle per tile, so a click
on a tile selects its filter (``st.vega_lite_chart(..., on_select=...)``), or, in Figure 2, the pick under it (every
panel's tile i is pick i). Pure functions, no Streamlit.

The picture stays one PNG (sent as a data URL); the rectangles are computed from its size and the grid's shape, so
they fit any tile size or label band that ``vis.render.grid`` draws.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from PIL import Image

MAX_WIDTH = 900  # px: about the main column's width in the wide layout on a laptop screen
PARAM = "pick"  # the Vega-Lite selection parameter's name
HIGHLIGHT = "#ff4b4b"  # Streamlit's primary red: the selected tile's frame


def cells(n: int, cols: int, width: int, height: int, pad: int = 1) -> list[dict[str, float]]:
    """Pixel boxes (x0, y0, x1, y1, in the PNG) of an n-tile grid of ``cols`` columns with ``pad`` px gaps."""
    rows = math.ceil(n / cols)
    cw, ch = (width - pad) / cols, (height - pad) / rows
    return [{"filter": i, "x0": (i % cols) * cw + pad, "y0": (i // cols) * ch + pad,
             "x1": (i % cols + 1) * cw, "y1": (i // cols + 1) * ch} for i in range(n)]


def panel_cells(panel: dict[str, int], n: int, cols: int, labels: list[str]) -> list[dict[str, Any]]:
    """``cells`` of a grid placed in a bigger picture at ``panel`` (x, y, width, height: ``vis.layout.compose``'s
    ``info["panels"]``), each with its tooltip ``label``; tile i keeps id ``filter`` = i in every panel."""
    out = cells(n, cols, panel["width"], panel["height"])
    for c, label in zip(out, labels):
        c.update(label=label, x0=c["x0"] + panel["x"], x1=c["x1"] + panel["x"], y0=c["y0"] + panel["y"],
                 y1=c["y1"] + panel["y"])
    return out


def spec(png: bytes, n: int, cols: int, selected: int | None, max_width: int = MAX_WIDTH,
         boxes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Vega-Lite spec: the PNG at most ``max_width`` px wide, a pointer and tooltip per tile, a frame on
    ``selected``. ``boxes`` replaces the n-tile grid filling the PNG (e.g. ``panel_cells`` of several panels; a box's
    ``label`` is its tooltip)."""
    with Image.open(io.BytesIO(png)) as img:
        w, h = img.size
    cw = min(w, max_width)
    ch = round(h * cw / w)
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    picture = {"data": {"values": [{"url": url}]},
               "mark": {"type": "image", "width": cw, "height": ch, "align": "left", "baseline": "top",
                        "aspect": False, "smooth": cw < w},  # crisp pixels, unless shrunk
               "encoding": {"url": {"field": "url", "type": "nominal"}, "x": {"value": 0}, "y": {"value": 0}}}
    values = cells(n, cols, w, h) if boxes is None else boxes
    tip = ({"field": "label", "type": "nominal", "title": "click to open"} if values and "label" in values[0] else
           {"field": "filter", "type": "ordinal", "title": "filter (click to pick)"})
    rects = {"data": {"values": values},
             "params": [{"name": PARAM, "select": {"type": "point", "fields": ["filter"], "on": "click",
                                                   "clear": False, "toggle": False}}],
             "mark": {"type": "rect", "cursor": "pointer", "fill": "white", "strokeWidth": 3},
             "encoding": {
                 "x": {"field": "x0", "type": "quantitative", **_axis(w)}, "x2": {"field": "x1"},
                 "y": {"field": "y0", "type": "quantitative", **_axis(h, reverse=True)}, "y2": {"field": "y1"},
                 "fillOpacity": {"value": 0.01},  # invisible, but still hit by the pointer
                 "stroke": {"condition": {"test": f"datum.filter == {-1 if selected is None else int(selected)}",
                                          "value": HIGHLIGHT}, "value": None},
                 "tooltip": [tip]}}
    return {"width": cw, "height": ch, "padding": 0, "autosize": {"type": "none"},
            "config": {"view": {"stroke": None}}, "layer": [picture, rects]}


def _axis(size: int, reverse: bool = False) -> dict[str, Any]:
    """A hidden axis mapping the PNG's pixels 0..size onto the chart (y reversed: PNG rows go down)."""
    return {"scale": {"domain": [0, size], "nice": False, "zero": False, "reverse": reverse}, "axis": None}


def picked(state: Any) -> int | None:
    """The filter a chart selection state names (``st.session_state[key]``), or None."""
    try:
        points = state["selection"][PARAM]
        return int(points[0]["filter"]) if points else None
    except (KeyError, TypeError, IndexError, ValueError):
        return None
