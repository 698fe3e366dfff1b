"""captum-compatible exact attributions: guided backprop, deconvnet, their neuron versions, and Guided Grad-CAM.

``GuidedBackprop``, ``Deconvolution``, ``NeuronGuidedBackprop``, ``NeuronDeconvolution`` and ``GuidedGradCam`` take
captum's constructor arguments and ``attribute(...)`` arguments with captum's semantics (targets,
``additional_forward_args``, tuple inputs; neuron selectors -- an int, a tuple of ints/slices (a slice sums its
neurons) or a callable on the layer's output -- and ``attribute_to_neuron_input``), and they are captum
``Attribution`` subclasses, so ``captum.attr.NoiseTunnel`` (SmoothGrad), ``captum.attr.visualization`` and
``captum.metrics`` (``infidelity``, ``sensitivity_max``) run on top of them.

Only the ReLU rule's source differs. captum hooks ``nn.ReLU`` modules: ``F.relu``, ``torch.relu_``, ``Tensor.relu``
(DenseNet's final ``F.relu`` among them) get the plain gradient, and its hook on a ReLU's *input tensor* rewrites that
tensor's whole gradient -- wrong where the input also feeds a skip (pre-activation residual blocks): guided gets
relu(skip + relu path), deconvnet drops the skip. Here the forward runs under ``vis.modes.backward_mode``, which gives
every ReLU call the rule and everything else its plain gradient: exact on any ReLU net. The rest -- target
selection, neuron gradients, Grad-CAM and its upsampling, output formats -- is captum's own code.

The model runs as it is (as in captum: call ``model.eval()`` first), holding ``vis.maps.model_lock``; nothing stays
on it. Refused with a one-line AllconvError: non-ReLU activations (``vis.modes``), TorchScript and reentrant
checkpoints (``vis.guard``), an ``nn.DataParallel`` over several devices (its replicas run in threads the rule cannot
reach), non-float inputs, and a neuron / Grad-CAM layer that the forward runs more than once (captum would silently
take its last call) or never.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

import torch
from captum.attr import GradientAttribution
from captum.attr import GuidedGradCam as _CaptumGuidedGradCam
from captum.attr import NeuronDeconvolution as _CaptumNeuronDeconvolution
from captum.attr import NeuronGuidedBackprop as _CaptumNeuronGuidedBackprop
from captum.log import log_usage
from torch import nn

from allconv.errors import AllconvError

from .guard import check_graph, check_model
from .maps import model_lock
from .modes import backward_mode

__all__ = ["Deconvolution", "GuidedBackprop", "GuidedGradCam", "NeuronDeconvolution", "NeuronGuidedBackprop"]

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...]]
Selector = Union[int, tuple[Union[int, slice], ...], Callable[..., torch.Tensor]]


def _module(obj: object, what: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise AllconvError(f"{what} must be a torch.nn.Module, got {type(obj).__name__}; wrap a function in an "
                           "nn.Module whose forward calls it")
    return obj


def _check_reachable(model: nn.Module, method: str) -> None:
    """Refuse what the thread-local rule cannot reach: TorchScript (``vis.guard``), multi-device DataParallel."""
    check_model(model, method)
    for name, module in model.named_modules():
        if isinstance(module, nn.DataParallel) and len(module.device_ids) > 1:
            where = f"submodule {name!r}" if name else "the model"
            raise AllconvError(f"{where} is an nn.DataParallel over {len(module.device_ids)} devices, whose replicas "
                               f"run in threads that method {method!r} cannot reach; pass its .module instead")


def _float_inputs(inputs: object) -> tuple[torch.Tensor, ...]:
    """``inputs`` as a tuple of float tensors (what a gradient needs), else a one-line AllconvError."""
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    for t in items:
        if not (torch.is_tensor(t) and (t.is_floating_point() or t.is_complex())):
            got = f"a {t.dtype} tensor" if torch.is_tensor(t) else type(t).__name__
            raise AllconvError(f"inputs must be a float tensor or a tuple of float tensors, got {got}; pass "
                               "x.float() (attributions are gradients)")
    if not items:
        raise AllconvError("inputs is an empty tuple; pass at least one tensor")
    return items  # type: ignore[return-value]


def _checked(model: nn.Module, method: str) -> Callable[..., Any]:
    """``model`` as captum calls it, refusing (``vis.guard.check_graph``) an output whose graph has an unseen ReLU."""
    def forward(*args: Any) -> Any:
        out = model(*args)
        if torch.is_tensor(out):
            check_graph(out, method)
        return out

    forward.__signature__ = inspect.signature(model)  # type: ignore[attr-defined]  # captum's _run_forward reads it
    return forward


class _ReluRule(GradientAttribution):
    """The gradient of the target with every ReLU call's backward replaced by ``method``'s rule (``vis.modes``)."""

    method: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        GradientAttribution.__init__(self, _module(model, f"{type(self).__name__}'s model"))
        self.model = model

    @log_usage()
    def attribute(self, inputs: Inputs, target: Any = None,
                  additional_forward_args: Optional[object] = None) -> Inputs:
        """As captum's ``attribute``: one attribution per input tensor, shaped like it (a tuple for a tuple)."""
        items = _float_inputs(inputs)
        _check_reachable(self.model, self.method)
        had_grad = [t.requires_grad for t in items]
        for t in items:
            t.requires_grad_(True)
        try:
            with model_lock(self.model), backward_mode(self.method):
                grads = self.gradient_func(_checked(self.model, self.method), items, target, additional_forward_args)
        finally:
            for t, had in zip(items, had_grad):
                t.requires_grad_(had)
        return tuple(grads) if isinstance(inputs, tuple) else grads[0]


