"""vis: guided backpropagation, deconvnet and backprop reconstructions, feature maps, receptive fields, rendering."""

from . import render, sanity
from .maps import activations, filter_maps, model_lock, model_scope
from .modes import METHODS, backward_mode
from .receptive import RF, receptive_field
from .reconstruct import reconstruct, reconstruct_at
from .render import grid, heatmap, to_image, to_pil
from .sanity import randomization_check

__all__ = [
    "METHODS", "RF", "activations", "backward_mode", "filter_maps", "grid", "heatmap", "model_lock", "model_scope",
    "randomization_check", "receptive_field", "reconstruct", "reconstruct_at", "render", "sanity", "to_image",
    "to_pil",
]
