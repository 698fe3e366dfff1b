"""vis: guided backpropagation, deconvnet and backprop reconstructions, feature maps, receptive fields, rendering,
and the paper's Figure 2 (``vis.figure2``: top patches per filter and their reconstructions)."""

from . import figure2, guard, render, sanity
from .figure2 import Scan, load_scan, save_scan
from .maps import activations, filter_maps, model_lock, model_scope
from .modes import METHODS, backward_mode
from .receptive import RF, receptive_field
from .reconstruct import reconstruct, reconstruct_at, reconstruct_methods_at
from .render import grid, heatmap, to_image, to_pil
from .sanity import randomization_check

__all__ = [
    "METHODS", "RF", "Scan", "activations", "backward_mode", "figure2", "filter_maps", "grid", "guard", "heatmap",
    "load_scan", "model_lock", "model_scope", "randomization_check", "receptive_field", "reconstruct", "reconstruct_at",
    "reconstruct_methods_at", "render", "sanity", "save_scan", "to_image", "to_pil",
]


def __getattr__(name: str) -> object:
    """``vis.attr`` (the captum-compatible classes) loads on first use: it imports captum, which takes seconds, so a
    plain ``import vis`` (the CLI, the app) does not pay for it."""
    if name == "attr":
        import importlib

        return importlib.import_module(".attr", __name__)
    raise AttributeError(f"module 'vis' has no attribute {name!r}")
