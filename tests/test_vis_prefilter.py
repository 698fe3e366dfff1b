"""vis.prefilter: the bf16 scan with fp32 rescoring gives the fp32 scan's picks, values and positions exactly -- on
the full CIFAR-10 test split for the shipped All-CNN-C and a random-init one, and when the calibrated tolerance is
far too small (the check on the candidates must widen it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from allconv.checkpoint import load
from allconv.models import create
from vis import prefilter
from vis.scan import scan_layers

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "all-cnn-c.safetensors"


def _same(a: dict, b: dict) -> None:
    for layer in a:
        for key in ("image_index", "positions", "values", "boxes"):
            assert np.array_equal(getattr(a[layer], key), getattr(b[layer], key)), (layer, key)


@pytest.fixture(scope="module")
def test_split(cifar10_test_arrays: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(cifar10_test_arrays[0]).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("which", ["shipped", "random"])
def test_bf16_scan_equals_fp32_on_the_full_test_split(test_split: torch.Tensor, which: str) -> None:
    net, meta = load(SHIPPED)
    if which == "random":
        torch.manual_seed(0)
        net = create("all-cnn-c").eval()
    kw = dict(layers=["conv6", "conv9"], top_k=10, progress=False)
    _same(scan_layers(net, test_split, meta.preprocess, amp="off", **kw),
          scan_layers(net, test_split, meta.preprocess, amp="on", **kw))


def test_an_underestimated_tolerance_is_widened(test_split: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    net, meta = load(SHIPPED)
    x, pre = test_split[:1000], meta.preprocess
    kw = dict(layers=["conv6"], top_k=5, batch_size=250, progress=False)
    want = scan_layers(net, x, pre, amp="off", **kw)
    rounds: list[int] = []
    real = prefilter._maxima
    monkeypatch.setattr(prefilter, "_maxima", lambda *a, **k: (rounds.append(len(a[1])), real(*a, **k))[1])
    monkeypatch.setattr(prefilter, "SAFETY", 1e-3)  # calibration says bf16 is all but exact: it is not
    monkeypatch.setattr(prefilter, "ULP", 0.0)
    _same(want, scan_layers(net, x, pre, amp="on", **kw))
    assert len(rounds) >= 4  # calibration, the bf16 pass, and at least two rescoring rounds
