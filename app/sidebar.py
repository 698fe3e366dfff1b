"""The sidebar: checkpoint, dataset, image, layer, filter and method. Each widget is bound to a URL query parameter
(``bind="query-params"``, named by its key), so any view can be shared as a link, e.g.
``?checkpoint=runs/x&layer=conv6&filter=12&image=5&method=guided&view=Image``. Widgets whose options depend on the
checkpoint or data are clamped before they render.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch
from torch import nn

import vis
from allconv.data import Splits
from allconv.errors import AllconvError
from vis.sources import Source

from . import allow, cache, sources, zoo
from .config import MAX_UPLOAD_MB, data_source

Q = "query-params"
UPLOAD_PARAM = "upload"
UPLOAD_LINK_NOTE = ("this link was shared while an uploaded image was shown; uploads do not travel with links, so "
                    "this is the dataset image the link names")


@dataclass
class Selection:
    """Everything the views need; ``None`` where an input is missing or broken (its error is in ``errors``, shown
    once at the top of the page)."""

    stamp: str = ""
    net: Source | None = None  # the model with its preprocessing, classes and input size
    source: str = ""
    data: Splits | None = None
    split: str = "test"
    picked: sources.Picked | None = None
    layer: str = ""
    channel: int = 0
    method: str = "guided"
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not errors: e.g. how to get a first checkpoint

    @property
    def model(self) -> nn.Module | None:
        """The net's model (None until a checkpoint loads)."""
        return self.net.model if self.net is not None else None


def _clamp(key: str, options: list, default: object) -> None:
    """Reset a widget's stored value that its new options no longer hold (e.g. filter 150 after picking conv9)."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = default


def checkpoint_input(sel: Selection) -> None:
    """Pick a checkpoint or an offered torchvision model (or type a path) and load it through the shared cache."""
    choices = sources.checkpoint_choices()
    default = sources.default_choice(choices)
    options = list(choices) + list(zoo.offered())
    asked = st.query_params.get("checkpoint")
    if asked is not None and asked not in options and "checkpoint" not in st.session_state:
        sel.errors.append(allow.NO_CHECKPOINT)  # a link naming something else: the widget falls back to the default
    text = st.sidebar.selectbox("Checkpoint", options, index=options.index(default) if default else None,
                                key="checkpoint", bind=Q, placeholder="no checkpoint found",
                                help="shipped nets, $ALLCONV_CHECKPOINT_DIR, local runs, and the torchvision models "
                                     "the server offers")
    typed = st.sidebar.text_input("...or a checkpoint path", key="checkpoint_path", bind=Q,
                                  placeholder="path to a .safetensors file or run directory").strip()
    text = typed or text
    if not text:
        sel.notes.append(sources.TRAIN_HINT)
        return
    try:
        sel.stamp = zoo.stamp(text) if zoo.is_label(text) else sources.stamp(sources.resolve(text, choices))
        sel.net = cache.model(sel.stamp)
        sel.notes += sel.net.notes
    except AllconvError as e:
        sel.stamp = ""
        sel.errors.append(str(e))


def data_input(sel: Selection) -> None:
    """The dataset to browse and its split. Default: ``$ALLCONV_DATA`` (shown by name only: its path stays on the
    server), else the named dataset the net was trained on (CIFAR-100 for a CIFAR-100 net), else CIFAR-10."""
    server = data_source()
    own = sel.net.data if sel.net is not None and sel.net.data != "cifar10" else None
    default = server or own or ""
    hint = f"the server's dataset ({_name(server)})" if server else f"the net's dataset ({own})" if own else "CIFAR-10"
    typed = st.sidebar.text_input("Dataset", key="data", bind=Q, placeholder=hint,
                                  help="empty = the server's dataset, else the net's own (CIFAR-100 for a CIFAR-100 "
                                       "net); or cifar10, cifar100, or an .npz file, image folder or archive under a "
                                       "data folder the server offers").strip()
    sel.source = typed or default
    sel.split = st.sidebar.segmented_control("Split", ["test", "train"], default="test", key="split", bind=Q,
                                             required=True) or "test"
    try:
        sel.data = cache.dataset(allow.open_dataset(sel.source))
    except AllconvError as e:
        sel.errors.append(f"dataset: {e}")


def _name(source: str) -> str:
    """A dataset source as a visitor may see it: a name, or a path's last part."""
    return Path(source).name or source


