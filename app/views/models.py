"""Models view: our Table 3 beside the paper's, and the training curves of the available checkpoints."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from allconv.checkpoint import load_meta
from allconv.errors import AllconvError
from allconv.models import names
from allconv.paper import TABLE3_ERROR

from .. import sources
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
    for label, m, history in metas:
        if not history:
            continue
        h = pd.DataFrame(history).set_index("epoch")
        st.markdown(f"**{m['model']}** on {m['data']} ({label})")
        acc = [c for c in ("train_acc", "val_acc", "test_acc") if c in h and h[c].notna().any()]
        left, right = st.columns(2)
        if acc:
            left.line_chart(h[acc], x_label="epoch", y_label="accuracy")
        if "train_loss" in h:
            right.line_chart(h[["train_loss"]], x_label="epoch", y_label="train loss")
