"""allconv: the All Convolutional Net family (Springenberg et al. 2014): models, data, training, checkpoints."""

from . import models
from .errors import AllconvError
from .models import create, names

__all__ = ["AllconvError", "create", "models", "names"]
__version__ = "0.1.0"
