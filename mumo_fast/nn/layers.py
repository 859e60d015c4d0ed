"""Drop-in FiLM layers over the fused ops.

Task-axis convention (stated by the caller, never guessed from rank):

* ``task_axis=False`` (default): the input is an ordinary batch, ``[N, IN]`` for
  :class:`FiLMLinear`, ``[N, C, H, W]`` for :class:`FiLMConv2d`, ``[N, C]`` or
  ``[N, C, H, W]`` for :class:`FiLMBatchNorm`; ``gamma`` / ``beta``, if given, are
  ``[C]``. Without FiLM vectors the layers compute exactly what ``nn.Linear``,
  ``nn.Conv2d`` and ``nn.BatchNorm1d/2d`` (training mode) compute.
* ``task_axis=True``: the input has a leading task axis ``T`` (``[T, N, ...]``),
  ``gamma`` / ``beta`` are ``[T, C]``, and the layer's parameters may be per-task
  fast weights with a leading ``T`` axis, supplied through
  ``torch.func.functional_call(model, params, ...)``.

FiLM is applied to the pre-activation: ``act((layer(x)) * gamma + beta)``. Batch
norm always normalises with the statistics of the current batch (per task), in
eval mode too (transductive, as MAML), unless ``track_running_stats=True``, in which
case eval mode uses the running statistics like ``nn.BatchNorm``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from .. import ops
from ..ops import reference


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _lift(x: Tensor, name: str, rank: tuple[int, ...], task_axis: bool, layout: str) -> Tensor:
    """Check x's rank against the stated convention; add a T=1 axis when there is none."""
    _check_bool("task_axis", task_axis)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = tuple(r + 1 for r in rank) if task_axis else rank
    if x.dim() not in want:
        prefix = "[T, " if task_axis else "["
        raise ValueError(
            f"{name} must have shape {prefix}{layout}] (task_axis={task_axis}), got {tuple(x.shape)}"
        )
    return x if task_axis else x.unsqueeze(0)


def _lift_vec(v: Tensor | None, name: str, task_axis: bool) -> Tensor | None:
    if v is None:
        return None
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(v).__name__}")
    want = 2 if task_axis else 1
    if v.dim() != want:
        shape = "[T, C]" if task_axis else "[C]"
        raise ValueError(
            f"{name} must have shape {shape} (task_axis={task_axis}), got {tuple(v.shape)}"
        )
    return v if task_axis else v.unsqueeze(0)


def _check_shared(p: Tensor | None, name: str, rank: int) -> None:
    if p is not None and p.dim() != rank:
        raise ValueError(
            f"{name} has a task axis (shape {tuple(p.shape)}): per-task parameters need task_axis=True"
        )


class FiLMLinear(nn.Module):
    """``act((x W^T + b) * gamma + beta)``; weight [OUT, IN] (or per-task [T, OUT, IN])."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "none",
        *,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        ops._validate.check_activation(activation)
        self.in_features, self.out_features = in_features, out_features
        self.activation, self.backend = activation, backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Linear`` (same RNG draws in the same order)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        x: Tensor,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        task_axis: bool = False,
    ) -> Tensor:
        """x [N, IN] -> [N, OUT], or with task_axis x [T, N, IN] -> [T, N, OUT]."""
        x3 = _lift(x, "x", (2,), task_axis, "N, IN")
        g, b = _lift_vec(gamma, "gamma", task_axis), _lift_vec(beta, "beta", task_axis)
        if not task_axis:
            _check_shared(self.weight, "weight", 2)
            _check_shared(self.bias, "bias", 1)
        y = ops.film_linear(x3, self.weight, self.bias, g, b, self.activation, backend=self.backend)
        return y if task_axis else y.squeeze(0)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, activation={self.activation!r}"
        )


class FiLMConv2d(nn.Module):
    """``act((conv2d(x, W) + b) * gamma + beta)``; weight [O, C, KH, KW] (or per-task)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        activation: str = "none",
        *,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        ops._validate.check_activation(activation)
        kh, kw = ops._validate.check_pair("kernel_size", kernel_size, 1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = ops._validate.check_pair("stride", stride, 1)
        self.padding = ops._validate.check_pair("padding", padding, 0)
        self.activation, self.backend = activation, backend
        kwargs = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw, **kwargs))
        self.bias = nn.Parameter(torch.empty(out_channels, **kwargs)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv2d``."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        x: Tensor,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        task_axis: bool = False,
    ) -> Tensor:
        """x [N, C, H, W] -> [N, O, H', W'], or with task_axis x [T, N, C, H, W] -> [T, N, O, H', W']."""
        x5 = _lift(x, "x", (4,), task_axis, "N, C, H, W")
        g, b = _lift_vec(gamma, "gamma", task_axis), _lift_vec(beta, "beta", task_axis)
        if not task_axis:
            _check_shared(self.weight, "weight", 4)
            _check_shared(self.bias, "bias", 1)
        y = ops.film_conv2d(
            x5,
            self.weight,
            self.bias,
            g,
            b,
            self.stride,
            self.padding,
            self.activation,
            backend=self.backend,
        )
        return y if task_axis else y.squeeze(0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"activation={self.activation!r}"
        )


class FiLMBatchNorm(nn.Module):
    """Batch norm with per-task batch statistics, then FiLM, then the activation:
    ``act(((x - mean) / sqrt(var + eps) * weight + bias) * gamma + beta)``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        activation: str = "none",
        *,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        ops._validate.check_activation(activation)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.activation, self.backend = activation, backend
        kw = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **kw))
            self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
        else:
            self.running_mean = self.running_var = None

    def forward(
        self,
        x: Tensor,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        task_axis: bool = False,
    ) -> Tensor:
        """x [N, C] or [N, C, H, W] (with task_axis: [T, N, C] or [T, N, C, H, W]), same shape out."""
        xt = _lift(x, "x", (2, 4), task_axis, "N, C] or [N, C, H, W")
        g, b = _lift_vec(gamma, "gamma", task_axis), _lift_vec(beta, "beta", task_axis)
        if not task_axis:
            _check_shared(self.weight, "weight", 1)
            _check_shared(self.bias, "bias", 1)
        if self.track_running_stats and not self.training:
            y = self._normalise_running(xt, g, b)
        else:
            if self.track_running_stats:
                self._update_running(xt)
            y = ops.film_batch_norm(
                xt, self.weight, self.bias, g, b, self.eps, self.activation, backend=self.backend
            )
        return y if task_axis else y.squeeze(0)

    @torch.no_grad()
    def _update_running(self, x: Tensor) -> None:
        dims = [0, 1] + list(range(3, x.dim()))
        n = x.numel() // x.shape[2]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False) * (n / max(n - 1, 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)

    def _normalise_running(self, x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> Tensor:
        shape = [1, 1, -1] + [1] * (x.dim() - 3)
        z = (x - self.running_mean.reshape(shape)) * torch.rsqrt(
            self.running_var.reshape(shape) + self.eps
        )
        if self.weight is not None:
            z = z * reference.per_channel(self.weight, x.dim())
            z = z + reference.per_channel(self.bias, x.dim())
        return reference.film_epilogue(z, gamma, beta, self.activation)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, activation={self.activation!r}"
        )
