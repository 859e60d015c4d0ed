"""Low-rank FiLM linear: shared GEMM + per-task rank-R correction + epilogue, one kernel.

``z[t] = x[t] @ W^T + (x[t] @ u[t]^T) @ v[t] + bias[t]``, ``y = act(z*gamma + beta)``:
the per-task weights ``W + v[t]^T u[t]`` are never built.  Each program computes one
[BLOCK_M, BLOCK_N] tile of one task: while it streams x it accumulates both
``x W^T`` and the rank-R projection ``p = x u[t]^T`` ([BLOCK_M, BLOCK_R]), then adds
``p @ v[t]`` before the epilogue.
"""

import torch
import triton
import triton.language as tl

from ..ops.activations import activation_code
from . import _common
from ._common import film, mm_acc
from .linear import gemm_blocks


@triton.jit
def film_linear_lowrank_fwd_kernel(
    x_ptr,
    w_ptr,
    u_ptr,
    v_ptr,
    bias_ptr,
    gamma_ptr,
    beta_ptr,
    y_ptr,
    z_ptr,
    N,
    OUT,
    IN,
    R,
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
    BLOCK_R: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of y and z for one task.

    Grid: (cdiv(N, BLOCK_M) * cdiv(OUT, BLOCK_N), T); program_id(1) is the task t.
    Pointers (all contiguous):
        x_ptr: input [T, N, IN].
        w_ptr: shared weight [OUT, IN].
        u_ptr: per-task left factors [T, R, IN]; v_ptr: right factors [T, R, OUT].
        bias_ptr, gamma_ptr, beta_ptr: [T, OUT] (read when the matching HAS_* is set).
        y_ptr, z_ptr: outputs [T, N, OUT].
    Sizes: N rows per task, OUT, IN features, rank R <= BLOCK_R (runtime).
    Constexprs: ACT activation code; USE_DOT, INPUT_PRECISION GEMM step; ACC_DTYPE
        accumulator dtype; BLOCK_M, BLOCK_N, BLOCK_K tile; BLOCK_R >= R the rank tile.
    """
    pid = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    num_n = tl.cdiv(OUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    mask_m = offs_m < N
    mask_n = offs_n < OUT
    mask_r = offs_r < R
    x_base = x_ptr + t * N * IN
    u_base = u_ptr + t * R * IN
    v_base = v_ptr + t * R * OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    p = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC_DTYPE)
    for k0 in range(0, IN, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < IN
        a = tl.load(
            x_base + offs_m[:, None] * IN + kk[None, :],
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + offs_n[None, :] * IN + kk[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        ut = tl.load(
            u_base + offs_r[None, :] * IN + kk[:, None],
            mask=mask_k[:, None] & mask_r[None, :],
            other=0.0,
        )
        acc = mm_acc(acc, a, b, USE_DOT, INPUT_PRECISION)
        p = mm_acc(p, a, ut, USE_DOT, INPUT_PRECISION)
    vt = tl.load(
        v_base + offs_r[:, None] * OUT + offs_n[None, :],
        mask=mask_r[:, None] & mask_n[None, :],
        other=0.0,
    )
    acc = mm_acc(acc, p.to(vt.dtype), vt, USE_DOT, INPUT_PRECISION)
    vec = t * OUT + offs_n
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
    out = t * N * OUT + offs_m[:, None] * OUT + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)


def film_linear_lowrank_fwd(x, weight, u, v, bias, gamma, beta, act: str):
    """Launcher of the raw op ``linear_lowrank_fwd`` (all tensors contiguous)."""
    t, n, i = x.shape
    o = weight.shape[0]
    r = u.shape[1]
    y = x.new_empty((t, n, o))
    z = torch.empty_like(y)
    dot = _common.use_dot(x.dtype)
    bm, bn, bk, warps = gemm_blocks(n, o, i, dot)
    br = _common.clamp_pow2(r, 16 if dot else 1, 1 << 20)
    grid = (triton.cdiv(n, bm) * triton.cdiv(o, bn), t)
    film_linear_lowrank_fwd_kernel[grid](
        x,
        weight,
        u,
        v,
        y if bias is None else bias,
        y if gamma is None else gamma,
        y if beta is None else beta,
        y,
        z,
        n,
        o,
        i,
        r,
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
        BLOCK_R=br,
        num_warps=warps,
    )
    return y, z
