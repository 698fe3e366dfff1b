"""Start a run from a trained net (``--init CHECKPOINT``) and keep some of its layers fixed (``--freeze``).

``init_from`` copies every conv block of the source whose name and weight shape match the new net's, and leaves the
rest as initialized (e.g. the class conv when going from CIFAR-10's 10 classes to CIFAR-100's 100). Shipped checkpoints
have BatchNorm folded into the convs; a new net with BN gets each folded conv back as conv + BN with the BN set, from
one pass over ``calib`` images, to mean/std of the conv's output (gamma = std, beta = mean + bias): in eval mode that
is exactly the folded conv, and in training mode the batch statistics start where the trained net was. A source with
BN into a net without it is folded first (``models.fold_batchnorm``).

``freeze`` (``"conv1..conv6"`` or a comma list) turns off gradients of those layers and keeps their BN on its running
statistics (``frozen_eval`` after each ``net.train()``), so a frozen layer computes the same function all run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AllconvError
from .models import AllConvNet, ConvBlock, fold_batchnorm, layer_names


def init_from(net: AllConvNet, path: str | Path, calib: torch.Tensor) -> dict[str, Any]:
    """Copy the matching conv blocks of the checkpoint at ``path`` into ``net``; return what was done (for the run's
    metadata): ``{"from", "model", "copied", "reinitialized"}``. ``calib``: preprocessed images for BN unfolding."""
    from . import checkpoint

    src, meta = checkpoint.load(path, device=next(net.parameters()).device)
    has_bn = any(getattr(b, "bn", None) is not None for b in _blocks(net).values())
    if not has_bn and any(getattr(b, "bn", None) is not None for b in _blocks(src).values()):
        src = fold_batchnorm(src)
    theirs, copied, unfold = _blocks(src), [], []
    with torch.no_grad():
        for name, block in _blocks(net).items():
            other = theirs.get(name)
            if other is None or other.conv.weight.shape != block.conv.weight.shape:
                continue
            block.conv.weight.copy_(other.conv.weight)
            if getattr(block, "bn", None) is None:
                block.conv.bias.copy_(other.conv.bias)
            elif getattr(other, "bn", None) is not None:
                block.bn.load_state_dict(other.bn.state_dict())
            else:
                unfold.append((block, other.conv.bias.detach().clone()))
            copied.append(name)
    if unfold:
        _unfold(net, unfold, calib)
    if not copied:
        raise AllconvError(f"--init {path}: no layer of its {meta.model} matches a layer of {net.name} in name and "
                           "shape; start from a checkpoint of the same architecture")
    return {"from": str(path), "model": meta.model, "data": meta.data, "copied": copied,
            "reinitialized": [n for n in _blocks(net) if n not in copied]}


def _blocks(net: nn.Module) -> dict[str, ConvBlock]:
    return {n: m for n, m in net.named_children() if isinstance(m, ConvBlock)}


def _unfold(net: nn.Module, unfold: list[tuple[ConvBlock, torch.Tensor]], calib: torch.Tensor) -> None:
    """Set each block's BN from its conv's output statistics on ``calib`` (one forward, layer by layer: a hook on
    the conv sets the BN before it runs), so that BN(conv(x)) = conv(x) + bias in eval mode."""
    def hook(block: ConvBlock, bias: torch.Tensor) -> Any:
        def set_bn(_m: nn.Module, _i: object, z: torch.Tensor) -> None:
            var, mean = torch.var_mean(z.float(), dim=(0, 2, 3), correction=0)
            bn = block.bn
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean + bias)
        return set_bn

    handles = [b.conv.register_forward_hook(hook(b, bias)) for b, bias in unfold]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(calib)
    finally:
        for h in handles:
            h.remove()
        net.train(was)


def frozen_layers(net: nn.Module, spec: str | None) -> list[str]:
    """``"conv1..conv6"`` (a range) or ``"conv1,conv2"`` -> those layer names, each checked to exist."""
    if not spec:
        return []
    names = layer_names(net)  # type: ignore[arg-type]
    out: list[str] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"([a-z]+\d+)\.\.([a-z]+\d+)", part)
        ends = [m.group(1), m.group(2)] if m else [part]
        bad = [e for e in ends if e not in names]
        if bad or not part:
            raise AllconvError(f"--freeze {spec!r}: no layer {bad[0] if bad else '(empty)'!r}; give a range such as "
                               f"conv1..conv6 or names from: {', '.join(names)}")
        i, j = names.index(ends[0]), names.index(ends[-1])
        if j < i:
            raise AllconvError(f"--freeze {spec!r}: {ends[0]} comes after {ends[-1]}; write the range first..last")
        out += names[i:j + 1]
    if names[-1] in out:
        raise AllconvError(f"--freeze {spec!r} would freeze the class layer {names[-1]}: nothing left to train")
    return list(dict.fromkeys(out))


def freeze(net: nn.Module, layers: list[str]) -> None:
    """No gradients for ``layers``' parameters (the optimizer then leaves them, weight decay included)."""
    for name in layers:
        for p in net.get_submodule(name).parameters():
            p.requires_grad_(False)


def frozen_eval(net: nn.Module, layers: list[str]) -> None:
    """After ``net.train()``: frozen layers back to eval, so their BN keeps its running statistics."""
    for name in layers:
        net.get_submodule(name).eval()
