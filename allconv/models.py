"""The paper's 12 nets (Springenberg et al. 2014, Tables 1-2), as plain ``nn.Sequential`` models.

Every layer a user can name is a top-level child: ``conv1``..``convK`` (conv [+ BN] + ReLU, so the module's output is
the feature map after that conv's ReLU), ``pool1``/``pool2`` (max-pooling nets), ``drop0``..``drop2`` (dropout), then
``gap`` (global average over the final 6x6 maps) and ``flatten``. Outputs are logits; softmax lives in the loss.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import AllconvError

BASES = {  # each stage: (kernel, width) of its convs; a downsampling follows stages 1 and 2
    "a": [[(5, 96)], [(5, 192)]],
    "b": [[(5, 96), (1, 96)], [(5, 192), (1, 192)]],
    "c": [[(3, 96), (3, 96)], [(3, 192), (3, 192)]],
}
VARIANTS = {"model": "", "strided-cnn": "strided", "convpool-cnn": "convpool", "all-cnn": "allcnn"}
_NAMES = [f"{v}-{b}" for b in BASES for v in VARIANTS]


def names() -> list[str]:
    """The 12 model names, in the paper's order (A, B, C; base, Strided, ConvPool, All-CNN)."""
    return list(_NAMES)


class ConvBlock(nn.Sequential):
    """conv -> [BatchNorm] -> ReLU; its output is the layer's feature map."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
                 batchnorm: bool = False) -> None:
        pad = kernel // 2 if padding is None else padding
        layers: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, kernel, stride, pad, bias=not batchnorm))]
        if batchnorm:
            layers.append(("bn", nn.BatchNorm2d(cout)))
        layers.append(("relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


class AllConvNet(nn.Sequential):
    """One of the 12 nets; ``name`` is kept so checkpoints and the UI can say which."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", name: str = "custom") -> None:
        super().__init__(layers)
        self.name = name  # slicing (``net[:5]``) gives an AllConvNet named "custom"


def _build(name: str, num_classes: int, dropout: bool, batchnorm: bool) -> "OrderedDict[str, nn.Module]":
    variant, base = name.rsplit("-", 1)
    kind = VARIANTS[variant]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n_conv = 0
    cin = 3

    def conv(cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> None:
        nonlocal n_conv, cin
        n_conv += 1
        layers[f"conv{n_conv}"] = ConvBlock(cin, cout, kernel, stride, padding, batchnorm)
        cin = cout

    if dropout:
        layers["drop0"] = nn.Dropout(0.2)
    for stage, convs in enumerate(BASES[base], start=1):
        for i, (kernel, width) in enumerate(convs):
            last = i == len(convs) - 1
            conv(width, kernel, stride=2 if (kind == "strided" and last) else 1)
        width = convs[-1][1]
        if kind == "convpool":
            conv(width, 3)
        if kind == "allcnn":
            conv(width, 3, stride=2)
        elif kind != "strided":
            layers[f"pool{stage}"] = nn.MaxPool2d(3, stride=2, padding=1)
        if dropout:
            layers[f"drop{stage}"] = nn.Dropout(0.5)
    conv(192, 3, padding=0)  # unpadded: 8x8 -> 6x6, the paper's "global averaging over 6x6"
    conv(192, 1)
    conv(num_classes, 1)  # the class layer keeps its ReLU, as in the original
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return layers


def _key(name: str) -> str:
    """A model name as ``names()`` spells it (``ALL_CNN_C`` -> ``all-cnn-c``); unknown names are one clear line."""
    key = name.lower().replace("_", "-")
    if key not in _NAMES:
        raise AllconvError(f"unknown model {name!r}; choose one of: {', '.join(_NAMES)}")
    return key


def create(name: str, num_classes: int = 10, dropout: bool = True, batchnorm: bool = False) -> AllConvNet:
    """Build one of the 12 nets by name (see ``names()``), He-initialized, biases zero."""
    key = _key(name)
    if num_classes < 1:
        raise AllconvError(f"num_classes must be >= 1, got {num_classes}")
    model = AllConvNet(_build(key, num_classes, dropout, batchnorm), key)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def min_input_size(name: str) -> int:
    """The smallest square input side (pixels) for which net ``name`` still gives a >= 1x1 map to global averaging:
    walk its convs and pools backwards, each needing ``stride * (out - 1) + kernel - 2 * padding`` input pixels."""
    with torch.device("meta"):  # no weights are allocated
        layers = _build(_key(name), 1, dropout=False, batchnorm=False)
    side = 1
    for module in reversed(list(layers.values())):
        op = module.conv if isinstance(module, ConvBlock) else module
        if isinstance(op, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (v[0] if isinstance(v, tuple) else v for v in (op.kernel_size, op.stride, op.padding))
            side = max(1, s * (side - 1) + k - 2 * p)
    return side


def check_input_size(name: str, h: int, w: int) -> None:
    """Refuse ``h x w`` images that net ``name`` shrinks to nothing, in one line naming the smallest size it takes."""
    need = min_input_size(name)
    if min(h, w) < need:
        raise AllconvError(f"images are {h}x{w} but {_key(name)} needs at least {need}x{need}; resize them or use a "
                           "different dataset")


def layer_names(model: nn.Module) -> list[str]:
    """The user-facing layers of a net in forward order: ``conv*`` and ``pool*`` children."""
    return [n for n, _ in model.named_children() if n.startswith(("conv", "pool"))]


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count, as in the paper's tables."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def fold_batchnorm(model: AllConvNet) -> AllConvNet:
    """The same function in eval mode without BatchNorm: each conv+BN becomes one biased conv, so a net trained with
    BN ships as exactly the paper's architecture (and parameter count). Dropout is dropped too (identity in eval)."""
    name = getattr(model, "name", "custom")
    num_classes = model.get_submodule(layer_names(model)[-1]).conv.out_channels
    plain = create(name, num_classes=num_classes, dropout=False, batchnorm=False)
    for key, block in model.named_children():
        if not isinstance(block, ConvBlock):
            continue
        conv, target = block.conv, plain.get_submodule(key).conv
        bn = getattr(block, "bn", None)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
        if bn is None:
            target.weight.copy_(conv.weight)
            target.bias.copy_(bias)
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        target.weight.copy_(conv.weight * scale[:, None, None, None])
        target.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return plain.to(next(model.parameters()).device).eval()
