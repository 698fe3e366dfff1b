"""vis.modes: the three ReLU backward rules, on every way of calling or spelling a relu; other activations and clamps
that are not ReLUs refused."""

from __future__ import annotations

import contextlib
import re
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allconv.errors import AllconvError
from vis import METHODS, backward_mode
from vis.modes import shared_backward

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


INPLACE = {  # every in-place spelling: the base of the view it changes must see the rule
    "Tensor.relu_": lambda z: z.relu_(),
    "torch.relu_": lambda z: torch.relu_(z),
    "F.relu(z, True)": lambda z: F.relu(z, True),
    "nn.ReLU(inplace=True)": lambda z: nn.ReLU(inplace=True)(z),
    "Tensor.clamp_(0)": lambda z: z.clamp_(0),
    "Tensor.clip_(min=0)": lambda z: z.clip_(min=0),
    "torch.clamp_min_": lambda z: torch.clamp_min_(z, 0),
    "F.threshold(z, 0, 0, True)": lambda z: F.threshold(z, 0, 0, True),
    "F.threshold_": lambda z: F.threshold_(z, 0, 0),
    "aten.relu_": lambda z: torch.ops.aten.relu_(z),
}


@pytest.mark.parametrize("call", list(INPLACE))
def test_inplace_relu_on_a_view(call: str) -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 6.0]], dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    with backward_mode("guided"):
        y = leaf * 1.0
        INPLACE[call](y[:, :2])
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


# --- a ReLU spelled as a clamp, a threshold, a maximum against zero or an aten op gets the rule too ----------------

Z = torch.zeros((), dtype=torch.float64)
RELU_SPELLINGS = {
    "Tensor.clamp(min=0)": lambda z: z.clamp(min=0),
    "torch.clamp(z, 0)": lambda z: torch.clamp(z, 0),
    "torch.clamp(min=0.0, max=None)": lambda z: torch.clamp(z, min=0.0, max=None),
    "Tensor.clamp_(min=0)": lambda z: z.clamp_(min=0),
    "torch.clip(z, 0)": lambda z: torch.clip(z, 0),
    "Tensor.clip_(0)": lambda z: z.clip_(0),
    "torch.clamp_min": lambda z: torch.clamp_min(z, 0),
    "Tensor.clamp_min": lambda z: z.clamp_min(0),
    "Tensor.clamp_min_": lambda z: z.clamp_min_(0),
    "clamp(min=zero tensor)": lambda z: z.clamp(min=Z),
    "F.threshold(z, 0, 0)": lambda z: F.threshold(z, 0.0, 0.0),
    "F.threshold(inplace)": lambda z: F.threshold(z, 0, 0, inplace=True),
    "F.threshold_": lambda z: F.threshold_(z, 0, 0),
    "nn.Threshold(0, 0)": lambda z: nn.Threshold(0, 0)(z),
    "torch.maximum(z, 0)": lambda z: torch.maximum(z, Z),
    "torch.maximum(zeros, z)": lambda z: torch.maximum(torch.zeros(7, dtype=torch.float64), z),
    "Tensor.maximum": lambda z: z.maximum(Z),
    "torch.max(z, 0)": lambda z: torch.max(z, Z),
    "torch.fmax(z, 0)": lambda z: torch.fmax(z, Z),
    "aten.relu": lambda z: torch.ops.aten.relu(z),
    "aten.relu_.default": lambda z: torch.ops.aten.relu_.default(z),
    "aten.clamp_min": lambda z: torch.ops.aten.clamp_min(z, 0),
    "aten.threshold": lambda z: torch.ops.aten.threshold(z, 0, 0),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("call", list(RELU_SPELLINGS))
def test_rule_applies_to_every_relu_spelling(method: str, call: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    got = _grad_through(RELU_SPELLINGS[call], method, x, g)
    assert torch.equal(got, RULES[method](g, x))
    with backward_mode(method):  # the forward is torch's own op, bit for bit
        out = RELU_SPELLINGS[call](x.clone().requires_grad_(True) * 1.0)
    assert torch.equal(out, RELU_SPELLINGS[call](x.clone()))


def test_maximum_against_a_larger_zero_tensor_sums_over_the_broadcast() -> None:
    x = torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], dtype=torch.float64)
    got = _grad_through(lambda z: torch.maximum(z, torch.zeros(2, 3, dtype=torch.float64)), "guided", x, g)
    assert torch.equal(got, RULES["guided"](g, x.expand(2, 3)).sum(0))


