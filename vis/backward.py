"""One forward, then one backward per method: the pass every reconstruction runs (``vis.reconstruct`` on whole
images, ``vis.cone`` on cones), with the one-hot seed that picks each row's target unit."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from allconv.errors import AllconvError

from .guard import check_graph
from .maps import forward_to
from .modes import backward_mode, shared_backward


def one_pass(model: nn.Module, x: torch.Tensor, channels: torch.Tensor, positions: str | None | torch.Tensor,
             methods: list[str], layer: str | None,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One forward (under one method's mode, or a shared one for several), then one backward per method.
    ``forward`` (default: ``forward_to(model, x, layer)``) computes the map the targets are picked from."""
    x = x.detach().requires_grad_(True)
    mode = backward_mode(methods[0]) if len(methods) == 1 else shared_backward(tuple(methods))
    out: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), mode as switch:
        fmap = forward_to(model, x, layer) if forward is None else forward(x)
        if not fmap.requires_grad:
            return {m: torch.zeros_like(x) for m in methods}
        check_graph(fmap, next((m for m in methods if m != "backprop"), "backprop"))
        seed = selection(fmap, channels, positions, layer)
        for i, m in enumerate(methods):
            if switch is not None:
                switch.use(m)
            (grad,) = torch.autograd.grad(fmap, x, grad_outputs=seed, allow_unused=True,
                                          retain_graph=i < len(methods) - 1)
            out[m] = torch.zeros_like(x) if grad is None else grad.detach()
    return out


def where(layer: str | None) -> str:
    return "the model's output" if layer is None else f"layer {layer!r}"


def selection(fmap: torch.Tensor, channels: torch.Tensor, positions: str | None | torch.Tensor,
              layer: str | None) -> torch.Tensor:
    """The backward seed: a one-hot (or one-map, for position None) gradient per row."""
    if fmap.ndim not in (2, 4):
        raise AllconvError(f"{where(layer)} has shape {tuple(fmap.shape)}; only (N, C) or (N, C, H, W) outputs are "
                           "supported")
    check_channels(channels, fmap.shape[1], layer)
    n = fmap.shape[0]
    rows = torch.arange(n, device=fmap.device)
    ch = channels.to(fmap.device)
    seed = torch.zeros_like(fmap)
    if fmap.ndim == 2:
        if torch.is_tensor(positions):
            raise AllconvError(f"{where(layer)} has shape {tuple(fmap.shape)}, with no (h, w) positions to pick; "
                               "pass position='max' or None (both mean the unit itself)")
        seed[rows, ch] = 1
        return seed
    if positions is None:
        seed[rows, ch] = 1
        return seed
    pos = unit_positions(fmap, channels, positions, layer)
    seed[rows, ch, pos[:, 0], pos[:, 1]] = 1
    return seed


def check_channels(channels: torch.Tensor, c: int, layer: str | None) -> None:
    bad = channels[(channels < 0) | (channels >= c)]
    if len(bad):
        raise AllconvError(f"channel {int(bad[0])} out of range for {where(layer)} with {c} channels; use 0..{c - 1}")


def unit_positions(fmap: torch.Tensor, channels: torch.Tensor, positions: str | torch.Tensor,
                   layer: str | None) -> torch.Tensor:
    """Each row's target (h, w) in the (N, C, H, W) ``fmap``, on its device: "max" = its channel's strongest unit
    (the first, in row-major order, of equal ones), else the given (N, 2) positions, checked. ``channels`` must be
    checked already (``check_channels``)."""
    n, _, h, w = fmap.shape
    if isinstance(positions, str):
        flat = fmap.detach()[torch.arange(n, device=fmap.device), channels.to(fmap.device)].reshape(n, -1).argmax(1)
        return torch.stack([flat // w, flat % w], dim=1)
    pos = positions.to(fmap.device)
    check_positions(pos, (h, w), layer)
    return pos


def check_positions(positions: torch.Tensor, size: tuple[int, int], layer: str | None) -> None:
    h, w = size
    out = (positions[:, 0] < 0) | (positions[:, 0] >= h) | (positions[:, 1] < 0) | (positions[:, 1] >= w)
    if out.any():
        ph, pw = positions[int(out.nonzero()[0])].tolist()
        raise AllconvError(f"position ({ph}, {pw}) out of range for {where(layer)} with a {h}x{w} map; "
                           f"use h in 0..{h - 1}, w in 0..{w - 1}")
