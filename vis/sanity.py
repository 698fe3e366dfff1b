"""Sanity check for saliency methods: cascading randomization (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

On a deep copy of the model, the conv layers are re-initialized from the top down, one more at a time; a method whose
maps barely change while the weights are destroyed is showing the input (edges), not what the net learned. Similarity
to the trained net's map: Spearman rank correlation of |x| and Pearson correlation of x, per image, averaged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from allconv.errors import AllconvError

from .maps import activations, check_images, model_lock
from .modes import METHODS, check_method
from .reconstruct import Position, reconstruct_at


@dataclass
class Result:
    """``stages[s]`` names what is randomized at stage s; per method, one similarity per stage (NaN where every
    image's map is constant and differs from the trained one: undefined) and the maps."""

    stages: list[str]
    spearman: dict[str, list[float]] = field(default_factory=dict)
    pearson: dict[str, list[float]] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (stages, N, 3, H, W)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim, ties given their average rank (as Spearman requires: guided maps have many 0s)."""
    order = x.argsort(dim=-1)
    sorted_x = x.gather(-1, order)
    ranks = torch.empty_like(x, dtype=torch.float64)
    for i in range(x.shape[0]):
        _, inverse, counts = torch.unique_consecutive(sorted_x[i], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        average = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
        ranks[i, order[i]] = average[inverse]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; identical rows give exactly 1. Where a row
    is constant the correlation is undefined: NaN, never 0, which would read as "completely changed" (guided and
    backprop maps go blank above a dead layer)."""
    same = (a == b).all(-1)
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    r = torch.where(denom > 0, (a * b).sum(-1) / denom.clamp_min(1e-300), torch.nan)
    return torch.where(same, 1.0, r)  # identical rows: exactly 1, not 1 - 1 ulp


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (average ranks for ties)."""
    return pearson(_ranks(a), _ranks(b))


def _mean(r: torch.Tensor) -> float:
    """Mean over the images whose correlation is defined; NaN when none is (every map constant)."""
    return float(r.nanmean()) if not r.isnan().all() else float("nan")


def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Conv layers in forward order, named as the user knows them ("conv9", not "conv9.conv")."""
    convs = [(n.removesuffix(".conv"), m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise AllconvError("randomization_check needs a model with Conv2d layers")
    return convs


def _reinit(conv: nn.Conv2d, gen: torch.Generator) -> None:
    with torch.no_grad():
        w = torch.empty(conv.weight.shape, dtype=torch.float64).normal_(generator=gen)
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(w * (2.0 / fan_in) ** 0.5)  # He init, as the nets are initialized
        if conv.bias is not None:
            conv.bias.zero_()


def _positions(model: nn.Module, images: torch.Tensor, layer: str | None, channel: int, position: Position):
    """Fix the unit on the trained net, so every stage reconstructs the same (channel, h, w)."""
    if layer is None or position is None:
        return None  # the output has no positions; None = the whole map
    if isinstance(position, str):
        fmap = activations(model, images, layer)
        if fmap.ndim != 4 or not 0 <= channel < fmap.shape[1]:
            return position  # reconstruct_at reports the problem
        flat = fmap[:, channel].reshape(len(images), -1).argmax(1).cpu()
        return torch.stack([flat // fmap.shape[3], flat % fmap.shape[3]], 1)
    return torch.tensor([list(position)] * len(images))  # type: ignore[arg-type]


def randomization_check(model: nn.Module, images: torch.Tensor, *, layer: str | None, channel: int,
                        methods: tuple[str, ...] = METHODS, position: Position = "max", seed: int = 0) -> Result:
    """Cascading randomization, top conv first, on a copy of ``model`` (never modified). Seeded by ``seed``."""
    for m in methods:
        check_method(m)
    check_images(model, images)
    with model_lock(model):
        work = copy.deepcopy(model)
    pos = _positions(work, images, layer, channel, position)
    channels = torch.full((len(images),), channel, dtype=torch.long)
    convs = _conv_layers(work)
    stages = ["trained"] + [convs[-1][0] if k == 1 else f"{convs[-1][0]}..{convs[-k][0]}"
                            for k in range(1, len(convs) + 1)]
    gen = torch.Generator().manual_seed(seed)
    maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for k in range(len(stages)):
        if k:
            _reinit(convs[-k][1], gen)
        for m in methods:
            maps[m].append(reconstruct_at(work, images, method=m, layer=layer, channels=channels, positions=pos))
    result = Result(stages=stages)
    for m in methods:
        stack = torch.stack(maps[m])
        flat = stack.reshape(len(stages), len(images), -1)
        result.maps[m] = stack
        trained = _ranks(flat[0].abs())  # ranked once, not once per stage
        result.spearman[m] = [_mean(pearson(_ranks(flat[s].abs()), trained)) for s in range(len(stages))]
        result.pearson[m] = [_mean(pearson(flat[s], flat[0])) for s in range(len(stages))]
    return result
