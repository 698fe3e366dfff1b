"""vis.cone: reconstructions computed on each target's cone equal the full-image ones at every map position (convs,
strided convs, max pools, BN, unpadded convs, all three methods); the cone's input span is the receptive field; nets
it cannot crop exactly are declined (``chain`` is None), so callers take the full path."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from allconv.errors import AllconvError
from allconv.models import AllConvNet, ConvBlock, create
from vis import METHODS, activations, receptive_field, reconstruct_methods_at
from vis.cone import chain, jumps, map_sizes, plan, reconstruct_cone


def _mini(pool: bool, batchnorm: bool = True) -> AllConvNet:
    """All-CNN-C's geometry (or Model C's max pools) with 4-8 channels and BN on random running statistics."""
    torch.manual_seed(0)
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=ConvBlock(3, 4, 3, batchnorm=batchnorm),
                                                      conv2=ConvBlock(4, 4, 3, batchnorm=batchnorm))
    layers["pool1" if pool else "conv3"] = nn.MaxPool2d(3, 2, padding=1) if pool else ConvBlock(4, 4, 3, stride=2)
    layers.update(conv4=ConvBlock(4, 8, 3), conv5=ConvBlock(8, 8, 3, batchnorm=batchnorm))
    layers["pool2" if pool else "conv6"] = nn.MaxPool2d(3, 2, padding=1) if pool else ConvBlock(8, 8, 3, stride=2)
    layers.update(conv7=ConvBlock(8, 8, 3, padding=0), conv8=ConvBlock(8, 5, 1), gap=nn.AdaptiveAvgPool2d(1),
                  flatten=nn.Flatten())
    net = AllConvNet(layers, "mini")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2.0), m.weight.data.normal_(), m.bias.data.normal_()
    return net.eval()


@pytest.mark.parametrize("pool,layer,size", [(False, "conv1", 8), (False, "conv3", 16), (False, "conv6", 16),
                                             (False, "conv7", 16), (True, "pool1", 16), (True, "conv4", 16),
                                             (True, "pool2", 16), (True, "conv7", 16)])
def test_cone_equals_full_image_at_every_position(pool: bool, layer: str, size: int) -> None:
    net = _mini(pool)
    x = torch.randn(6, 3, size, size)
    h, w = activations(net, x[:1], layer).shape[2:]
    pos = torch.cartesian_prod(torch.arange(h), torch.arange(w))
    n = len(pos)
    idx = torch.arange(n) % len(x)
    channels = torch.arange(n) % activations(net, x[:1], layer).shape[1]
    steps = chain(net, layer)
    assert steps is not None
    got = reconstruct_cone(net, steps, x[idx], methods=METHODS, layer=layer, channels=channels, positions=pos,
                           batch_size=7)
    want = reconstruct_methods_at(net, x[idx], methods=METHODS, layer=layer, channels=channels, positions=pos)
    for m in METHODS:
        assert want[m].abs().amax() > 0
        torch.testing.assert_close(got[m], want[m], rtol=1e-4, atol=1e-5 * float(want[m].abs().max()))


def test_cone_input_span_is_the_receptive_field() -> None:
    net = create("all-cnn-c")
    steps = chain(net, "conv6")
    rf = receptive_field(net, "conv6", input_size=(32, 32))
    (r0, r1), (c0, c1) = plan(steps)[0]
    assert (r1 - r0, c1 - c0) == (rf.size, rf.size) and (r0, c0) == (rf.start, rf.start)
    assert jumps(steps)[0] == (rf.stride, rf.stride) and map_sizes(steps, (32, 32))[-1] == (8, 8)


def test_cone_is_a_fraction_of_the_full_work() -> None:
    """The conv multiply-adds of conv6's cone vs a 24x24 window's forward (the field's smallest aligned window)."""
    net = create("all-cnn-c")
    steps = chain(net, "conv6")
    convs = [s for s in steps if not isinstance(s, nn.Module)]
    sizes = map_sizes(steps, (24, 24))
    cone = sum(op.module.weight.numel() * (r1 - r0) * (c1 - c0)
               for op, ((r0, r1), (c0, c1)) in zip(convs, plan(steps)[1:]))
    full = sum(op.module.weight.numel() * h * w for op, (h, w) in zip(convs, sizes[1:]))
    assert 4 * cone < full


def test_cone_refuses_positions_off_the_map() -> None:
    net = _mini(False)
    with pytest.raises(AllconvError, match=r"position \(4, 0\) out of range for layer 'conv6' with a 4x4 map"):
        reconstruct_cone(net, chain(net, "conv6"), torch.randn(1, 3, 16, 16), methods=["guided"], layer="conv6",
                         channels=torch.tensor([0]), positions=torch.tensor([[4, 0]]))


class _Wrapped(AllConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - its own forward: not a plain chain
        return super().forward(x)


def _hooked() -> nn.Module:
    net = _mini(False)
    net.conv2[0].register_forward_hook(lambda *a: None)
    return net


def _backward_hooked() -> nn.Module:
    net = _mini(False)
    net.conv2[0].register_full_backward_hook(lambda m, gi, go: (gi[0] * 2,))
    return net


@pytest.mark.parametrize("make", [
    lambda: _Wrapped(OrderedDict((k, v) for k, v in _mini(False).named_children())),
    _hooked,
    _backward_hooked,
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU()),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.ReLU()),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.ReLU()),
], ids=["own-forward", "hooked", "backward-hooked", "ceil-mode", "reflect-pad", "batch-stats-bn", "upsample"])
def test_chain_declines_what_it_cannot_crop_exactly(make) -> None:
    net = make()
    layer = "conv6" if isinstance(net, AllConvNet) else "2"
    assert chain(net, layer) is None


def test_chain_stops_at_the_layer() -> None:
    net = _mini(False)
    assert len(chain(net, "conv1")) == 3  # conv, bn, relu
    assert len(chain(net, "conv1.conv")) == 1
    assert chain(net, None) is None


@pytest.mark.parametrize("position", ["max", (1, 2)])
def test_reconstruct_takes_the_cone_on_chain_nets(position, monkeypatch: pytest.MonkeyPatch) -> None:
    """``vis.reconstruct`` of single units on a chain net goes through the cone, with the full path's numbers (and
    "max" picks the same unit)."""
    rec = sys.modules["vis.reconstruct"]  # (the package re-exports a function of the same name)

    net, x = _mini(True), torch.randn(2, 3, 16, 16)
    calls = []
    monkeypatch.setattr(rec, "reconstruct_cone", lambda *a, **k: calls.append(1) or reconstruct_cone(*a, **k))
    got = rec.reconstruct(net, x, method="deconvnet", layer="conv5", channel=[0, 3, 7], position=position)
    assert calls
    monkeypatch.setattr(rec, "chain", lambda *a: None)
    want = rec.reconstruct(net, x, method="deconvnet", layer="conv5", channel=[0, 3, 7], position=position)
    assert want.abs().amax() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
