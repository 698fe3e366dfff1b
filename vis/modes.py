"""Backward rules at ReLUs: backprop, deconvnet, guided backprop -- exact on any net built from ReLUs.

At every ReLU with forward input x and incoming gradient g:

* ``backprop``  passes ``g * [x > 0]`` (the ordinary gradient),
* ``deconvnet`` passes ``relu(g)`` (Zeiler & Fergus 2014),
* ``guided``    passes ``relu(g) * [x > 0]`` (Springenberg et al. 2014).

Everything else (convs, max-pool switches, average pooling, BN in eval) keeps its ordinary gradient.

Why a torch function mode and not module hooks (as captum does): a mode sees every relu *call* -- ``nn.ReLU`` modules
(in place or not, called once or reused several times in one forward), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and
the in-place ``relu_`` variants -- so nothing is missed, and it leaves no trace on the model. Torch function modes are
thread-local, so a mode active in one thread never affects another thread using the same model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from allconv.errors import AllconvError

METHODS = ("guided", "deconvnet", "backprop")


class _RuleRelu(torch.autograd.Function):
    """relu forward; subclasses define ``rule(g, mask)`` for the backward."""

    @staticmethod
    def rule(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x > 0)
        return x.clamp_min(0)

    @classmethod
    def backward(cls, ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return cls.rule(g, mask)


class _RuleReluInplace(_RuleRelu):
    """In-place relu (``relu_``) with the same rule: mutates and returns its input, as torch's own ``relu_`` does."""

    @classmethod
    def forward(cls, ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x > 0)  # a fresh bool tensor: the in-place update below does not touch it
        ctx.mark_dirty(x)
        return x.clamp_min_(0)


def _guided(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g.clamp_min(0) * mask


def _deconvnet(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g.clamp_min(0)


def _backprop(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g * mask


def _functions(rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str) -> tuple[type, type]:
    out = type(f"{name}Relu", (_RuleRelu,), {"rule": staticmethod(rule)})
    inplace = type(f"{name}ReluInplace", (_RuleReluInplace,), {"rule": staticmethod(rule)})
    return out, inplace


_RULES: dict[str, tuple[type, type]] = {
    "guided": _functions(_guided, "Guided"),
    "deconvnet": _functions(_deconvnet, "Deconvnet"),
    "backprop": _functions(_backprop, "Backprop"),
}

_RELU_OUT = {torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}  # F.relu_ is torch.relu_


def _other_activations() -> dict[Callable, str]:
    """Non-ReLU activations whose backward the rules above do not define: refused unless method is backprop."""
    found: dict[Callable, str] = {}
    for owner, names in (
        (F, "gelu silu mish elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ rrelu rrelu_ prelu softplus relu6 "
            "hardtanh hardtanh_ hardswish hardsigmoid sigmoid tanh logsigmoid softsign tanhshrink threshold "
            "threshold_ glu"),
        (torch, "sigmoid sigmoid_ tanh tanh_ selu selu_ celu celu_ rrelu rrelu_ prelu threshold threshold_"),
        (torch.Tensor, "sigmoid sigmoid_ tanh tanh_"),
        (torch.special, "expit"),
        (torch._C._nn, "gelu silu silu_ mish mish_ elu elu_ leaky_relu leaky_relu_ softplus hardtanh hardtanh_ "
                       "hardswish hardswish_ hardsigmoid hardsigmoid_ log_sigmoid glu"),
    ):
        for n in names.split():
            fn = getattr(owner, n, None)
            if fn is not None:
                found[fn] = n
    return found


_OTHER = _other_activations()


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


class _BackwardMode(TorchFunctionMode):
    """While active (in this thread only), every relu call runs the chosen rule's autograd Function."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.out_fn, self.inplace_fn = _RULES[method]

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.relu:
            x = _arg(args, kwargs, 0, "input", None)
            return self._relu(x, inplace=bool(_arg(args, kwargs, 1, "inplace", False)))
        if func in _RELU_OUT:
            return self._relu(_arg(args, kwargs, 0, "input", None), inplace=False)
        if func in _RELU_INPLACE:
            return self._relu(_arg(args, kwargs, 0, "input", None), inplace=True)
        if func in _OTHER:
            raise AllconvError(
                f"method {self.method!r} is defined only for ReLU nets, but the model calls {_OTHER[func]}; "
                "use method='backprop' for this model")
        return func(*args, **kwargs)

    def _relu(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.relu_(x) if inplace else torch.relu(x)  # no graph: the rule cannot matter
        return self.inplace_fn.apply(x) if inplace else self.out_fn.apply(x)


def check_method(method: str) -> str:
    """Return ``method`` if it is one of ``METHODS``, else raise a one-line AllconvError naming them."""
    if method not in METHODS:
        raise AllconvError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


@contextlib.contextmanager
def backward_mode(method: str) -> Iterator[None]:
    """Within the block (this thread only), gradients through ReLUs follow ``method``'s rule.

    ``backprop`` is the plain gradient and installs nothing. ``guided``/``deconvnet`` refuse nets that call other
    activation functions (GELU, sigmoid, tanh, SiLU, ELU, LeakyReLU, softplus, ...) with an AllconvError. Nothing is
    attached to any model, so leaving the block (normally or by an exception) leaves every model as it was. The rule is
    fixed at forward time: run the forward inside the block; the backward may run inside or after it.
    """
    check_method(method)
    if method == "backprop":
        yield
        return
    with _BackwardMode(method):
        yield