class GuidedBackprop(_ReluRule):
    """captum's ``GuidedBackprop(model)``, exact on any ReLU net: at each ReLU call, relu(g) * [input > 0]."""

    method = "guided"


class Deconvolution(_ReluRule):
    """captum's ``Deconvolution(model)``, exact on any ReLU net: at each ReLU call, relu(g)."""

    method = "deconvnet"


@contextlib.contextmanager
def _layer_scope(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Hold the model's lock; refuse a layer the forward runs more than once per model call (or never)."""
    me, calls = threading.get_ident(), {"model": 0, "layer": 0}

    def counter(key: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            if threading.get_ident() == me:  # another thread's forward of the same model is not ours to count
                calls[key] += 1
        return hook

    handles = [model.register_forward_pre_hook(counter("model")), layer.register_forward_pre_hook(counter("layer"))]
    try:
        with model_lock(model):
            yield
    except AssertionError:  # captum's "Forward hook did not obtain any outputs for given layer"
        if calls["model"] and not calls["layer"]:
            raise AllconvError(f"layer {type(layer).__name__} is never run by the model's forward; pass a submodule "
                               "that the forward calls") from None
        raise
    finally:
        for handle in handles:
            handle.remove()
    if calls["layer"] > calls["model"]:
        raise AllconvError(f"layer {type(layer).__name__} runs {calls['layer'] // max(calls['model'], 1)} times in one "
                           "forward, so its neuron is ambiguous (captum would take the last call); pass a module "
                           "that runs once (e.g. one nn.ReLU per use)")


class NeuronGuidedBackprop(_CaptumNeuronGuidedBackprop):
    """captum's ``NeuronGuidedBackprop(model, layer, device_ids)``, exact on any ReLU net."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(_module(model, "NeuronGuidedBackprop's model"), _module(layer, "layer"), device_ids)
        self.guided_backprop = GuidedBackprop(model)

    @log_usage()
    def attribute(self, inputs: Inputs, neuron_selector: Selector, additional_forward_args: Optional[object] = None,
                  attribute_to_neuron_input: bool = False) -> Inputs:
        """As captum's: guided backprop of the selected neuron(s) of ``layer``'s output (or input)."""
        with _layer_scope(self.forward_func, self.layer):
            return super().attribute.__wrapped__(self, inputs, neuron_selector, additional_forward_args,
                                                 attribute_to_neuron_input)


class NeuronDeconvolution(_CaptumNeuronDeconvolution):
    """captum's ``NeuronDeconvolution(model, layer, device_ids)``, exact on any ReLU net."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(_module(model, "NeuronDeconvolution's model"), _module(layer, "layer"), device_ids)
        self.deconv = Deconvolution(model)

    @log_usage()
    def attribute(self, inputs: Inputs, neuron_selector: Selector, additional_forward_args: Optional[object] = None,
                  attribute_to_neuron_input: bool = False) -> Inputs:
        """As captum's: deconvnet signal of the selected neuron(s) of ``layer``'s output (or input)."""
        with _layer_scope(self.forward_func, self.layer):
            return super().attribute.__wrapped__(self, inputs, neuron_selector, additional_forward_args,
                                                 attribute_to_neuron_input)


class GuidedGradCam(_CaptumGuidedGradCam):
    """captum's ``GuidedGradCam(model, layer, device_ids)``: Grad-CAM of ``layer`` (plain gradients, as captum's)
    upsampled, times exact guided backprop."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Optional[list[int]] = None) -> None:
        super().__init__(_module(model, "GuidedGradCam's model"), _module(layer, "layer"), device_ids)
        self.guided_backprop = GuidedBackprop(model)

    @log_usage()
    def attribute(self, inputs: Inputs, target: Any = None, additional_forward_args: Optional[object] = None,
                  interpolate_mode: str = "nearest", attribute_to_layer_input: bool = False) -> Inputs:
        """As captum's (an input it cannot upsample to gets an empty tensor and a warning, as there)."""
        with _layer_scope(self.forward_func, self.grad_cam.layer):
            return super().attribute.__wrapped__(self, inputs, target, additional_forward_args, interpolate_mode,
                                                 attribute_to_layer_input)
