"""Reconstruct what drives one unit: the input-space signal of a layer's channel via backprop/deconvnet/guided.

One forward to the layer (stopping there) and one backward with a one-hot selection gradient per target, batched:
many targets (channels, or (image, channel, h, w) picks for Figure 2) run as rows of one batch, chunked to bound
memory -- never a Python loop of backward passes.
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence, Union

import torch
from torch import nn

from allconv.errors import AllconvError

from .guard import check_graph, check_model
from .maps import check_images, forward_to, model_scope
from .modes import backward_mode, check_method, shared_backward

Position = Union[str, None, Sequence[int], torch.Tensor]
BATCH = 256  # rows per forward/backward pass


def reconstruct(model: nn.Module, images: torch.Tensor, *, method: str, layer: str | None,
                channel: int | Sequence[int], position: Position = "max", batch_size: int = BATCH) -> torch.Tensor:
    """The input-space signal of ``channel`` in ``layer`` for each image.

    ``layer``: a ``model.named_modules()`` name whose output is the feature map, or None for the model's output (then
    ``channel`` is a class index). ``channel``: an int -> (N, 3, H, W); a sequence of C ints -> (N, C, 3, H, W) from
    batched passes. ``position`` picks the unit in an (N, C, H, W) map -- the layer's, or with ``layer=None`` the
    model's own output when that is 4-D (a fully convolutional net): "max" (each image's strongest response of that
    channel), an (h, w) pair, or None (the sum over the whole map). An (N, C) output has no positions: "max" and None
    both mean the unit itself, and an (h, w) pair is refused. The model runs in eval mode for the call (its flags are
    restored) under its lock: see ``vis.maps`` for what another thread using it meanwhile sees. TorchScript (under
    guided/deconvnet) and reentrant checkpointing are refused in one line (``vis.guard``). The result has the
    dtype/device of ``images``.
    """
    check_method(method)
    check_images(model, images)
    many = not _is_int(channel)
    chans = _channel_list(channel) if many else [int(channel)]  # type: ignore[arg-type]
    n, c = images.shape[0], len(chans)
    index = torch.arange(n).repeat_interleave(c)
    channels = torch.tensor(chans, dtype=torch.long).repeat(n)
    positions = _position_rows(position, n * c)
    out = _reconstruct_rows(model, images, index, channels, positions, [method], layer, batch_size)[method]
    return out.view(n, c, *images.shape[1:]) if many else out


def reconstruct_at(model: nn.Module, images: torch.Tensor, *, method: str, layer: str | None,
                   channels: torch.Tensor | Sequence[int], positions: Position = "max",
                   batch_size: int = BATCH) -> torch.Tensor:
    """One target per image row: row i reconstructs ``channels[i]`` at ``positions[i]`` = (h, w) -> (N, 3, H, W).

    ``positions`` may also be "max" or None, as in ``reconstruct``. Figure 2 uses this for its (image, channel, h, w)
    picks: repeat each image once per pick and pass the picks' channels and positions.
    """
    return reconstruct_methods_at(model, images, methods=[method], layer=layer, channels=channels,
                                  positions=positions, batch_size=batch_size)[method]


def reconstruct_methods_at(model: nn.Module, images: torch.Tensor, *, methods: Sequence[str], layer: str | None,
                           channels: torch.Tensor | Sequence[int], positions: Position = "max",
                           batch_size: int = BATCH) -> dict[str, torch.Tensor]:
    """``reconstruct_at`` for several methods from one forward per chunk (``vis.modes.shared_backward``): method ->
    (N, 3, H, W), each equal to its own ``reconstruct_at``. Figure 2 reconstructs its picks this way."""
    methods = list(dict.fromkeys(check_method(m) for m in methods))
    if not methods:
        raise AllconvError("no method given; choose from guided, deconvnet, backprop")
    check_images(model, images)
    n = images.shape[0]
    channels = torch.as_tensor(channels, dtype=torch.long).reshape(-1).cpu()
    if channels.numel() != n:
        raise AllconvError(f"channels must have one entry per image ({n}), got {channels.numel()}")
    positions = positions if positions is None or isinstance(positions, str) else _position_tensor(positions, n)
    if isinstance(positions, str) and positions != "max":
        raise AllconvError(f"positions must be 'max', None or a (N, 2) tensor of (h, w), got {positions!r}")
    return _reconstruct_rows(model, images, torch.arange(n), channels, positions, methods, layer, batch_size)


def _is_int(value: object) -> bool:
    if torch.is_tensor(value):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _channel_list(channel: object) -> list[int]:
    try:
        chans = [int(c) for c in channel]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise AllconvError(f"channel must be an int or a sequence of ints, got {channel!r}") from None
    if not chans:
        raise AllconvError("channel is an empty sequence; pass at least one channel index")
    return chans


def _position_tensor(positions: object, n: int) -> torch.Tensor:
    pos = torch.as_tensor(positions).cpu()
    if pos.is_floating_point() or pos.shape != (n, 2):
        raise AllconvError(f"positions must be a (N, 2) integer tensor of (h, w) with N={n}, got shape "
                           f"{tuple(pos.shape)} dtype {pos.dtype}")
    return pos.long()


def _position_rows(position: Position, rows: int) -> str | None | torch.Tensor:
    if position is None or (isinstance(position, str) and position == "max"):
        return position
    if isinstance(position, str) or not (len(position) == 2 and all(_is_int(v) for v in position)):  # type: ignore
        raise AllconvError(f"position must be 'max', None or an (h, w) pair of ints, got {position!r}")
    return torch.tensor([[int(position[0]), int(position[1])]]).repeat(rows, 1)  # type: ignore[index]


def _reconstruct_rows(model: nn.Module, images: torch.Tensor, index: torch.Tensor, channels: torch.Tensor,
                      positions: str | None | torch.Tensor, methods: list[str], layer: str | None,
                      batch_size: int) -> dict[str, torch.Tensor]:
    """Row r = image ``index[r]``, target ``channels[r]`` at ``positions[r]``; chunks of ``batch_size`` rows, one
    forward per chunk and one backward per method."""
    if batch_size < 1:
        raise AllconvError(f"batch_size must be >= 1, got {batch_size}")
    strict = next((m for m in methods if m != "backprop"), "backprop")
    check_model(model, strict)
    out = {m: images.new_empty((len(index), *images.shape[1:])) for m in methods}
    with model_scope(model):
        for s in range(0, len(index), batch_size):
            e = s + batch_size
            pos = positions[s:e] if torch.is_tensor(positions) else positions
            x = images[index[s:e].to(images.device)]
            for m, grad in one_pass(model, x, channels[s:e], pos, methods, layer).items():
                out[m][s:e] = grad
    return out


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
        seed = _selection(fmap, channels, positions, layer)
        for i, m in enumerate(methods):
            if switch is not None:
                switch.use(m)
            (grad,) = torch.autograd.grad(fmap, x, grad_outputs=seed, allow_unused=True,
                                          retain_graph=i < len(methods) - 1)
            out[m] = torch.zeros_like(x) if grad is None else grad.detach()
    return out


def _selection(fmap: torch.Tensor, channels: torch.Tensor, positions: str | None | torch.Tensor,
               layer: str | None) -> torch.Tensor:
    """The backward seed: a one-hot (or one-map, for position None) gradient per row."""
    where = "the model's output" if layer is None else f"layer {layer!r}"
    if fmap.ndim not in (2, 4):
        raise AllconvError(f"{where} has shape {tuple(fmap.shape)}; only (N, C) or (N, C, H, W) outputs are supported")
    n, c = fmap.shape[:2]
    bad = channels[(channels < 0) | (channels >= c)]
    if len(bad):
        raise AllconvError(f"channel {int(bad[0])} out of range for {where} with {c} channels; use 0..{c - 1}")
    rows = torch.arange(n, device=fmap.device)
    ch = channels.to(fmap.device)
    seed = torch.zeros_like(fmap)
    if fmap.ndim == 2:
        if torch.is_tensor(positions):
            raise AllconvError(f"{where} has shape {tuple(fmap.shape)}, with no (h, w) positions to pick; pass "
                               "position='max' or None (both mean the unit itself)")
        seed[rows, ch] = 1
        return seed
    h, w = fmap.shape[2:]
    if positions is None:
        seed[rows, ch] = 1
        return seed
    if isinstance(positions, str):  # "max": each row's strongest response of its channel
        flat = fmap.detach()[rows, ch].reshape(n, -1).argmax(dim=1)
        ph, pw = flat // w, flat % w
    else:
        ph, pw = positions[:, 0].to(fmap.device), positions[:, 1].to(fmap.device)
        out = (ph < 0) | (ph >= h) | (pw < 0) | (pw >= w)
        if out.any():
            i = int(out.nonzero()[0])
            raise AllconvError(f"position ({int(ph[i])}, {int(pw[i])}) out of range for {where} with a {h}x{w} map; "
                               f"use h in 0..{h - 1}, w in 0..{w - 1}")
    seed[rows, ch, ph, pw] = 1
    return seed
