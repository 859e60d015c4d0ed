"""The activations fused after FiLM: one table for every backend.

``ACTIVATIONS`` is the list the public ops accept; ``ACTIVATION_CODES`` numbers them as the
compiled kernels do (the ``ACT`` constexpr of the Triton kernels in ``mumo_fast.kernels``,
the ``enum class Act`` of ``csrc/common.h``; ``tests/test_activations.py`` checks both
against this table). The derivatives are written as functions of the output
``y = act(u)``, which the ops save, so a backward never recomputes ``u``.
"""

from __future__ import annotations

import torch
from torch import Tensor

ACTIVATIONS = ("none", "relu", "tanh", "sigmoid")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


def activation_code(activation: str) -> int:
    """The kernels' integer code of ``activation``."""
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}") from None


def activate(u: Tensor, activation: str) -> Tensor:
    """act(u), differentiable by torch's autograd."""
    if activation == "none":
        return u
    if activation == "relu":
        return torch.relu(u)
    if activation == "tanh":
        return torch.tanh(u)
    if activation == "sigmoid":
        return torch.sigmoid(u)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activation_grad_from_output(y: Tensor, activation: str) -> Tensor | None:
    """d act(u) / du written as a function of y = act(u); None where it is 1."""
    if activation == "none":
        return None
    if activation == "relu":
        return (y > 0).to(y.dtype)
    if activation == "tanh":
        return 1 - y * y
    return y * (1 - y)


def activation_second_grad_from_output(y: Tensor, activation: str) -> Tensor | None:
    """d/dy of act'(u) written as a function of y = act(u) (the derivative the double
    backward of the epilogue needs); None where it is identically 0."""
    if activation == "tanh":
        return -2 * y
    if activation == "sigmoid":
        return 1 - 2 * y
    return None
