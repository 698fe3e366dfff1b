"""Reconstruct a unit from its cone: on a chain net, each layer computes only the units the target depends on.

A unit of layer L reads a box of each earlier map (its *cone*), and every method's reconstruction of it is zero outside
its receptive field. On a net that is a chain (an ``nn.Sequential``, nested ones flattened, no hooks) of convs, max or
average pools and pointwise layers (ReLU, BN on running statistics, dropout and identity, in eval), the cone can be
computed alone. Every cone has one shape (the unit at (h, w) reads the boxes of the unit at (0, 0) moved by (h, w)
times each map's jump), so each conv or pool runs with padding 0 on its box, and where a box reaches past its map
the values there are set to the padding the full net reads (zeros; -inf for max pooling). Every unit of the cone then
holds its full-net value, so ReLU masks, max-pool switches and gradients are the full net's, and the work is the
cone's: for conv6 of All-CNN-C, 31 M multiply-adds instead of 257 M on the whole image (145 M on the 24x24 window of
the field), with rows of any positions in one batch. A net that is not such a chain gets ``None`` from ``chain``;
callers then take the full-image path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .guard import check_model
from .maps import model_scope, resolve_layer
from .backward import check_positions, one_pass

POINTWISE = (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
Span = tuple[int, int]  # [start, stop) along one axis, in a map's own units


@dataclass(frozen=True)
class _Op:
    """A conv or pool of the chain, as the box arithmetic needs it (per axis: kernel extent, stride, padding)."""

    module: nn.Module
    extent: tuple[int, int]  # dilation * (kernel - 1) + 1
    stride: tuple[int, int]
    padding: tuple[int, int]

    def out_len(self, n: int, axis: int) -> int:
        return (n + 2 * self.padding[axis] - self.extent[axis]) // self.stride[axis] + 1

    def needs(self, out: Span, axis: int) -> Span:
        """The input span the outputs ``out`` read (unclipped: it may reach into the padding)."""
        s, p = self.stride[axis], self.padding[axis]
        return out[0] * s - p, (out[1] - 1) * s - p + self.extent[axis]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(x, m.kernel_size, m.stride, 0, m.dilation)
        return F.avg_pool2d(x, m.kernel_size, m.stride, 0)

    @property
    def fill(self) -> float:
        return float("-inf") if isinstance(self.module, nn.MaxPool2d) else 0.0


Step = nn.Module | _Op


def chain(model: nn.Module, layer: str | None) -> list[Step] | None:
    """The steps the model's forward runs up to ``layer``'s output, if it is such a chain; else ``None``. Ask under
    the model's lock (``vis.model_scope``): another thread's ``forward_to`` hooks the model for as long as it runs."""
    g = torch.nn.modules.module
    if layer is None or not _plain(model) or g._global_forward_hooks or g._global_forward_pre_hooks \
            or g._global_backward_hooks or g._global_backward_pre_hooks:
        return None
    target = resolve_layer(model, layer)
    steps: list[Step] = []
    try:
        reached = _walk(model, target, steps)
    except _NotChain:
        return None
    return steps if reached else None


class _NotChain(Exception):
    pass


def _plain(m: nn.Module) -> bool:
    """A Sequential whose forward is Sequential's, or a leaf; no hooks either way (the cone calls convs and pools
    functionally, so a module's forward or backward hooks would not run)."""
    hooks = m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    return not hooks and (type(m).forward is nn.Sequential.forward if isinstance(m, nn.Sequential) else True)


def _walk(m: nn.Module, target: nn.Module, steps: list[Step]) -> bool:
    """Append ``m``'s steps; True once ``target``'s output is reached."""
    if not _plain(m):
        raise _NotChain
    if isinstance(m, nn.Sequential):
        return any(_walk(c, target, steps) for c in m) or m is target
    steps.append(_step(m))
    return m is target


