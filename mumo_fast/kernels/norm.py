"""FiLM batch norm on the [T, N, C, S] layout: per-task, per-channel batch statistics.

One program owns a block of channels of one task (all N*S values of each), so the
statistics need no atomics and no second launch: ``bn_fwd`` computes the shifted sums
in one read of its slice and normalises in a second read (which an L2-sized slice
serves from cache); ``bn_bwd`` likewise reduces, then writes dx.
"""

import torch
import triton
import triton.language as tl

from ..ops.activations import activation_code
from . import _common
from ._common import ACT_NONE, activate, activation_grad_from_output, slice_tile
from .epilogue import reduce_blocks


@triton.jit
def _load_channels(
    ptr, t, C, offs_c, mask_c, FLAG: tl.constexpr, DEFAULT: tl.constexpr, DTYPE: tl.constexpr
):
    if FLAG:
        v = tl.load(ptr + t * C + offs_c, mask=mask_c, other=DEFAULT).to(DTYPE)
    else:
        v = tl.full(offs_c.shape, DEFAULT, DTYPE)
    return v


@triton.jit
def bn_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    gamma_ptr,
    beta_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    N,
    C,
    S,
    eps_ptr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """y = act(((x - mean) * rstd * w + b) * gamma + beta) for one task, BLOCK_C channels.

    Grid: (cdiv(C, BLOCK_C), T); program_id(1) is the task.
    Pointers:
        x_ptr: input [T, N, C, S], contiguous.
        w_ptr, b_ptr: batch norm's affine [T, C] (read when HAS_W / HAS_B).
        gamma_ptr, beta_ptr: FiLM [T, C] (read when HAS_GAMMA / HAS_BETA).
        y_ptr: output [T, N, C, S], contiguous.
        mean_ptr, rstd_ptr: outputs [T, C]: mean and 1/sqrt(biased var + eps) over N, S.
        eps_ptr: [1] batch norm's eps in ACC_DTYPE (a tensor, not a Python float, so that
            float64 keeps a float64 eps).
    Sizes: N, C, S (runtime).
    Constexprs: ACT activation code; ACC_DTYPE statistics dtype; BLOCK_N, BLOCK_C,
        BLOCK_S the tile walked over N and S.
    Statistics: sums of x - x[t, 0, c, 0] and its square (shifted, so no catastrophic
    cancellation for data far from zero), then var = E[d^2] - E[d]^2.
    """
    pid_c = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    base = t * N * C * S
    shift = tl.load(x_ptr + base + offs_c * S, mask=mask_c, other=0.0).to(ACC_DTYPE)
    acc1 = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    acc2 = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    for it in range(0, tl.cdiv(N, BLOCK_N) * tl.cdiv(S, BLOCK_S)):
        idx, mask = slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N, BLOCK_S)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0)
        d = tl.where(mask, x.to(ACC_DTYPE) - shift[None, :, None], 0.0)
        acc1 += d
        acc2 += d * d
    m = N * S
    s1 = tl.sum(tl.sum(acc1, axis=2), axis=0) / m
    s2 = tl.sum(tl.sum(acc2, axis=2), axis=0) / m
    var = tl.maximum(s2 - s1 * s1, 0.0)
    mean = shift + s1
    eps = tl.load(eps_ptr).to(ACC_DTYPE)
    rstd = 1.0 / tl.sqrt(var + eps)
    vec = t * C + offs_c
    tl.store(mean_ptr + vec, mean.to(mean_ptr.dtype.element_ty), mask=mask_c)
    tl.store(rstd_ptr + vec, rstd.to(rstd_ptr.dtype.element_ty), mask=mask_c)
    w = _load_channels(w_ptr, t, C, offs_c, mask_c, HAS_W, 1.0, ACC_DTYPE)
    b = _load_channels(b_ptr, t, C, offs_c, mask_c, HAS_B, 0.0, ACC_DTYPE)
    g = _load_channels(gamma_ptr, t, C, offs_c, mask_c, HAS_GAMMA, 1.0, ACC_DTYPE)
    be = _load_channels(beta_ptr, t, C, offs_c, mask_c, HAS_BETA, 0.0, ACC_DTYPE)
    # y = act(xhat * scale + offset) with scale = w*g, offset = b*g + be
    scale = (w * g)[None, :, None]
    offset = (b * g + be)[None, :, None]
    mean3 = mean[None, :, None]
    rstd3 = rstd[None, :, None]
    for it in range(0, tl.cdiv(N, BLOCK_N) * tl.cdiv(S, BLOCK_S)):
        idx, mask = slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N, BLOCK_S)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        y = activate((x - mean3) * rstd3 * scale + offset, ACT)
        tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_bwd_kernel(
    gy_ptr,
    x_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    w_ptr,
    b_ptr,
    gamma_ptr,
    dx_ptr,
    dw_ptr,
    db_ptr,
    dgamma_ptr,
    dbeta_ptr,
    N,
    C,
    S,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """First-order backward of bn_fwd for one task and BLOCK_C channels.

    Grid: (cdiv(C, BLOCK_C), T).
    Pointers:
        gy_ptr, x_ptr, y_ptr: [T, N, C, S] contiguous (grad of y, input, output).
        mean_ptr, rstd_ptr: [T, C] statistics from bn_fwd.
        w_ptr, b_ptr, gamma_ptr: [T, C] (read when HAS_W / HAS_B / HAS_GAMMA).
        dx_ptr: output [T, N, C, S] contiguous.
        dw_ptr, db_ptr, dgamma_ptr, dbeta_ptr: outputs [T, C].
    Sizes: N, C, S (runtime).
    Constexprs: ACT activation code; ACC_DTYPE accumulation dtype; tile BLOCK_N,
        BLOCK_C, BLOCK_S.
    Pass 1 sums du, du*xhat and du*z (du = gy * act'(y)); pass 2 writes
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = du*gamma*w.
    """
    pid_c = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    base = t * N * C * S
    vec = t * C + offs_c
    mean = tl.load(mean_ptr + vec, mask=mask_c, other=0.0).to(ACC_DTYPE)[None, :, None]
    rstd = tl.load(rstd_ptr + vec, mask=mask_c, other=0.0).to(ACC_DTYPE)[None, :, None]
    w = _load_channels(w_ptr, t, C, offs_c, mask_c, HAS_W, 1.0, ACC_DTYPE)
    b = _load_channels(b_ptr, t, C, offs_c, mask_c, HAS_B, 0.0, ACC_DTYPE)
    g = _load_channels(gamma_ptr, t, C, offs_c, mask_c, HAS_GAMMA, 1.0, ACC_DTYPE)
    acc_du = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    acc_dux = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    for it in range(0, tl.cdiv(N, BLOCK_N) * tl.cdiv(S, BLOCK_S)):
        idx, mask = slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N, BLOCK_S)
        du = tl.load(gy_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        if ACT != ACT_NONE:
            y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
            du = du * activation_grad_from_output(y, ACT)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        acc_du += du
        acc_dux += du * ((x - mean) * rstd)
    sum_du = tl.sum(tl.sum(acc_du, axis=2), axis=0)
    sum_dux = tl.sum(tl.sum(acc_dux, axis=2), axis=0)
    # z = xhat*w + b  =>  sum du*z = w*sum(du*xhat) + b*sum(du)
    dgamma = w * sum_dux + b * sum_du
    dbeta = sum_du
    db = g * sum_du
    dw = g * sum_dux
    tl.store(dgamma_ptr + vec, dgamma.to(dgamma_ptr.dtype.element_ty), mask=mask_c)
    tl.store(dbeta_ptr + vec, dbeta.to(dbeta_ptr.dtype.element_ty), mask=mask_c)
    tl.store(db_ptr + vec, db.to(db_ptr.dtype.element_ty), mask=mask_c)
    tl.store(dw_ptr + vec, dw.to(dw_ptr.dtype.element_ty), mask=mask_c)
    m = N * S
    gw = (g * w)[None, :, None]
    mean_dxhat = (g * w * sum_du / m)[None, :, None]
    mean_dxhat_xhat = (g * w * sum_dux / m)[None, :, None]
    for it in range(0, tl.cdiv(N, BLOCK_N) * tl.cdiv(S, BLOCK_S)):
        idx, mask = slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N, BLOCK_S)
        du = tl.load(gy_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        if ACT != ACT_NONE:
            y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
            du = du * activation_grad_from_output(y, ACT)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        xhat = (x - mean) * rstd
        dx = rstd * (du * gw - mean_dxhat - xhat * mean_dxhat_xhat)
        tl.store(dx_ptr + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def bn_fwd(x, weight, bias, gamma, beta, eps: float, act: str):
    """Launcher of the raw op ``bn_fwd``: x [T,N,C,S] contiguous -> (y, mean, rstd)."""
    t, n, c, s = x.shape
    y = torch.empty_like(x)
    mean = x.new_empty((t, c))
    rstd = x.new_empty((t, c))
    bn, bc, bs, warps = reduce_blocks(n, c, s)
    bn_fwd_kernel[(triton.cdiv(c, bc), t)](
        x,
        x if weight is None else weight,
        x if bias is None else bias,
        x if gamma is None else gamma,
        x if beta is None else beta,
        y,
        mean,
        rstd,
        n,
        c,
        s,
        _common.scalar(eps, _common.acc_torch_dtype(x.dtype), x.device),
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        HAS_GAMMA=gamma is not None,
        HAS_BETA=beta is not None,
        ACT=activation_code(act),
        ACC_DTYPE=_common.acc_dtype(x.dtype),
        BLOCK_N=bn,
        BLOCK_C=bc,
        BLOCK_S=bs,
        num_warps=warps,
    )
    return y, mean, rstd


def bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act: str):
    """Launcher of the raw op ``bn_bwd`` -> (dx, dweight, dbias, dgamma, dbeta)."""
    t, n, c, s = x.shape
    dx = torch.empty_like(x)
    dw, db, dgamma, dbeta = (x.new_empty((t, c)) for _ in range(4))
    bn, bc, bs, warps = reduce_blocks(n, c, s)
    bn_bwd_kernel[(triton.cdiv(c, bc), t)](
        gy,
        x,
        y,
        mean,
        rstd,
        x if weight is None else weight,
        x if bias is None else bias,
        x if gamma is None else gamma,
        dx,
        dw,
        db,
        dgamma,
        dbeta,
        n,
        c,
        s,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        HAS_GAMMA=gamma is not None,
        ACT=activation_code(act),
        ACC_DTYPE=_common.acc_dtype(x.dtype),
        BLOCK_N=bn,
        BLOCK_C=bc,
        BLOCK_S=bs,
        num_warps=warps,
    )
    return dx, dw, db, dgamma, dbeta
