"""Base networks built from the FiLM layers; each exposes ``film_channels``, the
channel count of each modulated layer, and ``forward(x, film=None, *, task_axis=False,
fast=None)``.

``fast`` maps layers of the network to callables with the layer's call signature that
replace them in this forward: per-task fast weights, e.g. the meta-learner's
(``mumo_fast.meta.FastWeights.bind()``), with ``task_axis=True``. Layers not in it
run with their own parameters."""

from .conv4 import Conv4
from .mlp import MLP

__all__ = ["MLP", "Conv4"]
