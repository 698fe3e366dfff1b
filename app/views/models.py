"""Models view: our Table 3 beside the paper's, and the training curves of the available checkpoints."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from allconv.checkpoint import load_meta
from allconv.errors import AllconvError
from allconv.models import names
from allconv.paper import TABLE3_ERROR

from .. import sources, zoo
from ..sidebar import Selection

ROW_PX = 35  # st.dataframe's row height: the table is sized to show all 12 nets without scrolling


@st.cache_data(max_entries=8, show_spinner=False)
def _metas(stamps: tuple[str, ...]) -> list[tuple[str, dict, list[dict]]]:
    """(label, metrics + model, history) for each readable checkpoint; unreadable ones are skipped."""
    out = []
    for stamp in stamps:
        path = Path(stamp.rsplit(":", 2)[0])
        try:
            meta, _ = load_meta(path)
        except AllconvError:
            continue
        out.append((sources.label(path), {"model": meta.model, **meta.metrics, "epochs": meta.epoch,
                                          "data": meta.config.get("data") or "cifar10"}, list(meta.history)))
    return out


def table(metas: list[tuple[str, dict, list[dict]]]) -> pd.DataFrame:
    """One row per paper net: the paper's test error and ours (the best CIFAR-10 checkpoint of that net, if any),
    with the epochs that checkpoint trained (nets trained longer are not like for like)."""
    ours: dict[str, tuple[float, int | None]] = {}
    for _, m, _ in metas:
        if m.get("test_acc") is not None and m.get("data", "cifar10") == "cifar10":
            err = round(100 * (1 - float(m["test_acc"])), 2)
            if m["model"] not in ours or err < ours[m["model"]][0]:
                ours[m["model"]] = (err, m.get("epochs"))
    return pd.DataFrame({"model": names(), "paper error %": [TABLE3_ERROR[n] for n in names()],
                         "our error %": [ours.get(n, (None, None))[0] for n in names()],
                         "our epochs": [ours.get(n, (None, None))[1] for n in names()]})


def render(sel: Selection) -> None:
    stamps = []
    for p in sources.checkpoint_choices().values():
        try:
            stamps.append(sources.stamp(p))
        except AllconvError:
            continue
    metas = _metas(tuple(stamps))
    st.subheader("Table 3: CIFAR-10 test error without augmentation")
    df = table(metas)
    st.dataframe(df, hide_index=True, height=ROW_PX * (len(df) + 1) + 3, placeholder="not measured",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in df.columns[1:3]})
    st.bar_chart(df.set_index("model")[["paper error %", "our error %"]], stack=False, sort=False,
                 y_label="test error %")
    if not any(h for _, _, h in metas):
        st.info(sources.TRAIN_HINT)
        return
    st.subheader("Training curves")
    labels = [label for label, _, history in metas if history]
    current = _label(sel.stamp)
    chosen = st.multiselect("Nets", labels, default=[current] if current in labels else labels[:1], key="curves",
                            help="The checkpoints whose curves to draw; add some to compare them")
    for label, m, history in metas:
        if label in chosen:
            st.markdown(f"**{m['model']}** on {m['data']}, {history[-1].get('epoch', len(history))} epochs ({label})")
    acc, loss = curves(metas, chosen)
    if len(acc):  # full width, one under the other: the legend below each names every line in full
        st.line_chart(acc, x="epoch", y="accuracy", color="curve", x_label="epoch", y_label="accuracy", height=320)
    if len(loss):
        st.line_chart(loss, x="epoch", y="train loss", color="curve", x_label="epoch", y_label="train loss",
                      height=320)


def curves(metas: list[tuple[str, dict, list[dict]]], chosen: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen checkpoints' histories as two long tables, one line per (net, curve): accuracy (train, val, test:
    those recorded) and train loss. One chart each, however many nets: a chart per net was most of this view's time."""
    acc, loss = [], []
    for label, _, history in metas:
        if label not in chosen or not history:
            continue
        h, name = pd.DataFrame(history), short(label)
        for col in ("train_acc", "val_acc", "test_acc", "train_loss"):
            if col in h and h[col].notna().any():
                part = h[["epoch", col]].dropna().rename(columns={col: "value"})
                part["curve"] = f"{name} {col.removesuffix('_acc')}" if col != "train_loss" else name
                (loss if col == "train_loss" else acc).append(part)
    return (_long(acc, "accuracy"), _long(loss, "train loss"))


def short(label: str) -> str:
    """A checkpoint's name in a legend: its label without the ``checkpoints/`` folder and ``.safetensors``."""
    return label.removeprefix("checkpoints/").removesuffix(".safetensors")


def _long(parts: list[pd.DataFrame], name: str) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=["epoch", name, "curve"])
    return pd.concat(parts, ignore_index=True).rename(columns={"value": name})


def _label(stamp: str) -> str | None:
    """The Models view's label of the sidebar's checkpoint (None for a torchvision model or none)."""
    if not stamp or zoo.is_label(stamp):
        return None
    return sources.label(Path(stamp.rsplit(":", 2)[0]))
