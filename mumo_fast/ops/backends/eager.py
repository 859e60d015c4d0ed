"""Backend ``eager``: the raw-op contract implemented with plain torch ops.

This file *is* the contract every compiled backend (``cpp``, ``triton``)
implements with fused kernels.  Raw ops are forward-only computations on
validated tensors (no autograd of their own; the autograd Functions in
``mumo_fast.ops.functions`` call them under no-grad).  Conventions:

* ``act`` is one of ``mumo_fast.ops.activations.ACTIVATIONS``.
* Per-channel vectors (bias, gamma, beta, bn weight/bias) arrive as contiguous
  ``[T, C]`` tensors (shared ones already expanded) or ``None``.
* "4-D epilogue layout": a pre-FiLM tensor ``z`` is viewed as ``[T, N, C, S]``
  (S = 1 for linear, H*W for conv/norm), contiguous.
* Every returned tensor is a fresh contiguous tensor of the input dtype;
  reductions ``[T, C]`` are always returned (zeros are fine where unused).

It is also the vmap fallback of the compiled backends, and a backend in its
own right: the Function layer with unfused kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference as ref
from ..activations import activation_grad_from_output


def linear_fwd(x, weight, bias, gamma, beta, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,IN], weight [T,OUT,IN] | [OUT,IN] -> (y, z) both [T,N,OUT]; z = x W^T + b."""
    z = ref.linear_pre_film(x, weight, bias)
    return ref.film_epilogue(z, gamma, beta, act), z


def linear_lowrank_fwd(x, weight, u, v, bias, gamma, beta, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,IN], weight [OUT,IN], u [T,R,IN], v [T,R,OUT] -> (y, z) both [T,N,OUT]."""
    z = ref.linear_lowrank_pre_film(x, weight, u, v, bias)
    return ref.film_epilogue(z, gamma, beta, act), z


def conv_fwd(x, weight, bias, gamma, beta, stride, padding, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,C,H,W], weight [T,O,C,KH,KW] | [O,C,KH,KW] -> (y, z) both [T,N,O,H',W']."""
    z = ref.conv_pre_film(x, weight, bias, tuple(stride), tuple(padding))
    return ref.film_epilogue(z, gamma, beta, act), z


def epilogue_bwd(gy, y, z, gamma, act: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of y = act(z*gamma + beta) in the 4-D layout [T,N,C,S].

    Returns dz [T,N,C,S], dgamma = sum du*z, dbeta = sum du, dbias = sum dz
    (each [T,C], sums over N and S), where du = gy * act'(y) and dz = du * gamma.
    """
    d = activation_grad_from_output(y, act)
    du = gy if d is None else gy * d
    dz = du if gamma is None else du * gamma[:, None, :, None]
    dgamma = (du * z).sum(dim=(1, 3))
    dbeta = du.sum(dim=(1, 3))
    dbias = dz.sum(dim=(1, 3))
    return dz, dgamma, dbeta, dbias


def normalize(x, mean, rstd):
    """(x - mean) * rstd for x [T,N,C,S] and per-task statistics [T,C]."""
    return (x - mean[:, None, :, None]) * rstd[:, None, :, None]


def affine(xhat, weight, bias):
    """xhat * weight + bias (each [T,C] or None) over [T,N,C,S]: batch norm's pre-FiLM z."""
    z = xhat
    if weight is not None:
        z = z * weight[:, None, :, None]
    if bias is not None:
        z = z + bias[:, None, :, None]
    return z


def bn_fwd(x, weight, bias, gamma, beta, eps: float, act: str) -> tuple[Tensor, Tensor, Tensor]:
    """x [T,N,C,S] -> (y [T,N,C,S], mean [T,C], rstd [T,C]) with batch statistics over N, S."""
    mean, rstd = ref.batch_norm_stats(x, eps)
    z = affine(normalize(x, mean, rstd), weight, bias)
    return ref.film_epilogue(z, gamma, beta, act), mean, rstd


def bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act: str, epilogue_bwd=epilogue_bwd):
    """Backward of bn_fwd from the gradient of y (mean and rstd taken as functions of x).
    Returns (dx, dweight, dbias, dgamma, dbeta), each reduction [T,C]; dx [T,N,C,S].

    Written in torch ops around ``epilogue_bwd`` (the FiLM epilogue's backward, this
    module's by default); given a differentiable one, the result is differentiable too,
    which is how the ops' batch-norm Function builds its double backward."""
    xhat = normalize(x, mean, rstd)
    dz, dgamma, dbeta, dbias = epilogue_bwd(gy, y, affine(xhat, weight, bias), gamma, act)
    dweight = (dz * xhat).sum(dim=(1, 3))
    dxhat = dz if weight is None else dz * weight[:, None, :, None]
    m = x.shape[1] * x.shape[3]
    s1 = dxhat.sum(dim=(1, 3), keepdim=True) / m
    s2 = (dxhat * xhat).sum(dim=(1, 3), keepdim=True) / m
    dx = rstd[:, None, :, None] * (dxhat - s1 - xhat * s2)
    return dx, dweight, dbias, dgamma, dbeta


def bn_stats_input_grad(gmean, grstd, x, mean, rstd) -> Tensor | None:
    """The gradient reaching x [T,N,C,S] through the statistics bn_fwd returns, from
    gmean and grstd ([T,C] or None; None when both are)."""
    m = x.shape[1] * x.shape[3]
    dx = None
    if gmean is not None:
        dx = (gmean[:, None, :, None] / m).expand_as(x)
    if grstd is not None:
        term = -(grstd * rstd * rstd / m)[:, None, :, None] * normalize(x, mean, rstd)
        dx = term if dx is None else dx + term
    return dx


def linear_sgd(weight, bias, d, a, lr, clamp) -> tuple[Tensor, Tensor | None]:
    """``ops.linear_sgd`` without forming the gradient ``D^T A`` where no clamp needs it:
    ``W - lr D^T A`` is one batched GEMM accumulating into W (``baddbmm``), with ``-lr``
    applied to the small factor D. Its backward is small GEMMs too, so the second-order
    meta-gradient never writes a weight-sized gradient or scales one."""
    if clamp is not None:
        return ref.linear_sgd(weight, bias, d, a, lr, clamp)
    if isinstance(lr, Tensor):
        d_scaled, alpha = d * -lr, 1.0
    else:
        d_scaled, alpha = d, -float(lr)
    if d.shape[-1] == 1 or a.shape[-1] == 1:
        # (W^T - lr A^T D)^T: with a dimension of 1 the transposed result is contiguous,
        # and the meta-gradient flowing back to D is too (elementwise ops on transposed
        # [T, K, C] gradients are many times slower on CPU)
        new_w = torch.baddbmm(weight.transpose(-1, -2), a.transpose(1, 2), d_scaled, alpha=alpha)
        new_w = new_w.transpose(1, 2)
    else:
        new_w = torch.baddbmm(weight, d_scaled.transpose(1, 2), a, alpha=alpha)
    new_b = None if bias is None else torch.add(bias, d_scaled.sum(1), alpha=alpha)
    return new_w, new_b


def available() -> bool:
    return True
