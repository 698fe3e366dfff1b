"""Refuse, in one line, what the backward rules of ``vis.modes`` cannot reach, instead of silently giving the plain
gradient there.

``check_model`` (before the forward): a TorchScript module anywhere in the model (``torch.jit.script`` or
``torch.jit.trace``, the model itself or a submodule of an eager model) runs its ReLUs in C++, where no torch function
mode sees them. ``check_graph`` (after the forward, on its output): the autograd graph must hold no ReLU the mode did
not see -- a ``ReluBackward``/``ThresholdBackward`` node comes from a ReLU run inside TorchScript (a scripted function
called from an eager forward), a C++ extension or a custom autograd.Function named so, a
``DifferentiableGraphBackward`` from TorchScript -- and no reentrant activation checkpoint (``use_reentrant=True``),
whose recomputation inside backward would skip the rule and which ``torch.autograd.grad`` cannot run at all.
Non-reentrant checkpointing is fine (exact: see ``vis.modes``). Under ``backprop`` only the reentrant checkpoint is
refused: every other gradient is the plain one anyway.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from allconv.errors import AllconvError

_UNSEEN = ("ReluBackward", "ThresholdBackward", "DifferentiableGraphBackward")  # nodes the rule's ReLUs never make
_REENTRANT = "CheckpointFunctionBackward"


def check_model(model: nn.Module, method: str) -> None:
    """Refuse a model holding TorchScript under guided/deconvnet: its ReLUs would get the plain gradient."""
    if method == "backprop":
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"submodule {name!r}" if name else "the model"
            raise AllconvError(f"{where} is TorchScript ({type(module).__name__}), whose ReLUs method {method!r} "
                               "cannot reach; pass the eager nn.Module (the one before torch.jit.script/trace), or "
                               "use method='backprop'")


def _nodes(root: Optional[torch.autograd.graph.Node]) -> Iterator[str]:
    """The names of every node of the autograd graph behind ``root`` (each once), namespaces stripped."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node.name().rsplit("::", 1)[-1]
        stack.extend(child for child, _ in node.next_functions)


def check_graph(output: torch.Tensor, method: str) -> None:
    """Refuse a graph (behind ``output``) with a reentrant checkpoint, or, unless backprop, a ReLU the mode missed."""
    for name in _nodes(output.grad_fn):
        if name.startswith(_REENTRANT):
            raise AllconvError("the model uses torch.utils.checkpoint with use_reentrant=True, which "
                               "torch.autograd.grad cannot run (and whose recompute would skip the rule); "
                               "checkpoint with use_reentrant=False, or build the model without checkpointing")
        if method != "backprop" and name.startswith(_UNSEEN):
            raise AllconvError(f"the model ran a ReLU where method {method!r} cannot reach it ({name}: TorchScript, "
                               "a C++ extension or a custom autograd.Function); pass an eager model whose ReLUs are "
                               "torch calls, or use method='backprop'")
