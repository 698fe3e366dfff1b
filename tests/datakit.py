"""A tiny .npz dataset for the data tests (8x8 images, 3 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def toy_npz(path: Path, n: int = 12) -> Path:
    """``n`` random train images and 4 test images, labels cycling through 3 classes, written to ``path``."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), y_train=np.arange(n) % 3,
             x_test=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), y_test=np.arange(4) % 3)
    return path
