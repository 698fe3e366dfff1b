"""Theoretical receptive fields, computed from the net itself (not hard-coded), for any net of convs and pools.

One forward pass on a blank input of ``input_size`` runs under a torch function mode that carries each tensor's
geometry (per axis: field ``size``, ``jump`` between neighbouring units, ``start`` of unit 0, in input pixels) from
op to op: a conv or pool (kernel, stride, padding, dilation) composes ``size += (k_eff - 1) * jump``,
``start -= padding * jump``, ``jump *= stride``; an adaptive pool is a pool of n / out (global: the whole map) where
out divides n, and has no field where it does not (its windows then differ from unit to unit); any
other op whose output keeps its inputs' spatial size (ReLU, BN, a residual add, a channel concat) takes the union of
their fields. So branches (ResNet's downsample path, DenseNet's concats) are exact, not walked as a chain. An op that
changes the spatial size in another way (interpolation, flatten) has no field: asking for one is an error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from allconv.errors import AllconvError

from .maps import model_scope, resolve_layer


@dataclass(frozen=True)
class RF:
    """Receptive field of one unit of a layer, per axis (rows, cols).

    ``size``: side in input pixels; ``stride``: the jump in input pixels between neighbouring units; ``start``: the
    first input row/col seen by unit (0, 0) (negative = it reaches into the padding). Each is the rows' value, a
    square field's; ``*_hw`` give rows and columns.
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
        if (h is None) != (w is None):
            raise AllconvError(f"box() takes a unit as both h and w, or neither, got h={h}, w={w}")
        if h is None:
            if self.position is None:
                raise AllconvError("box() needs a unit (h, w), or a receptive_field(..., position=(h, w))")
            h, w = self.position
        top = self.start_hw[0] + h * self.stride_hw[0]
        left = self.start_hw[1] + w * self.stride_hw[1]
        height, width = self.input_size
        return (max(0, top), max(0, left), min(height, top + self.size_hw[0]), min(width, left + self.size_hw[1]))


@dataclass
class _Geo:
    """A tensor's field per axis (rows, cols), for the tracer."""

    size: list[int]
    jump: list[int]
    start: list[int]

    def union(self, other: "_Geo") -> "_Geo":
        if self.jump != other.jump:
            raise AllconvError(f"inputs with different strides ({self.jump} and {other.jump}) meet at one op; "
                               "their receptive field is not a box")
        lo = [min(a, b) for a, b in zip(self.start, other.start)]
        hi = [max(a + n, b + m) for a, n, b, m in zip(self.start, self.size, other.start, other.size)]
        return _Geo([h - low for h, low in zip(hi, lo)], list(self.jump), lo)


_POOLS = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp"}  # over (H, W) when a map becomes a vector
_OPAQUE = {"conv_transpose2d", "pad", "roll", "unfold", "fold", "grid_sample", "interpolate", "pixel_shuffle",
           "pixel_unshuffle", "upsample", "upsample_nearest2d", "upsample_bilinear2d", "flip", "rot90", "conv3d",
           "fractional_max_pool2d", "lp_pool2d"}  # spatial ops whose field we do not model: no field, not a guess
_ADAPTIVE = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}


