"""Drop-in FiLM layers (see :mod:`mumo_fast.nn.layers` for the task-axis convention)."""

from .layers import FiLMBatchNorm, FiLMConv2d, FiLMLinear

__all__ = ["FiLMLinear", "FiLMConv2d", "FiLMBatchNorm"]
