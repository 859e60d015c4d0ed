"""Pure-PyTorch reference implementation of the fused ops: the parity oracle.

Every function here is a plain composition of differentiable torch ops, so
torch's own autograd differentiates it to any order.  Arguments are assumed
validated (see ``mumo_fast.ops._validate``); shapes as in the README's "Ops reference".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import activate


def per_channel(v: Tensor | None, ndim: int) -> Tensor | None:
    """[T, C] (or [C]) -> broadcastable against a [T, N, C, *spatial] tensor of rank ndim."""
    if v is None:
        return None
    if v.dim() == 1:
        v = v.unsqueeze(0)
    return v.reshape(v.shape[0], 1, v.shape[1], *([1] * (ndim - 3)))


def film_epilogue(z: Tensor, gamma: Tensor | None, beta: Tensor | None, activation: str) -> Tensor:
    """act(z * gamma + beta) with gamma, beta [T, C] broadcast over z [T, N, C, ...]."""
    u = z
    if gamma is not None:
        u = u * per_channel(gamma, z.dim())
    if beta is not None:
        u = u + per_channel(beta, z.dim())
    return activate(u, activation)


def linear_pre_film(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if weight.dim() == 2:
        z = x @ weight.t()
    else:
        z = torch.bmm(x, weight.transpose(1, 2))
    if bias is not None:
        z = z + per_channel(bias, 3)
    return z


def film_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    activation: str = "none",
) -> Tensor:
    return film_epilogue(linear_pre_film(x, weight, bias), gamma, beta, activation)


def linear_lowrank_pre_film(
    x: Tensor, weight: Tensor, u: Tensor, v: Tensor, bias: Tensor | None
) -> Tensor:
    """x W_t^T + b with W_t = weight + v[t]^T u[t]: x weight^T + (x u[t]^T) v[t] + b."""
    t, n, in_features = x.shape
    z = (x.reshape(t * n, in_features) @ weight.t()).reshape(t, n, -1)
    z = z + torch.bmm(torch.bmm(x, u.transpose(1, 2)), v)
    if bias is not None:
        z = z + per_channel(bias, 3)
    return z


def film_linear_lowrank(
    x: Tensor,
    weight: Tensor,
    u: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    activation: str = "none",
) -> Tensor:
    """film_linear with per-task weights W_t = weight + v[t]^T u[t] never materialised.

    x [T, N, IN], weight [OUT, IN], u [T, R, IN], v [T, R, OUT].
    """
    return film_epilogue(linear_lowrank_pre_film(x, weight, u, v, bias), gamma, beta, activation)


def conv_pre_film(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
    t, n, c, h, w = x.shape
    if weight.dim() == 4:
        z = F.conv2d(x.reshape(t * n, c, h, w), weight, None, stride, padding)
        z = z.reshape(t, n, *z.shape[1:])
    else:
        o = weight.shape[1]
        z = F.conv2d(
            x.transpose(0, 1).reshape(n, t * c, h, w),
            weight.reshape(t * o, *weight.shape[2:]),
            None,
            stride,
            padding,
            groups=t,
        )
        z = z.reshape(n, t, o, *z.shape[2:]).transpose(0, 1)
    if bias is not None:
        z = z + per_channel(bias, 5)
    return z


def film_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    activation: str = "none",
) -> Tensor:
    stride = _pair(stride)
    padding = _pair(padding)
    z = conv_pre_film(x, weight, bias, stride, padding)
    return film_epilogue(z, gamma, beta, activation)


def batch_norm_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-task, per-channel mean and 1/sqrt(biased var + eps): each [T, C]."""
    dims = [1] + list(range(3, x.dim()))
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def film_batch_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    eps: float = 1e-5,
    activation: str = "none",
) -> Tensor:
    mean, rstd = batch_norm_stats(x, eps)
    z = (x - per_channel(mean, x.dim())) * per_channel(rstd, x.dim())
    if weight is not None:
        z = z * per_channel(weight, x.dim())
    if bias is not None:
        z = z + per_channel(bias, x.dim())
    return film_epilogue(z, gamma, beta, activation)


def clamped_sgd(
    params: list[Tensor], grads: list[Tensor], lr: float | list, clamp: float | None
) -> list[Tensor]:
    """theta - lr * clamp(grad, -clamp, clamp) for every pair; lr a float or one per param."""
    lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(params)
    out = []
    for p, g, a in zip(params, grads, lrs):
        if clamp is not None:
            g = g.clamp(-clamp, clamp)
        out.append(p - a * g)
    return out


def linear_sgd(
    weight: Tensor,
    bias: Tensor | None,
    d: Tensor,
    a: Tensor,
    lr: float | Tensor,
    clamp: float | None,
) -> tuple[Tensor, Tensor | None]:
    """One (clamped) SGD step of a linear layer from its per-task inner gradient written
    as ``dL/dW = D^T A``, ``dL/db = sum_k D`` (D [T, K, OUT]: gradients w.r.t. the layer's
    pre-FiLM output; A [T, K, IN]: its inputs): the plain composition, gradient first."""
    g = torch.bmm(d.transpose(1, 2), a)
    gb = d.sum(1)
    if clamp is not None:
        g, gb = g.clamp(-clamp, clamp), gb.clamp(-clamp, clamp)
    return weight - lr * g, None if bias is None else bias - lr * gb


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
