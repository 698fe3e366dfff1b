"""Feature maps and filters of a named layer, and the helpers every visualization shares.

``model_scope`` is how all of ``vis`` touches a model: it takes the model's lock (so Streamlit sessions, which run in
threads sharing one cached model, serialize), switches it to eval (dropout off, BN with running stats) and restores
each module's own train/eval flag afterwards, even on an exception. ``forward_to`` runs a forward only as far as the
named layer (a temporary hook raises a private exception there, in the calling thread only), which makes low layers
cheap.

Another thread using the same model while ``vis`` runs (without taking ``model_lock``): its forwards run to the end,
untouched by ``vis``'s hook, and its gradients are plain (the backward rules are thread-local); but the model's
train/eval flags are shared, so for as long as ``vis`` runs its forwards see eval mode (dropout off, BN on running
stats and not updating them). A thread that must keep train mode takes ``model_lock(model)`` around its forwards: it
then waits for ``vis`` (and ``vis`` for it). A thread must not switch the model's mode or change its weights while
``vis`` runs, or ``vis``'s results mix the two.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch import nn

from allconv.errors import AllconvError

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The per-model re-entrant lock ``vis`` holds while it runs ``model`` (created on first use, freed with it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def model_scope(model: nn.Module) -> Iterator[nn.Module]:
    """Hold the model's lock and run it in eval mode; every module's training flag is restored on exit.

    The flags are the model's own, so another thread running the model without the lock sees eval mode meanwhile.
    """
    with model_lock(model):
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for m, training in flags:
                m.training = training


def layer_choices(model: nn.Module, limit: int = 30) -> str:
    """The layer names to suggest in an error: ``layer_names`` for our nets, else the top two levels, truncated."""
    from allconv.models import AllConvNet, layer_names

    if isinstance(model, AllConvNet):
        names = layer_names(model)
    else:
        names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule called ``layer`` (a ``named_modules`` name), or an AllconvError listing valid names."""
    if not isinstance(layer, str) or not layer:
        raise AllconvError(f"layer must be a module name (or None for the output), got {layer!r}; "
                           f"valid: {layer_choices(model)}")
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise AllconvError(f"unknown layer {layer!r}; valid: {layer_choices(model)}")
    return module


def check_images(model: nn.Module, images: torch.Tensor) -> None:
    """Refuse anything but a float (N, C, H, W) batch on the model's dtype/device whose C fits the first conv."""
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise AllconvError(f"images must be a (N, 3, H, W) float tensor, got {shape}")
    if not images.is_floating_point():
        raise AllconvError(f"images must be float (preprocessed, e.g. meta.preprocess(x)), got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise AllconvError("images is an empty batch (N=0)")
    param = next(model.parameters(), None)
    if param is not None and (param.dtype, param.device) != (images.dtype, images.device):
        raise AllconvError(f"images are {images.dtype} on {images.device} but the model is {param.dtype} on "
                           f"{param.device}: use images.to(device={str(param.device)!r}, dtype={param.dtype})")
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and images.shape[1] != conv.in_channels:
        raise AllconvError(f"images have {images.shape[1]} channels but the model's first conv takes "
                           f"{conv.in_channels}: pass (N, {conv.in_channels}, H, W)")


class _Stop(BaseException):
    """Raised by the capture hook to end the forward at the layer (BaseException: model code won't swallow it)."""


def forward_to(model: nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    """The output of ``layer`` (its first call) for input ``x``; ``None`` = the model's output. Stops there.

    The stop is this thread's only: another thread's forward of the same model meanwhile passes the layer untouched.
    """
    if layer is None:
        out = model(x)
    else:
        module = resolve_layer(model, layer)
        box: list[object] = []
        caller = threading.get_ident()

        def hook(_m: nn.Module, _inp: object, output: object) -> None:
            if threading.get_ident() != caller:
                return  # another thread's forward of the same model: not ours to capture or stop
            box.append(output)
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not box:
            raise AllconvError(f"layer {layer!r} is never run by the model's forward; valid: {layer_choices(model)}")
        out = box[0]
    if not torch.is_tensor(out):
        raise AllconvError(f"layer {layer!r} outputs a {type(out).__name__}, not a tensor; pick another layer")
    return out


def activations(model: nn.Module, images: torch.Tensor, layer: str | None) -> torch.Tensor:
    """The layer's output for ``images`` (e.g. (N, C, h, w) after the layer's ReLU), without gradients."""
    check_images(model, images)
    with model_scope(model), torch.no_grad():
        return forward_to(model, images, layer).detach()


def filter_maps(model: nn.Module, layer: str) -> torch.Tensor:
    """A copy of the weights of the (first) conv in ``layer``: (C_out, C_in, k, k).

    For the first layer C_in = 3, so each filter is an RGB tile; deeper filters are shown per input channel.
    """
    module = resolve_layer(model, layer)
    conv = module if isinstance(module, nn.Conv2d) else next(
        (m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise AllconvError(f"layer {layer!r} has no conv, so no filters; pick a conv layer: {layer_choices(model)}")
    return conv.weight.detach().clone()
