"""vis.modes: the three ReLU backward rules, on every way of calling a relu, and the refusal of other activations."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allconv.errors import AllconvError
from vis import METHODS, backward_mode

RULES = {
    "backprop": lambda g, x: g * (x > 0),
    "deconvnet": lambda g, x: g.clamp_min(0),
    "guided": lambda g, x: g.clamp_min(0) * (x > 0),
}
RELU_CALLS = {
    "F.relu": lambda z: F.relu(z),
    "F.relu_inplace": lambda z: F.relu(z, inplace=True),
    "F.relu_": lambda z: F.relu_(z),
    "torch.relu": lambda z: torch.relu(z),
    "torch.relu_": lambda z: torch.relu_(z),
    "Tensor.relu": lambda z: z.relu(),
    "Tensor.relu_": lambda z: z.relu_(),
    "nn.ReLU": lambda z: nn.ReLU()(z),
    "nn.ReLU_inplace": lambda z: nn.ReLU(inplace=True)(z),
}


def _grad_through(call, method: str, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    with backward_mode(method):
        y = call(leaf * 1.0)  # a non-leaf, so the in-place variants are legal
    return torch.autograd.grad(y, leaf, g)[0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("call", list(RELU_CALLS))
def test_rule_applies_to_every_relu_call(method: str, call: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    got = _grad_through(RELU_CALLS[call], method, x, g)
    assert torch.equal(got, RULES[method](g, x))


def test_inplace_relu_keeps_its_semantics_on_a_skip_connection() -> None:
    """relu_ mutates its input, so an alias kept for a skip sees the relu'd values -- forward and gradient as torch."""
    x = torch.tensor([-1.0, 2.0, -3.0, 4.0], dtype=torch.float64)

    def f(leaf: torch.Tensor) -> torch.Tensor:
        y = leaf * 2.0
        alias = y
        z = F.relu(y, inplace=True)
        return (z * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).sum() + alias.sum()

    leaf = x.clone().requires_grad_(True)
    plain_out = f(leaf)
    plain = torch.autograd.grad(plain_out, leaf)[0]
    leaf2 = x.clone().requires_grad_(True)
    with backward_mode("guided"):
        out = f(leaf2)
    assert out.item() == plain_out.item()
    assert torch.equal(torch.autograd.grad(out, leaf2)[0], plain)  # all upstream gradients positive: guided = plain


def test_inplace_relu_on_a_view() -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 6.0]], dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    with backward_mode("guided"):
        y = leaf * 1.0
        y[:, :2].relu_()
    got = torch.autograd.grad(y, leaf, g)[0]
    expect = g.clone()
    expect[:, :2] = RULES["guided"](g[:, :2], x[:, :2])
    assert torch.equal(got, expect)


ACTIVATIONS = [nn.GELU(), nn.Sigmoid(), nn.SiLU(), nn.ELU(), nn.LeakyReLU(), nn.Tanh(), nn.Softplus(), nn.ReLU6(),
               nn.Mish(), nn.Hardswish(), lambda z: z.sigmoid(), lambda z: torch.tanh(z)]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_other_activations_refused_except_for_backprop(act) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    for method in ("guided", "deconvnet"):
        with pytest.raises(AllconvError, match="backprop"), backward_mode(method):
            act(x * 1.0)
    with backward_mode("backprop"):
        act(x * 1.0).sum().backward()
    assert x.grad is not None


def test_unknown_method() -> None:
    with pytest.raises(AllconvError, match="guided, deconvnet, backprop"), backward_mode("lrp"):
        pass


def test_mode_is_scoped_to_the_block_even_on_exception() -> None:
    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    with pytest.raises(RuntimeError), backward_mode("deconvnet"):
        raise RuntimeError("boom")
    y = torch.relu(x * 1.0)
    assert torch.equal(torch.autograd.grad(y, x, torch.tensor([1.0, -1.0]))[0], torch.tensor([0.0, -1.0]))


def test_mode_is_thread_local() -> None:
    """A mode active in one thread does not reach a relu called in another."""
    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    inside, result = threading.Event(), {}

    def other() -> None:
        inside.wait(5)
        y = torch.relu(x * 1.0)
        result["g"] = torch.autograd.grad(y, x, torch.tensor([1.0, -1.0]))[0]

    t = threading.Thread(target=other)
    t.start()
    with backward_mode("deconvnet"):
        inside.set()
        t.join(5)
    assert torch.equal(result["g"], torch.tensor([0.0, -1.0]))


def test_no_grad_calls_pass_through() -> None:
    x = torch.tensor([-1.0, 2.0])
    with backward_mode("guided"), torch.no_grad():
        y = x.clone()
        F.relu(y, inplace=True)
    assert torch.equal(y, torch.tensor([0.0, 2.0]))
