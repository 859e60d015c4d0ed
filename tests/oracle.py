"""The fused ops written out from their definitions (the README's "Ops reference") in float64, one task
at a time, with none of the library's code and none of the torch ops its reference
composes (no matmul / bmm, conv2d, var, tanh, sigmoid, relu): the independent oracle the
forward of every backend, the reference included, is compared with."""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


def activate(u: Tensor, activation: str) -> Tensor:
    if activation == "none":
        return u
    if activation == "relu":
        return torch.where(u > 0, u, torch.zeros_like(u))
    e = torch.exp(-u.abs())  # sigmoid and tanh from exp, stable for either sign
    if activation == "sigmoid":
        return torch.where(u >= 0, 1 / (1 + e), e / (1 + e))
    if activation == "tanh":
        e2 = e * e
        return torch.sign(u) * (1 - e2) / (1 + e2)
    raise ValueError(activation)


def _vec(v: Tensor | None, t: int) -> Tensor | None:
    """Task t's row of a [T, C] vector, or the shared [C] one, in float64."""
    if v is None:
        return None
    return (v if v.dim() == 1 else v[t]).to(F64)


def _epilogue(z: Tensor, gamma, beta, t: int, activation: str) -> Tensor:
    """z [N, C, ...] of task t -> act(z * gamma_t + beta_t), channel on dim 1."""
    shape = (1, -1) + (1,) * (z.dim() - 2)
    if gamma is not None:
        z = z * _vec(gamma, t).reshape(shape)
    if beta is not None:
        z = z + _vec(beta, t).reshape(shape)
    return activate(z, activation)


def film_linear(x, weight, bias=None, gamma=None, beta=None, activation="none") -> Tensor:
    out = []
    for t in range(x.shape[0]):
        w = (weight if weight.dim() == 2 else weight[t]).to(F64)
        z = (x[t].to(F64)[:, None, :] * w[None, :, :]).sum(-1)  # z[n, o] = sum_i x[n, i] w[o, i]
        if bias is not None:
            z = z + _vec(bias, t)
        out.append(_epilogue(z, gamma, beta, t, activation))
    return torch.stack(out)


def film_linear_lowrank(x, weight, u, v, bias=None, gamma=None, beta=None, activation="none"):
    """Per-task weights weight + v[t]^T u[t], formed entry by entry."""
    dense = weight.to(F64)[None] + (v.to(F64)[:, :, :, None] * u.to(F64)[:, :, None, :]).sum(1)
    return film_linear(x, dense, bias, gamma, beta, activation)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def film_conv2d(
    x, weight, bias=None, gamma=None, beta=None, stride=1, padding=0, activation="none"
) -> Tensor:
    """Cross-correlation as a sum over the kernel's offsets of strided slices of the padded
    input times that offset's [O, C] weights."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = weight.shape[-2:]
    out = []
    for t in range(x.shape[0]):
        w = (weight if weight.dim() == 4 else weight[t]).to(F64)
        xt = x[t].to(F64)
        n, c, h, wd = xt.shape
        xp = xt.new_zeros(n, c, h + 2 * ph, wd + 2 * pw)
        xp[:, :, ph : ph + h, pw : pw + wd] = xt
        ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        z = xt.new_zeros(n, w.shape[0], ho, wo)
        for p in range(kh):
            for q in range(kw):
                patch = xp[:, :, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw]
                # z[n, o, i, j] += sum_c patch[n, c, i, j] * w[o, c, p, q]
                z = z + (patch[:, None] * w[None, :, :, p, q, None, None]).sum(2)
        if bias is not None:
            z = z + _vec(bias, t)[None, :, None, None]
        out.append(_epilogue(z, gamma, beta, t, activation))
    return torch.stack(out)


def film_batch_norm(
    x, weight=None, bias=None, gamma=None, beta=None, eps=1e-5, activation="none"
) -> Tensor:
    """Per task and channel: statistics over N (and H, W), the biased variance as the mean
    squared deviation."""
    out = []
    for t in range(x.shape[0]):
        xt = x[t].to(F64)  # [N, C, ...]
        dims = [0] + list(range(2, xt.dim()))
        count = xt.numel() // xt.shape[1]
        shape = (1, -1) + (1,) * (xt.dim() - 2)
        mean = xt.sum(dims) / count
        dev = xt - mean.reshape(shape)
        var = (dev * dev).sum(dims) / count
        z = dev / (var + eps).sqrt().reshape(shape)
        if weight is not None:
            z = z * _vec(weight, t).reshape(shape)
        if bias is not None:
            z = z + _vec(bias, t).reshape(shape)
        out.append(_epilogue(z, gamma, beta, t, activation))
    return torch.stack(out)