def _step(m: nn.Module) -> Step:
    if isinstance(m, POINTWISE):
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is None:
            raise _NotChain  # batch statistics even in eval: not pointwise
        return m
    pair = nn.modules.utils._pair
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return _Op(m, _extent(m.kernel_size, m.dilation), pair(m.stride), pair(m.padding))
    if isinstance(m, nn.MaxPool2d) and not m.ceil_mode and not m.return_indices:
        return _Op(m, _extent(m.kernel_size, m.dilation), pair(m.stride or m.kernel_size), pair(m.padding))
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.count_include_pad and m.divisor_override is None:
        return _Op(m, _extent(m.kernel_size, 1), pair(m.stride or m.kernel_size), pair(m.padding))
    raise _NotChain


def _extent(kernel: int | tuple[int, int], dilation: int | tuple[int, int]) -> tuple[int, int]:
    """Per axis, the input units one output reads end to end: dilation * (kernel - 1) + 1."""
    k, d = nn.modules.utils._pair(kernel), nn.modules.utils._pair(dilation)
    return d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1


def plan(steps: Sequence[Step]) -> list[tuple[Span, Span]]:
    """Per op (in order), the (rows, cols) span of its input map that the cone of the unit at (0, 0) reads; then
    that unit's own span. The unit at (h, w) reads the same spans moved by (h, w) times ``jumps``: the cone has one
    shape wherever its unit is (the parts outside a map are its padding: see ``forward_cone``)."""
    need: list[tuple[Span, Span]] = [((0, 1), (0, 1))]
    for op in reversed([s for s in steps if isinstance(s, _Op)]):
        need.insert(0, (op.needs(need[0][0], 0), op.needs(need[0][1], 1)))
    return need


def jumps(steps: Sequence[Step]) -> list[tuple[int, int]]:
    """Per op, then for the target: how far its span moves (in its map's units) when the target moves by one unit."""
    out = [(1, 1)]
    for op in reversed([s for s in steps if isinstance(s, _Op)]):
        out.insert(0, (out[0][0] * op.stride[0], out[0][1] * op.stride[1]))
    return out


