"""FiLM linear forward: a batched GEMM over the task axis with the epilogue in registers.

``z[t] = x[t] @ W[t]^T + bias[t]``, ``y[t] = act(z[t] * gamma[t] + beta[t])`` for every
task t; the task index is the launch grid's second axis, and shared weights are the
same kernel with a task stride of 0.  Both y and z are written (z feeds the
differentiable backward; see ``mumo_fast/ops/functions.py``).
"""

import torch
import triton
import triton.language as tl

from ..ops.activations import activation_code
from . import _common
from ._common import film, mm_acc


@triton.jit
def film_linear_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    gamma_ptr,
    beta_ptr,
    y_ptr,
    z_ptr,
    N,
    OUT,
    IN,
    stride_xt,
    stride_xn,
    stride_xk,
    stride_wt,
    stride_wo,
    stride_wk,
    stride_vt,
    stride_yt,
    stride_yn,
    stride_yo,
    HAS_BIAS: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACT: tl.constexpr,
    USE_DOT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of y and z for one task.

    Grid: (cdiv(N, BLOCK_M) * cdiv(OUT, BLOCK_N), T); program_id(1) is the task t.

    Pointers:
        x_ptr: input x [T, N, IN], strides (stride_xt, stride_xn, stride_xk).
        w_ptr: weight [T, OUT, IN] (stride_wt = OUT*IN) or shared [OUT, IN] (stride_wt = 0),
            strides (stride_wt, stride_wo, stride_wk).
        bias_ptr, gamma_ptr, beta_ptr: per-task vectors [T, OUT] with task stride
            stride_vt and unit channel stride; read only when HAS_BIAS / HAS_GAMMA /
            HAS_BETA (otherwise any valid pointer).
        y_ptr, z_ptr: outputs [T, N, OUT], strides (stride_yt, stride_yn, stride_yo), the
            same for both.
    Sizes: N rows per task, OUT output features, IN input features (runtime).
    Constexprs:
        ACT: activation code (0 none, 1 relu, 2 tanh, 3 sigmoid).
        USE_DOT, INPUT_PRECISION: GEMM step (see ``_common.mm_acc``).
        ACC_DTYPE: accumulator and epilogue dtype (float32, or float64 for float64 data).
        BLOCK_M, BLOCK_N, BLOCK_K: tile of rows, output features and the reduction step
            (each >= 16 when USE_DOT).
    """
    pid = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    num_n = tl.cdiv(OUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < N
    mask_n = offs_n < OUT
    x_base = x_ptr + t * stride_xt
    w_base = w_ptr + t * stride_wt
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, IN, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < IN
        a = tl.load(
            x_base + offs_m[:, None] * stride_xn + kk[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        b = tl.load(
            w_base + kk[:, None] * stride_wk + offs_n[None, :] * stride_wo,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = mm_acc(acc, a, b, USE_DOT, INPUT_PRECISION)
    vec = t * stride_vt + offs_n
    z, y = film(
        acc,
        bias_ptr,
        gamma_ptr,
        beta_ptr,
        vec[None, :],
        mask_n[None, :],
        HAS_BIAS,
        HAS_GAMMA,
        HAS_BETA,
        ACT,
        ACC_DTYPE,
    )
    out = t * stride_yt + offs_m[:, None] * stride_yn + offs_n[None, :] * stride_yo
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)


def gemm_blocks(rows: int, cols: int, red: int, dot: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for a [rows, cols] output reducing over red.

    A fixed rule (no autotuning: every specialisation compiles once).  ``tl.dot`` tiles
    are at least 16 wide; the float64 broadcast path keeps BM*BN*BK small.
    """
    if _common.INTERPRET:
        return 16, 16, 16, 4
    if not dot:
        return _common.clamp_pow2(rows, 8, 16), _common.clamp_pow2(cols, 16, 32), 8, 4
    bm = 16 if rows <= 16 else (32 if rows <= 32 else 64)
    bn = 64 if cols <= 128 else 128
    bk = 32
    warps = 4 if bm * bn <= 4096 else 8
    return bm, bn, bk, warps


def film_linear_fwd(x, weight, bias, gamma, beta, act: str):
    """Launcher. x [T,N,IN] contiguous; weight [T,OUT,IN] | [OUT,IN]; bias/gamma/beta
    contiguous [T,OUT] or None. Returns (y, z), fresh [T,N,OUT] tensors of x's dtype."""
    t, n, i = x.shape
    o = weight.shape[-2]
    y = torch.empty((t, n, o), device=x.device, dtype=x.dtype)
    z = torch.empty_like(y)
    dot = _common.use_dot(x.dtype)
    bm, bn, bk, warps = gemm_blocks(n, o, i, dot)
    stride_wt = weight.stride(0) if weight.dim() == 3 else 0
    dummy = y
    grid = (triton.cdiv(n, bm) * triton.cdiv(o, bn), t)
    film_linear_fwd_kernel[grid](
        x,
        weight,
        dummy if bias is None else bias,
        dummy if gamma is None else gamma,
        dummy if beta is None else beta,
        y,
        z,
        n,
        o,
        i,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        stride_wt,
        weight.stride(-2),
        weight.stride(-1),
        o,
        y.stride(0),
        y.stride(1),
        y.stride(2),
        HAS_BIAS=bias is not None,
        HAS_GAMMA=gamma is not None,
        HAS_BETA=beta is not None,
        ACT=activation_code(act),
        USE_DOT=dot,
        INPUT_PRECISION=_common.input_precision(),
        ACC_DTYPE=_common.acc_dtype(x.dtype),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=warps,
    )
    return y, z