def image_input(sel: Selection) -> None:
    """An uploaded image if there is one (and it reads), else the chosen dataset image (by class and index)."""
    upload = st.sidebar.file_uploader(f"Upload an image (max {MAX_UPLOAD_MB} MB)", key="upload",
                                      help="any image file (PNG, JPEG, BMP, WebP, GIF): center-cropped, transparency "
                                           "on grey, 16-bit scaled, resized to the model's input (32x32 for our nets); "
                                           "the caption says what was done")
    uploaded, problem = None, None
    if upload is not None:
        try:
            uploaded = sources.from_upload(upload.name, upload.getvalue(), sel.net)
        except AllconvError as e:
            problem = str(e)
    _mark_upload(sel, uploaded)
    if sel.data is not None:
        _dataset_image(sel, sel.data)
    if problem is not None:
        sel.errors.append(f"{problem} (showing the dataset image instead)" if sel.picked else problem)
    sel.picked = uploaded or sel.picked


def _mark_upload(sel: Selection, uploaded: sources.Picked | None) -> None:
    """Say in the URL that an upload is shown (``upload=<digest>``): a link cannot carry the picture, so whoever opens
    it is told they see the dataset image instead of what the sender saw."""
    if uploaded is not None:
        st.sidebar.caption("Showing the upload: remove it to browse the dataset again.")
        st.query_params[UPLOAD_PARAM] = uploaded.key.split(":", 1)[1]
    elif UPLOAD_PARAM in st.query_params:
        del st.query_params[UPLOAD_PARAM]
        if not st.session_state.get("upload_seen"):
            sel.notes.append(UPLOAD_LINK_NOTE)
    st.session_state["upload_seen"] = True


def _dataset_image(sel: Selection, data: Splits) -> None:
    classes = ["all", *data.classes]
    _clamp("cls", classes, "all")
    cls = st.sidebar.selectbox("Class", classes, key="cls", bind=Q) or "all"
    count = len(sources.class_indices(data, sel.split, cls))
    if count == 0:
        sel.errors.append(f"the {sel.split} split has no images of class {cls!r}")
        return
    idx = st.sidebar.number_input(f"Index (0-{count - 1})", 0, count - 1, key="image", bind=Q, step=1)
    sel.picked = sources.fit(sources.from_dataset(data, sel.source, sel.split, cls, int(idx)), sel.net)


def layer_inputs(sel: Selection) -> None:
    """Layer (in forward order), filter index and the grid's method."""
    assert sel.model is not None and sel.net is not None
    layers = cache.layers(sel.stamp, sel.net)
    _clamp("layer", layers, layers[0])
    sel.layer = st.sidebar.selectbox("Layer", layers, key="layer", bind=Q)
    n = cache.num_filters(sel.stamp, sel.layer, sel.model, sel.net.size)
    _clamp("filter", list(range(n)), 0)
    sel.channel = int(st.sidebar.select_slider("Filter", options=list(range(n)), key="filter", bind=Q,
                                               help="pick a filter to see it large; grids label every filter"))
    sel.method = st.sidebar.segmented_control("Method", list(vis.METHODS), default="guided", key="method", bind=Q,
                                              required=True) or "guided"


def render() -> Selection:
    """Draw the sidebar and return the selection."""
    sel = Selection()
    st.sidebar.header("allconv")
    checkpoint_input(sel)
    data_input(sel)
    image_input(sel)
    if sel.model is not None:
        layer_inputs(sel)
    return sel


def model_input(sel: Selection) -> torch.Tensor | None:
    """The picked image preprocessed for the model, or None (error recorded)."""
    if sel.picked is None or sel.net is None:
        return None
    from .compute import model_input as prep

    try:
        return prep(sel.picked.image, sel.net.preprocess)
    except AllconvError as e:
        sel.errors.append(str(e))
        return None
