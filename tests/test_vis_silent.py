"""vis.guard and checkpointing: what the backward rules cannot reach is refused in one line; what they can, is exact.

TorchScript (a scripted/traced model, a scripted submodule, a scripted function called from an eager forward) and
reentrant checkpointing are refused; non-reentrant activation checkpointing gives exactly the un-checkpointed answer,
checked against a hand-written float64 reference.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from allconv.errors import AllconvError
from vis import METHODS, backward_mode, reconstruct

RULES = {
    "backprop": lambda g, z: g * (z > 0),
    "deconvnet": lambda g, z: g.clamp_min(0),
    "guided": lambda g, z: g.clamp_min(0) * (z > 0),
}


def _x(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _vjp(fn, inp: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    leaf = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(fn(leaf), leaf, g)[0]


class Act(nn.Module):
    """A ReLU spelled by ``fn`` (the hand reference treats every Act as a ReLU)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


class Checkpointed(nn.Module):
    def __init__(self, body: nn.Sequential, reentrant: bool = False) -> None:
        super().__init__()
        self.body, self.reentrant = body, reentrant

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.body, z, use_reentrant=self.reentrant)


def _pieces() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1), Act(lambda z: z.clamp(min=0)), nn.MaxPool2d(2),
            nn.Conv2d(6, 6, 3, padding=1), Act(lambda z: F.relu(z, inplace=True)),
            nn.Conv2d(6, 5, 1), Act(lambda z: torch.maximum(z, torch.zeros((), dtype=z.dtype))),
            nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def _checkpointed_net(reentrant: bool = False) -> nn.Sequential:
    p = _pieces()
    return nn.Sequential(*p[:2], Checkpointed(nn.Sequential(*p[2:7]), reentrant), Checkpointed(nn.Sequential(*p[7:9]),
                         reentrant), *p[9:]).double().eval()


def _reference(x: torch.Tensor, method: str, target: int) -> torch.Tensor:
    """Layer by layer, keeping each input; backward by hand: the rule at every ReLU, piece VJPs elsewhere."""
    pieces = [p.double() for p in _pieces()]
    inputs, h = [], x
    with torch.no_grad():
        for p in pieces:
            inputs.append(h)
            h = torch.relu(h) if isinstance(p, (nn.ReLU, Act)) else p(h)
    g = torch.zeros_like(h)
    g[:, target] = 1
    for p, inp in reversed(list(zip(pieces, inputs))):
        g = RULES[method](g, inp) if isinstance(p, (nn.ReLU, Act)) else _vjp(p, inp, g)
    return g


@pytest.mark.parametrize("method", METHODS)
def test_non_reentrant_checkpoint_is_exact(method: str) -> None:
    x = _x()
    ref = _reference(x, method, 2)
    got = reconstruct(_checkpointed_net(), x, method=method, layer=None, channel=2)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_checkpoint_with_the_backward_after_the_block() -> None:
    """The rule is fixed at forward time, so a backward after the block (recomputing the forward) is still exact."""
    net, x = _checkpointed_net(), _x(seed=1)
    leaf = x.clone().requires_grad_(True)
    with backward_mode("guided"):
        out = net(leaf)
    out[:, 4].sum().backward()
    ref = _reference(x, "guided", 4)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(leaf.grad, ref, atol=1e-12, rtol=0)


def test_torchvision_memory_efficient_densenet_equals_the_plain_one() -> None:
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    kw = dict(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5)
    plain = tv.DenseNet(**kw).double().eval()
    efficient = tv.DenseNet(memory_efficient=True, **kw).double().eval()
    efficient.load_state_dict(plain.state_dict())
    x = _x(1, 32, seed=2)
    for method in ("guided", "deconvnet"):
        want = reconstruct(plain, x, method=method, layer=None, channel=[1, 4])
        assert want.abs().sum() > 0
        torch.testing.assert_close(reconstruct(efficient, x, method=method, layer=None, channel=[1, 4]), want,
                                   atol=1e-12, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_checkpoint_on_cuda_matches_cpu() -> None:
    """On CUDA the backward (and so the recompute) runs in the device's autograd thread: still exact."""
    x = _x()
    got = reconstruct(_checkpointed_net().cuda(), x.cuda(), method="guided", layer=None, channel=[2, 4])
    torch.testing.assert_close(got.cpu(), torch.stack([_reference(x, "guided", c) for c in (2, 4)], 1),
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_reentrant_checkpoint_refused_in_one_line(method: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AllconvError, match=r"use_reentrant=True.*use_reentrant=False"):
            reconstruct(_checkpointed_net(reentrant=True), _x(1), method=method, layer=None, channel=0)


# --- TorchScript -------------------------------------------------------------------------------------------------


def _eager() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()


def _scripted(kind: str) -> nn.Module:
    """The eager net scripted, traced, or eager with one scripted submodule ('2': conv + ReLU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated: all the more reason to refuse it clearly
        if kind == "trace":
            return torch.jit.trace(_eager(), _x(1))
        if kind == "script":
            return torch.jit.script(_eager())
        nested = _eager()
        nested[2] = torch.jit.script(nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()).double())
        del nested[3]
        return nested


@pytest.mark.parametrize("kind", ["script", "trace", "nested"])
def test_torchscript_refused_under_guided_and_deconvnet(kind: str) -> None:
    model = _scripted(kind)
    where = "submodule '2'" if kind == "nested" else "the model"
    for method in ("guided", "deconvnet"):
        with pytest.raises(AllconvError, match=f"{where} is TorchScript .*pass the eager nn.Module"):
            reconstruct(model, _x(1), method=method, layer=None, channel=0)


def test_torchscript_backprop_is_the_plain_gradient() -> None:
    eager, x = _eager(), _x(1)
    script = _scripted("script")
    torch.testing.assert_close(reconstruct(script, x, method="backprop", layer=None, channel=2),
                               reconstruct(eager, x, method="backprop", layer=None, channel=2), atol=1e-12, rtol=0)


def _block(z: torch.Tensor) -> torch.Tensor:
    return torch.relu(z) * 2.0


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _scripted_block = torch.jit.script(_block)


class CallsScript(nn.Module):
    """An eager model whose forward calls a scripted function: no module to find, but its graph shows it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _scripted_block(self.conv(z)).mean((2, 3))


def test_scripted_function_in_an_eager_forward_refused() -> None:
    model, x = CallsScript().double().eval(), _x(1)
    for _ in range(3):  # TorchScript profiles the first runs (ReluBackward0), then optimizes (DifferentiableGraph)
        with pytest.raises(AllconvError, match="cannot reach it .*use method='backprop'"):
            reconstruct(model, x, method="guided", layer=None, channel=1)
    assert reconstruct(model, x, method="backprop", layer=None, channel=1).abs().sum() > 0