def map_sizes(steps: Sequence[Step], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Per op, the (h, w) of its input map for ``size`` images; then the target layer's."""
    out = [size]
    for op in (s for s in steps if isinstance(s, _Op)):
        out.append((op.out_len(out[-1][0], 0), op.out_len(out[-1][1], 1)))
    return out


def _inside(spans: list[tuple[Span, Span]], moves: list[tuple[int, int]], sizes: list[tuple[int, int]],
            target: torch.Tensor) -> list[torch.Tensor | None]:
    """Per op, which units of each row's span lie inside the op's input map (N, 1, h, w); None where all do."""
    out: list[torch.Tensor | None] = []
    for ((r0, r1), (c0, c1)), (jr, jc), (n, m) in zip(spans, moves, sizes):
        rows = target[:, :1] * jr + torch.arange(r0, r1, device=target.device)
        cols = target[:, 1:] * jc + torch.arange(c0, c1, device=target.device)
        ok = ((rows >= 0) & (rows < n))[:, None, :, None] & ((cols >= 0) & (cols < m))[:, None, None, :]
        out.append(None if bool(ok.all()) else ok)
    return out


def forward_cone(steps: Sequence[Step], x: torch.Tensor, inside: list[torch.Tensor | None]) -> torch.Tensor:
    """Run the chain on ``x`` (each row: the first op's span of its image) through the cone: before each op, what
    lies outside its input map becomes that op's padding (zero, or -inf for max pooling), exactly what the full net
    reads there. The output is each row's target unit, (N, C, 1, 1)."""
    i = 0
    for step in steps:
        if not isinstance(step, _Op):
            x = step(x)
            continue
        if inside[i] is not None:
            x = torch.where(inside[i], x, step.fill)
        x = step.run(x)
        i += 1
    return x


def cut(src: torch.Tensor, corner: torch.Tensor, size: Sequence[int], fill: float) -> torch.Tensor:
    """Row i of ``src`` (P, C, H, W) cut at ``corner[i]`` = (top, left) to ``size``; outside ``src``: ``fill``."""
    padded, idx = _padded_index(src, corner, size, fill)
    return padded[idx]


def _padded_index(src: torch.Tensor, corner: torch.Tensor, size: Sequence[int],
                  fill: float) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``src`` padded by the cut's size all round, and the advanced index of each row's cut in it."""
    h, w = int(size[0]), int(size[1])
    pad = max(h, w)
    padded = F.pad(src, (pad, pad, pad, pad), value=fill)
    dev = src.device
    corner = corner.to(dev) + pad
    rows = (corner[:, 0, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (corner[:, 1, None] + torch.arange(w, device=dev))[:, None, None, :]
    n = torch.arange(len(src), device=dev)[:, None, None, None]
    c = torch.arange(src.shape[1], device=dev)[None, :, None, None]
    return padded, (n, c, rows, cols)


def reconstruct_cone(model: nn.Module, steps: Sequence[Step], images: torch.Tensor, *, methods: Sequence[str],
                     layer: str, channels: torch.Tensor, positions: torch.Tensor,
                     batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``vis.reconstruct_methods_at`` with (N, 2) ``positions`` for the ``steps`` of ``chain(model, layer)``: the same
    (N, 3, H, W) signals, computed on each target's cone (``cone_signals``) and pasted into zeros."""
    sigs, corner = cone_signals(model, steps, images, methods=methods, layer=layer, channels=channels,
                                positions=positions, batch_size=batch_size)
    out = {}
    for m, sig in sigs.items():
        padded, idx = _padded_index(torch.zeros_like(images), corner, sig.shape[-2:], 0.0)
        padded[idx] = sig
        p = max(sig.shape[-2:])
        out[m] = padded[:, :, p:-p, p:-p]
    return out


def cone_signals(model: nn.Module, steps: Sequence[Step], images: torch.Tensor, *, methods: Sequence[str],
                 layer: str, channels: torch.Tensor, positions: torch.Tensor,
                 batch_size: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each row's signal on its cone's input span only: method -> (N, 3, h, w) (zero outside the image), and each
    span's (top, left) in the image (N, 2). Every row has the same shapes, so rows batch freely; rows whose cone
    stays inside every map (no padding to set) run first, in batches of their own."""
    methods = list(methods)
    check_model(model, next((m for m in methods if m != "backprop"), "backprop"))
    spans, moves = plan(steps), jumps(steps)
    sizes = map_sizes(steps, (images.shape[-2], images.shape[-1]))
    positions = positions.reshape(-1, 2).to(images.device)
    channels = channels.reshape(-1).cpu()
    check_positions(positions, sizes[-1], layer)
    (r0, r1), (c0, c1) = spans[0]
    corner = positions * torch.tensor(moves[0], device=positions.device) + torch.tensor([r0, c0],
                                                                                       device=positions.device)
    out = {m: images.new_empty((len(positions), images.shape[1], r1 - r0, c1 - c0)) for m in methods}
    order = torch.argsort(_padded_rows(spans[:-1], moves[:-1], sizes[:-1], positions).int(), stable=True)
    with model_scope(model):
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            pos = positions[rows]
            x = cut(images[rows], corner[rows], (r1 - r0, c1 - c0), 0.0)
            inside = _inside(spans[:-1], moves[:-1], sizes[:-1], pos)
            got = one_pass(model, x, channels[rows.cpu()], torch.zeros(len(rows), 2, dtype=torch.long), methods,
                           layer, lambda t: forward_cone(steps, t, inside))
            for m in methods:
                out[m][rows] = got[m]
    return out, corner


def _padded_rows(spans: list[tuple[Span, Span]], moves: list[tuple[int, int]], sizes: list[tuple[int, int]],
                 target: torch.Tensor) -> torch.Tensor:
    """Per row: does its cone reach past any map (so padding must be set)?"""
    out = torch.zeros(len(target), dtype=torch.bool, device=target.device)
    for ((r0, r1), (c0, c1)), (jr, jc), (n, m) in zip(spans, moves, sizes):
        top, left = target[:, 0] * jr, target[:, 1] * jc
        out |= (top + r0 < 0) | (top + r1 > n) | (left + c0 < 0) | (left + c1 > m)
    return out
