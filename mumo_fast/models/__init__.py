"""Base networks built from the FiLM layers; each exposes ``film_channels``, the
channel count of each modulated layer, and ``forward(x, film=None, *, task_axis=False)``."""

from .conv4 import Conv4
from .mlp import MLP

__all__ = ["MLP", "Conv4"]
