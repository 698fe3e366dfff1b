"""Theoretical receptive fields, computed from the net itself (not hard-coded).

Walks the model's leaf modules in registration order -- forward order for chain nets like our 12 nets and VGG -- up to
and including ``layer``, composing each Conv2d / MaxPool2d / AvgPool2d (kernel, stride, padding, dilation):
``size += (k_eff - 1) * jump``, ``start -= padding * jump``, ``jump *= stride``. Global (adaptive) pooling widens the
field to the whole map. Only chain nets are handled: a net with parallel branches (ResNet's downsample path) is
walked as if chained, which counts the branch's stride too (ResNet-18's layer2 comes out at stride 16, not 8), so
its figures are wrong there; ``allconv-visualize`` therefore scans only our nets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from allconv.errors import AllconvError

from .maps import resolve_layer

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class RF:
    """Receptive field of one unit of a layer, per axis (rows, cols).

    ``size``: side in input pixels; ``stride``: the jump in input pixels between neighbouring units; ``start``: the
    first input row/col seen by unit (0, 0) (negative = it reaches into the padding).
    """

    size_hw: tuple[int, int]
    stride_hw: tuple[int, int]
    start_hw: tuple[int, int]
    input_size: tuple[int, int]
    position: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.size_hw[0]

    @property
    def stride(self) -> int:
        return self.stride_hw[0]

    @property
    def start(self) -> int:
        return self.start_hw[0]

    def box(self, h: int | None = None, w: int | None = None) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels of unit (h, w) (default: ``position``), bottom/right exclusive,
        clipped to the image."""
        if h is None or w is None:
            if self.position is None:
                raise AllconvError("box() needs a unit (h, w), or a receptive_field(..., position=(h, w))")
            h, w = self.position
        top = self.start_hw[0] + h * self.stride_hw[0]
        left = self.start_hw[1] + w * self.stride_hw[1]
        height, width = self.input_size
        return (max(0, top), max(0, left), min(height, top + self.size_hw[0]), min(width, left + self.size_hw[1]))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _geometry(m: nn.Module, n: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a spatial module, per axis; adaptive pools are approximated."""
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        o = tuple(n[i] if s is None else s for i, s in enumerate(_pair(m.output_size)))  # type: ignore[arg-type]
        k = tuple(math.ceil(n[i] / o[i]) for i in range(2))
        s = tuple(max(1, n[i] // o[i]) for i in range(2))
        return k, s, (0, 0), (1, 1)
    dilation = _pair(getattr(m, "dilation", 1))
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)  # type: ignore[union-attr]
    return _pair(m.kernel_size), stride, _pair(m.padding), dilation  # type: ignore[union-attr]


def receptive_field(model: nn.Module, layer: str | None, position: tuple[int, int] | None = None,
                    input_size: tuple[int, int] = (32, 32)) -> RF:
    """The receptive field of ``layer``'s units (``None`` = the model's output) for ``input_size`` images."""
    target = model if layer is None else resolve_layer(model, layer)
    inside = {id(m) for m in target.modules()}
    size, jump, start, n = [1, 1], [1, 1], [0, 0], list(input_size)
    seen = False
    for m in model.modules():
        if id(m) in inside:
            seen = True
        elif seen:
            break  # past the layer
        if not isinstance(m, _SPATIAL):
            continue
        k, s, p, d = _geometry(m, (n[0], n[1]))
        ceil = getattr(m, "ceil_mode", False)
        for i in range(2):
            k_eff = d[i] * (k[i] - 1) + 1
            size[i] += (k_eff - 1) * jump[i]
            start[i] -= p[i] * jump[i]
            jump[i] *= s[i]
            span = n[i] + 2 * p[i] - k_eff
            n[i] = (math.ceil(span / s[i]) if ceil else span // s[i]) + 1
    return RF(tuple(size), tuple(jump), tuple(start), tuple(input_size), position)  # type: ignore[arg-type]