NOT_RELUS = {
    "clamp(min=0.5)": lambda z: z.clamp(min=0.5),
    "clamp(0, 6) (relu6)": lambda z: torch.clamp(z, 0, 6),
    "clip(-1, 1) (hardtanh)": lambda z: z.clip(-1, 1),
    "clamp(max=0)": lambda z: z.clamp(max=0),
    "clamp_max": lambda z: torch.clamp_max(z, 1.0),
    "clamp_min(0.1)": lambda z: z.clamp_min(0.1),
    "clamp(min=tensor that needs grad)": lambda z: torch.clamp(z.detach(), min=z),
    "threshold(0.1, 0)": lambda z: F.threshold(z, 0.1, 0.0),
    "threshold(0, -1)": lambda z: F.threshold(z, 0.0, -1.0),
    "maximum(z, ones)": lambda z: torch.maximum(z, torch.ones(())),
    "maximum(z, z2) (maxout)": lambda z: torch.maximum(z, z * 2),
    "minimum(z, 0)": lambda z: torch.minimum(z, torch.zeros(())),
    "fmin(z, 0)": lambda z: torch.fmin(z, torch.zeros(())),
    "clip(z, 0, 6)": lambda z: torch.clip(z, 0, 6),
    "min(z, 0)": lambda z: z.min(torch.zeros(())),
    "aten.hardtanh": lambda z: torch.ops.aten.hardtanh(z),
    "F.hardtanh": lambda z: F.hardtanh(z),
    "F.relu6": lambda z: F.relu6(z),
}


@pytest.mark.parametrize("call", list(NOT_RELUS))
def test_clamps_that_are_not_relus_refused_except_for_backprop(call: str) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    for method in ("guided", "deconvnet"):
        with pytest.raises(AllconvError, match="not a ReLU; use method='backprop'"), backward_mode(method):
            NOT_RELUS[call](x * 1.0)
    with backward_mode("backprop"):
        NOT_RELUS[call](x * 1.0).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("call,named", [
    (lambda z: torch.clamp_max(z, 1.0), "clamp_max(min=None, max=1.0)"),
    (lambda z: torch.clip(z, 0, 6), "clip(min=0, max=6)"),
    (lambda z: z.clamp_min(0.1), "clamp_min(min=0.1, max=None)"),
    (lambda z: torch.clamp(z.detach(), min=z), "clamp(min=a tensor, max=None)"),
    (lambda z: torch.fmin(z, torch.zeros(())), "fmin(a, b) with a tensor that needs a gradient"),
], ids=["clamp_max", "clip", "clamp_min", "tensor-bound", "fmin"])
def test_a_refused_clamp_is_named_as_called(call, named: str) -> None:
    with pytest.raises(AllconvError, match=re.escape(f"calls {named}, which is not a ReLU")), backward_mode("guided"):
        call(torch.randn(3, requires_grad=True) * 1.0)


def test_an_out_argument_is_left_to_torch_which_refuses_it_under_autograd() -> None:
    x = torch.randn(3, requires_grad=True) * 1.0
    for mode in (contextlib.nullcontext(), backward_mode("guided")):
        with mode, pytest.raises(RuntimeError, match="out="):
            torch.clamp(x, min=0, out=torch.empty(3))


def test_a_shared_forward_applies_its_first_method_until_told_otherwise() -> None:
    x = torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    for methods in (("deconvnet",), ("deconvnet", "guided")):
        leaf = x.clone().requires_grad_(True)
        with shared_backward(methods):
            y = F.relu(leaf * 1.0)
        assert torch.equal(torch.autograd.grad(y, leaf, g)[0], RULES["deconvnet"](g, x))


def test_reductions_and_constant_clamps_pass_through() -> None:
    """max/min reductions (max-pool's switch gradient) and clamps of tensors needing no gradient: the plain gradient."""
    x = torch.tensor([[-1.0, 3.0], [2.0, -4.0]], dtype=torch.float64)

    def f(leaf: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([0.5, -0.5], dtype=torch.float64).clamp(0, 0.25)  # needs no gradient: not refused
        return (leaf.max(dim=1).values * 2.0).sum() + leaf.max() - torch.min(leaf, 0).values.sum() + (leaf * k).sum()

    leaf = x.clone().requires_grad_(True)
    with backward_mode("guided"):
        y = f(leaf)
    # by hand: 2 at each row's max, 1 at the global max, -1 at each column's min, + k = [0.25, 0] on every row
    expect = torch.tensor([[-1.0 + 0.25, 2.0 + 1.0], [2.0 + 0.25, -1.0]], dtype=torch.float64)
    assert torch.equal(torch.autograd.grad(y, leaf)[0], expect)
