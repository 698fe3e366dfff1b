"""The scan at bf16 speed with fp32's answer: a bf16 pass finds candidates, an fp32 pass decides among them.

Why exact: each filter's top-k is decided by each image's maximum over positions. If every bf16 maximum is within
``tol`` of the fp32 one, an image in fp32's top-k has a bf16 maximum of at least (the k-th bf16 maximum) - 2 ``tol``,
so keeping every image above that bar as a candidate and ranking the candidates by their fp32 maxima (ties: the
earlier image, as the fp32 scan's stable merge does) gives fp32's picks, values and positions. ``tol`` is measured
per filter on the first ``CALIBRATE`` images (``SAFETY`` x the worst error, at least ``SAFETY`` bf16 ulps of the
filter's scale), then checked on every candidate as it is rescored: where the error seen there exceeds it, ``tol``
grows to twice that error and the new candidates are rescored too, until it holds on all of them.

Used by ``vis.scan.scan_layers`` where bf16 is native (``allconv.device.native_bf16``), or when asked.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

CALIBRATE = 256  # images run in both precisions to measure the bf16 error
SAFETY = 4.0
ULP = 2.0 ** -8  # bf16's relative precision

Forward = Callable[[nn.Module, torch.Tensor, list[str]], dict[str, torch.Tensor]]
TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (F, k) values, image index, flat position


def exact_topk(model: nn.Module, images: torch.Tensor, pre: Preprocess, layers: list[str], k: int, batch_size: int,
               dev: torch.device, forward: Forward, batches: Callable[[Iterable[int]], Iterable[int]]) -> dict[str, TopK]:
    """fp32's top-k images per filter of each layer (values, image index, flat position of the max), at bf16 cost
    for all but the candidates. ``forward`` returns the layers' maps; ``batches`` wraps the batch starts (progress)."""
    calib = _maxima(model, images[:CALIBRATE], pre, layers, batch_size, dev, forward, bf16=False)[0]
    approx, _ = _maxima(model, images, pre, layers, batch_size, dev, forward, bf16=True, batches=batches)
    tol = {n: SAFETY * torch.maximum((approx[n][:len(calib[n])] - calib[n]).abs().amax(0),
                                     ULP * calib[n].abs().amax(0)) for n in layers}
    exact: dict[str, torch.Tensor] = {n: torch.full_like(approx[n], float("nan")) for n in layers}
    where: dict[str, torch.Tensor] = {n: torch.zeros_like(approx[n], dtype=torch.long) for n in layers}
    done = torch.zeros(len(images), dtype=torch.bool)
    while True:
        cand = {n: approx[n] >= approx[n].topk(k, dim=0).values[-1] - 2 * tol[n] for n in layers}
        todo = (torch.stack([c.any(1) for c in cand.values()]).any(0) & ~done).nonzero().flatten()
        if len(todo) == 0:
            break
        vals, pos = _maxima(model, images[todo], pre, layers, batch_size, dev, forward, bf16=False)
        done[todo] = True
        grown = False
        for n in layers:
            exact[n][todo], where[n][todo] = vals[n], pos[n]
            err = (approx[n][todo] - vals[n]).abs().amax(0)
            if (err > tol[n]).any():  # the calibration underestimated it: widen and rescore the new candidates
                tol[n] = torch.maximum(tol[n], 2 * err)
                grown = True
        if not grown:
            break
    return {n: _pick(exact[n], where[n], cand[n], k) for n in layers}


def _pick(exact: torch.Tensor, where: torch.Tensor, cand: torch.Tensor, k: int) -> TopK:
    """Per filter, the k best candidates by fp32 value (ties: lower image index, like a stable sort)."""
    vals = torch.where(cand, exact, torch.tensor(float("-inf"))).T  # (F, N), image order kept
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, order), order, where.T.gather(1, order)


def _maxima(model: nn.Module, images: torch.Tensor, pre: Preprocess, layers: list[str], batch_size: int,
            dev: torch.device, forward: Forward, bf16: bool,
            batches: Callable[[Iterable[int]], Iterable[int]] = lambda r: r) -> tuple[dict[str, torch.Tensor],
                                                                                     dict[str, torch.Tensor]]:
    """Each image's max over positions per filter and where it is: layer -> (N, F) values (float32, CPU) and flat
    positions, in fp32, or under bf16 autocast (positions then unused)."""
    vals: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    pos: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    for start in batches(range(0, len(images), batch_size)):
        x = pre(images[start:start + batch_size].to(dev, non_blocking=True))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            maps = forward(model, x.contiguous(memory_format=torch.channels_last) if bf16 else x, layers)
        for n, fmap in maps.items():
            if fmap.ndim != 4:
                raise AllconvError(f"Figure 2 needs a layer with (N, C, H, W) maps, but {n!r} gives shape "
                                   f"{tuple(fmap.shape)}; pick a conv layer such as conv6")
            v, p = fmap.flatten(2).float().max(dim=2)
            vals[n].append(v.cpu())
            pos[n].append(p.cpu())
    return ({n: torch.cat(v) for n, v in vals.items()}, {n: torch.cat(p) for n, p in pos.items()})