def _window(name: str, args: tuple, kwargs: dict) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) per axis of a conv or pool call, from its arguments."""
    arg = lambda i, key, default: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
    if name == "conv2d":
        kernel = tuple(arg(1, "weight", None).shape[-2:])
        stride, padding, dilation = arg(3, "stride", 1), arg(4, "padding", 0), arg(5, "dilation", 1)
        if isinstance(padding, str):  # "valid" or "same" (torch pads total // 2 on the top/left)
            d = _pair(dilation)
            padding = (0, 0) if padding == "valid" else tuple(d[i] * (kernel[i] - 1) // 2 for i in range(2))
    else:
        kernel = arg(1, "kernel_size", None)
        stride, padding = arg(2, "stride", None) or kernel, arg(3, "padding", 0)
        dilation = arg(4, "dilation", 1) if name.startswith("max") else 1
    return _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)


def _adaptive(args: tuple, kwargs: dict, n: tuple[int, int]) -> tuple[tuple[int, int], ...] | None:
    """An adaptive pool's window where it has one: each output unit pools n / out inputs, out dividing n (None keeps
    the axis). Otherwise its windows differ from unit to unit in size and step: no one field (None), not a guess."""
    raw = args[1] if len(args) > 1 else kwargs["output_size"]
    out = [n[i] if o is None else int(o) for i, o in enumerate((raw, raw) if isinstance(raw, int) else raw)]
    if any(n[i] % out[i] for i in range(2)):
        return None
    k = (n[0] // out[0], n[1] // out[1])
    return k, k, (0, 0), (1, 1)


def _through(name: str, args: tuple, kwargs: dict, geo: _Geo, n: tuple[int, int]) -> _Geo | None:
    """The field after a conv, pool or adaptive pool whose input has field ``geo`` and spatial size ``n``."""
    window = _adaptive(args, kwargs, n) if name in _ADAPTIVE else _window(name, args, kwargs)
    if window is None:
        return None
    k, s, p, d = window
    size, jump, start = list(geo.size), list(geo.jump), list(geo.start)
    for i in range(2):
        size[i] += (d[i] * (k[i] - 1)) * jump[i]
        start[i] -= p[i] * jump[i]
        jump[i] *= s[i]
    return _Geo(size, jump, start)


class _Tracer(TorchFunctionMode):
    """Carries ``_Geo`` from tensor to tensor through every op of one forward pass (4-D tensors only)."""

    def __init__(self) -> None:
        super().__init__()
        self.geo: dict[int, tuple[torch.Tensor, _Geo | None]] = {}  # the tensor is kept so its id stays unique

    def of(self, t: object) -> _Geo | None:
        entry = self.geo.get(id(t)) if torch.is_tensor(t) else None
        return None if entry is None else entry[1]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]) else out
        name = getattr(func, "__name__", "").lstrip("_")
        if torch.is_tensor(first) and first.dim() == 4:
            self.geo[id(first)] = (first, self._geo(name, args, kwargs, first))
        elif torch.is_tensor(first) and first.dim() in (1, 2):
            self.geo[id(first)] = (first, self._collapsed(name, args))
        return out

    def _collapsed(self, name: str, args: tuple) -> _Geo | None:
        """A map turned into a vector: a 1x1 map flattened keeps its field; a spatial mean/max/sum sees it all."""
        x = args[0] if args else None
        g = self.of(x)
        if g is None:
            return None
        n = tuple(x.shape[-2:])
        if n == (1, 1):
            return g
        if name in _REDUCE:
            return _Geo([g.size[i] + (n[i] - 1) * g.jump[i] for i in range(2)], [g.jump[i] * n[i] for i in range(2)],
                        list(g.start))
        return None

    def _geo(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> _Geo | None:
        x = args[0] if args else kwargs.get("input")
        if name in _POOLS | _ADAPTIVE | {"conv2d"}:
            g = self.of(x)
            return None if g is None else _through(name, args, kwargs, g, tuple(x.shape[-2:]))
        if name in _OPAQUE:
            return None
        same = [t for t in _tensors(args, kwargs) if t.dim() == 4 and t.shape[-2:] == out.shape[-2:]]
        traced = [t for t in same if self.geo.get(id(t), (None,))[0] is t]
        if not traced or any(self.of(t) is None for t in traced):
            return None
        return functools.reduce(_Geo.union, [g for g in map(self.of, traced) if g is not None])


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensor arguments of a call, one level into lists and tuples (``torch.cat``)."""
    flat = [a for v in (*args, *kwargs.values()) for a in (v if isinstance(v, (list, tuple)) else (v,))]
    return [t for t in flat if torch.is_tensor(t)]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def receptive_field(model: nn.Module, layer: str | None, position: tuple[int, int] | None = None,
                    input_size: tuple[int, int] = (32, 32)) -> RF:
    """The receptive field of ``layer``'s units (``None`` = the model's output) for ``input_size`` images."""
    target = model if layer is None else resolve_layer(model, layer)
    got: list[torch.Tensor] = []
    param = next(model.parameters(), None)
    x = torch.zeros(1, 3, *input_size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    tracer = _Tracer()
    tracer.geo[id(x)] = (x, _Geo([1, 1], [1, 1], [0, 0]))
    handle = target.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        with model_scope(model), torch.no_grad(), tracer:
            model(x)
    finally:
        handle.remove()
    geo = tracer.of(got[-1]) if got else None
    if geo is None:
        raise AllconvError(f"layer {layer!r} has no receptive field: its output is not a map built by convs and "
                           "pools from the image (e.g. after flatten, a linear layer or interpolation)")
    return RF(tuple(geo.size), tuple(geo.jump), tuple(geo.start), tuple(input_size), position)  # type: ignore[arg-type]
