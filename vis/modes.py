"""Backward rules at ReLUs: backprop, deconvnet, guided backprop -- exact on any net built from ReLUs.

At every ReLU with forward input x and incoming gradient g:

* ``backprop``  passes ``g * [x > 0]`` (the ordinary gradient),
* ``deconvnet`` passes ``relu(g)`` (Zeiler & Fergus 2014),
* ``guided``    passes ``relu(g) * [x > 0]`` (Springenberg et al. 2014).

Everything else (convs, max-pool switches, average pooling, BN in eval) keeps its ordinary gradient.

Why a torch function mode and not module hooks (as captum does): a mode sees every relu *call* -- ``nn.ReLU`` modules
(in place or not, called once or reused several times in one forward), ``F.relu``, ``torch.relu``, ``Tensor.relu``,
the in-place ``relu_`` variants and ``torch.ops.aten`` ops (as ``torch.export``'ed graphs call them) -- so nothing is
missed, and it leaves no trace on the model. Torch function modes are thread-local, so a mode active in one thread
never affects another thread using the same model.

A ReLU is a ReLU however it is spelled: ``clamp(min=0)`` / ``clip(0)``, ``clamp_min(0)``, ``threshold(x, 0, 0)``
(``nn.Threshold(0, 0)``), and ``maximum`` / ``fmax`` / two-tensor ``max`` of x and a constant all-zero tensor
(``torch.maximum(x, torch.zeros(()))``, broadcasting allowed) all get the rule, in place or not. Its forward is torch's
own op, bit for bit. What is not a ReLU is refused under ``guided``/``deconvnet`` with a
one-line AllconvError rather than given the plain gradient: other activations (GELU, sigmoid, ReLU6, hardtanh, ...),
clamps with another bound (``clamp(min=0.5)``, ``clamp(0, 6)``, ``clamp_max``), ``maximum`` against anything but a
constant zero, and ``minimum``. A ReLU written as arithmetic (``x * (x > 0)``, ``torch.where``) is invisible to any
mode: don't. A ReLU inside TorchScript or another opaque piece is invisible too: ``vis.guard`` refuses those.

One forward can serve all three methods (``shared_backward``): the masks are the same, only the rule applied to the
incoming gradient differs, so each ReLU call saves its mask once and reads the rule from a ``Switch`` when the
backward runs; one backward pass per method gives the numbers a forward under each ``backward_mode`` would.

Activation checkpointing (``torch.utils.checkpoint``, ``use_reentrant=False``) is exact: each rule saves for backward
exactly what torch's own op saves (same count, shapes and dtypes, in torch's order), so when the backward re-runs the
forward without the mode, checkpoint hands the rule torch's recomputed tensors, whose signs are the rule's mask.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from typing import Any, Callable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from allconv.errors import AllconvError

METHODS = ("guided", "deconvnet", "backprop")


class _RuleRelu(torch.autograd.Function):
    """One ReLU call: torch's own op forward; ``rule(g, mask)`` backward, mask = [input > 0]. The rule is the
    subclass's or, given a ``Switch`` (``shared_backward``), whichever method the switch names when the backward
    runs."""

    @staticmethod
    def rule(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx: Any, switch: Optional["Switch"], call: Callable[[], torch.Tensor],  # type: ignore[override]
                inplace: bool, first: torch.Tensor, second: Optional[torch.Tensor]) -> torch.Tensor:
        """``call`` runs the caller's op on ``first`` (and a zero ``second``); grad is off here, so it is plain."""
        ctx.switch = switch
        out = call()
        if inplace:
            ctx.mark_dirty(first)
        ctx.shapes = (first.shape, None if second is None else second.shape)
        # What torch's own op saves: its output/input (one tensor, same signs), or (other, self) for two operands.
        ctx.save_for_backward(*((out,) if second is None else (second, first)))
        return out

    @classmethod
    def backward(cls, ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        mask = functools.reduce(torch.logical_or, [t > 0 for t in ctx.saved_tensors])  # the zero operand adds none
        grad = (cls.rule if ctx.switch is None else _RULE_FNS[ctx.switch.method])(g, mask)
        return None, None, None, *(grad.sum_to_size(s) if need else None
                                   for s, need in zip(ctx.shapes, ctx.needs_input_grad[3:]))


def _guided(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g.clamp_min(0) * mask


def _deconvnet(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g.clamp_min(0)


def _backprop(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, g, 0.0)  # torch's own ReLU backward (threshold_backward), bit for bit


_RULE_FNS = {"guided": _guided, "deconvnet": _deconvnet, "backprop": _backprop}
_RULES: dict[str, type] = {name: type(f"{name.capitalize()}Relu", (_RuleRelu,), {"rule": staticmethod(rule)})
                           for name, rule in _RULE_FNS.items()}


class Switch:
    """The rule of a ``shared_backward`` forward: set ``method`` before each backward pass."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        self.methods, self.method = methods, methods[0]

    def use(self, method: str) -> None:
        if method not in self.methods:
            raise AllconvError(f"method {method!r} was not among this forward's methods {self.methods}")
        self.method = method


def _other_activations() -> dict[Callable, str]:
    """Non-ReLU activations whose backward the rules above do not define: refused unless method is backprop."""
    found: dict[Callable, str] = {}
    for owner, names in (
        (F, "gelu silu mish elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ rrelu rrelu_ prelu softplus relu6 "
            "hardtanh hardtanh_ hardswish hardsigmoid sigmoid tanh logsigmoid softsign tanhshrink glu"),
        (torch, "sigmoid sigmoid_ tanh tanh_ selu selu_ celu celu_ rrelu rrelu_ prelu"),
        (torch.Tensor, "sigmoid sigmoid_ tanh tanh_"),
        (torch.special, "expit"),
        (torch._C._nn, "gelu silu silu_ mish mish_ elu elu_ leaky_relu leaky_relu_ softplus hardtanh hardtanh_ "
                       "hardswish hardswish_ hardsigmoid hardsigmoid_ log_sigmoid glu relu6"),
    ):
        for n in names.split():
            fn = getattr(owner, n, None)
            if fn is not None:
                found[fn] = n
    return found


_OTHER = _other_activations()

# A spelling looks at one call and returns: None (nothing in it needs a gradient: the rule cannot matter), the ReLU it
# is as (first, second, inplace) (second: the zero operand of a two-operand spelling, else None), or a description of
# the non-ReLU it is (refused). F.relu and F.threshold hand the mode their ``inplace`` flag by keyword, whatever the
# caller wrote (torch's handle_torch_function).
Found = Union[None, str, tuple[torch.Tensor, Optional[torch.Tensor], bool]]


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _grad(v: object) -> bool:
    return torch.is_tensor(v) and v.requires_grad


def _zero(v: object) -> bool:
    """A constant zero: the number 0, or a tensor of zeros that needs no gradient."""
    if torch.is_tensor(v):
        return not v.requires_grad and not v.is_complex() and bool((v == 0).all())
    return isinstance(v, numbers.Real) and v == 0


def _show(v: object) -> str:
    return "a tensor" if torch.is_tensor(v) else repr(v)


def _relu(inplace: bool) -> Callable[[tuple, dict], Found]:
    def spell(args: tuple, kwargs: dict) -> Found:
        x = _arg(args, kwargs, 0, "input")
        return (x, None, inplace or bool(kwargs.get("inplace"))) if _grad(x) else None  # F.relu: by keyword
    return spell


def _clamp(name: str, inplace: bool, lo_at: int | None, hi_at: int | None) -> Callable[[tuple, dict], Found]:
    """clamp/clip (lo_at=1, hi_at=2), clamp_min (1, None), clamp_max (None, 1): the positions of min and max (None:
    the op has no such bound). A ReLU iff min is 0 and max is None."""
    def spell(args: tuple, kwargs: dict) -> Found:
        x = _arg(args, kwargs, 0, "input")
        lo = None if lo_at is None else _arg(args, kwargs, lo_at, "min")
        hi = None if hi_at is None else _arg(args, kwargs, hi_at, "max")
        if not (_grad(x) or _grad(lo) or _grad(hi)):
            return None
        if _grad(x) and hi is None and lo is not None and _zero(lo):
            return x, lo if torch.is_tensor(lo) else None, inplace
        return f"{name}(min={_show(lo)}, max={_show(hi)})"
    return spell


def _threshold(inplace: bool) -> Callable[[tuple, dict], Found]:
    def spell(args: tuple, kwargs: dict) -> Found:
        x, th, value = (_arg(args, kwargs, i, n) for i, n in enumerate(("input", "threshold", "value")))
        if not _grad(x):
            return None
        if _zero(th) and _zero(value):
            return x, None, inplace or bool(kwargs.get("inplace"))  # F.threshold passes it by keyword
        return f"threshold(threshold={th!r}, value={value!r})"
    return spell


def _binary(name: str, relu: bool) -> Callable[[tuple, dict], Found]:
    """maximum/fmax/max(a, b) (relu=True: a ReLU iff one operand is a constant zero) and minimum/fmin/min (never)."""
    def spell(args: tuple, kwargs: dict) -> Found:
        a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        if not (torch.is_tensor(b) and (_grad(a) or _grad(b))):
            return None  # max(x) / max(x, dim): a reduction, whose gradient is max-pool's switch
        if relu and ((_grad(a) and _zero(b)) or (_grad(b) and _zero(a))):
            return a, b, False
        return f"{name}(a, b) with {'no constant zero operand' if relu else 'a tensor that needs a gradient'}"
    return spell


def _spellings() -> dict[Callable, Callable[[tuple, dict], Found]]:
    table: dict[Callable, Callable[[tuple, dict], Found]] = {F.relu: _relu(False), F.threshold: _threshold(False)}
    for owner in (torch, torch.Tensor):
        table.update({owner.relu: _relu(False), owner.relu_: _relu(True)})  # F.relu_ is torch.relu_
        for base, lo, hi in (("clamp", 1, 2), ("clip", 1, 2), ("clamp_min", 1, None), ("clamp_max", None, 1)):
            table[getattr(owner, base)] = _clamp(base, False, lo, hi)
            table[getattr(owner, base + "_")] = _clamp(base, True, lo, hi)
        for base, relu in (("maximum", True), ("fmax", True), ("max", True), ("minimum", False), ("fmin", False),
                           ("min", False)):
            table[getattr(owner, base)] = _binary(base, relu)
    table.update({torch.threshold: _threshold(False), torch.threshold_: _threshold(True)})  # F.threshold_ too
    return table


_SPELLINGS = _spellings()


def _canonical(func: Callable) -> Callable:
    """An aten op (``torch.ops.aten.relu.default``) as the torch function of that name, so it is classified alike."""
    namespace, _, name = str(getattr(getattr(func, "overloadpacket", func), "_qualified_op_name", "")).partition("::")
    if namespace != "aten":
        return func
    return getattr(torch, name, None) or getattr(torch._C._nn, name, None) or func


class _BackwardMode(TorchFunctionMode):
    """While active (in this thread only), every ReLU call runs the chosen rule's autograd Function (with a
    ``switch``: the rule the switch names at backward time)."""

    def __init__(self, method: str, switch: Optional[Switch] = None) -> None:
        super().__init__()
        self.method, self.switch = method, switch
        self.fn = _RuleRelu if switch is not None else _RULES[method]

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        key = _canonical(func)
        if key in _OTHER and self.method != "backprop":
            self._refuse(_OTHER[key])
        spell = _SPELLINGS.get(key)
        if spell is None or "out" in kwargs or not torch.is_grad_enabled():
            return func(*args, **kwargs)  # (out=: torch itself refuses it on a tensor that needs a gradient)
        found = spell(args, kwargs)
        if found is None:
            return func(*args, **kwargs)
        if isinstance(found, str):
            self._refuse(found)
        first, second, inplace = found  # type: ignore[misc]
        return self.fn.apply(self.switch, lambda: func(*args, **kwargs), inplace, first, second)

    def _refuse(self, what: str) -> None:
        raise AllconvError(f"method {self.method!r} is defined only for ReLU nets, but the model calls {what}, which "
                           "is not a ReLU; use method='backprop' for this model")


def check_method(method: str) -> str:
    """Return ``method`` if it is one of ``METHODS``, else raise a one-line AllconvError naming them."""
    if method not in METHODS:
        raise AllconvError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


@contextlib.contextmanager
def backward_mode(method: str) -> Iterator[None]:
    """Within the block (this thread only), gradients through ReLUs follow ``method``'s rule.

    ``backprop`` is the plain gradient and installs nothing. ``guided``/``deconvnet`` refuse nets that call other
    activation functions (GELU, sigmoid, tanh, SiLU, ELU, LeakyReLU, softplus, ReLU6, ...) or clamps that are not
    ReLUs with an AllconvError. Nothing is attached to any model, so leaving the block (normally or by an exception)
    leaves every model as it was. The rule is fixed at forward time: run the forward inside the block; the backward
    may run inside or after it (activation checkpointing included). What a mode cannot see (TorchScript, reentrant
    checkpointing) is for ``vis.guard.check_model`` / ``check_graph`` to refuse, as ``reconstruct`` does.
    """
    check_method(method)
    if method == "backprop":
        yield
        return
    with _BackwardMode(method):
        yield


@contextlib.contextmanager
def shared_backward(methods: tuple[str, ...]) -> Iterator[Switch]:
    """One forward for several methods: within the block every ReLU records its mask once, and each backward pass
    (``retain_graph=True`` for all but the last) applies the rule of ``switch.use(method)``, the same numbers as
    a forward under each ``backward_mode``. Non-ReLU activations are refused unless every method is backprop."""
    methods = tuple(check_method(m) for m in methods)
    switch = Switch(methods)
    strict = next((m for m in methods if m != "backprop"), "backprop")
    with _BackwardMode(strict, switch):
        yield switch
