"""Reconstruct what drives one unit: the input-space signal of a layer's channel via backprop/deconvnet/guided.

One forward to the layer (stopping there) and one backward with a one-hot selection gradient per target, batched:
many targets (channels, or (image, channel, h, w) picks for Figure 2) run as rows of one batch, chunked to bound
memory -- never a Python loop of backward passes. A single unit (a position, or "max") of a chain net (the paper's
12) is computed on its cone alone (``vis.cone``): the same numbers for a fraction of the work.
"""

from __future__ import annotations

import numbers
from typing import Sequence, Union

import torch
from torch import nn

from allconv.errors import AllconvError

from .backward import check_channels, one_pass, unit_positions
from .cone import Step, chain, reconstruct_cone
from .guard import check_model
from .maps import check_images, forward_to, model_scope
from .modes import check_method

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
    with model_scope(model):  # (under the lock: another thread's forward_to hook would hide the chain)
        steps = None if positions is None else chain(model, layer)
        for s in range(0, len(index), batch_size):
            e = s + batch_size
            pos = positions[s:e] if torch.is_tensor(positions) else positions
            if steps is None:
                got = one_pass(model, images[index[s:e].to(images.device)], channels[s:e], pos, methods, layer)
            else:
                got = _on_cone(model, steps, images, index[s:e], channels[s:e], pos, methods, layer)  # type: ignore
            for m, grad in got.items():
                out[m][s:e] = grad
    return out


def _on_cone(model: nn.Module, steps: list[Step], images: torch.Tensor, index: torch.Tensor, channels: torch.Tensor,
             positions: str | torch.Tensor, methods: list[str], layer: str) -> dict[str, torch.Tensor]:
    """One chunk of single-unit targets (row r: image ``index[r]``) on a chain net, each on its cone (``vis.cone``);
    "max" is found first by a forward without gradients of each distinct image once (a grid's rows share one)."""
    index = index.to(images.device)
    if isinstance(positions, str):
        uniq, inv = torch.unique(index, return_inverse=True)
        with torch.no_grad():
            fmap = forward_to(model, images[uniq], layer)
        check_channels(channels, fmap.shape[1], layer)
        positions = unit_positions(fmap[inv], channels, positions, layer)  # type: ignore[arg-type]
    return reconstruct_cone(model, steps, images[index], methods=methods, layer=layer, channels=channels,
                            positions=positions, batch_size=len(index))
