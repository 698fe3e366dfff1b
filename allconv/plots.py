"""Training curves and the Table 3 bar chart as PNG (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    from .checkpoint import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(Path(path), buf.getvalue())


def training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch (train, val, test where measured)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    for key in ("train_acc", "val_acc", "test_acc"):
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=key.replace("_", " "))
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle(title)
    save_png(fig, path)


def table3_chart(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Bars of our test error beside the paper's, one pair per net."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    names = [r["model"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["paper_err"] for r in rows], 0.4, label="paper (Table 3)")
    ax.bar([x + 0.2 for x in xs], [r["err"] if r["err"] is not None else 0 for r in rows], 0.4, label="allconv")
    for x, r in zip(xs, rows):
        if r["err"] is None:
            ax.text(x + 0.2, 0.3, "not trained", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("CIFAR-10 test error (%)"), ax.legend(), ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)
