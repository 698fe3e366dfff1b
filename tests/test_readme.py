"""The README's Python examples run as written (each ```python block, in a folder holding what they name)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    Image.new("RGB", (200, 150), (200, 120, 40)).save(tmp_path / "cat.jpg")
    names: dict[str, object] = {"images_uint8": np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), names)  # noqa: S102 - our own README
    if "sig" in names:
        assert tuple(names["sig"].shape) == (2, 3, 3, 32, 32)  # type: ignore[attr-defined]
        assert tuple(names["img"].shape) == (3, 32, 32) and "center-cropped" in str(names["how"])
    if "sg" in names:
        assert (tmp_path / "smoothgrad_guided.png").stat().st_size > 0
