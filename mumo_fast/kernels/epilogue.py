"""The FiLM epilogue on the 4-D layout [T, N, C, S] (S = 1 for linear, H*W for conv).

* ``film_epilogue_fwd``: ``z += bias``; ``y = act(z * gamma + beta)``, one elementwise
  pass (used after the vendor convolution).
* ``film_epilogue_bwd``: ``du = gy * act'(y)``, ``dz = du * gamma`` and the per-(task,
  channel) reductions ``dgamma = sum du*z``, ``dbeta = sum du``, ``dbias = sum dz`` over N
  and S, in one pass; one program owns a block of channels of one task, so the sums
  need no atomics.
"""

import torch
import triton
import triton.language as tl

from ..ops.activations import activation_code
from . import _common
from ._common import ACT_NONE, activation_grad_from_output, film, slice_tile


@triton.jit
def film_epilogue_fwd_kernel(
    z_ptr,
    bias_ptr,
    gamma_ptr,
    beta_ptr,
    y_ptr,
    numel,
    C,
    S,
    NCS,
    HAS_BIAS: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Elementwise epilogue over a contiguous [T, N, C, S] tensor, BLOCK elements a program.

    Grid: (cdiv(numel, BLOCK),).
    Pointers:
        z_ptr: pre-bias values [T, N, C, S], contiguous; overwritten in place with z + bias
            when HAS_BIAS (the pre-FiLM output the backward needs).
        bias_ptr, gamma_ptr, beta_ptr: contiguous [T, C] vectors (read only when the
            matching HAS_* is set).
        y_ptr: output [T, N, C, S], contiguous.
    Sizes: numel = T*N*C*S, channels C, spatial size S, NCS = N*C*S (elements per task).
    Constexprs: ACT activation code; ACC_DTYPE compute dtype; BLOCK elements per program.
    """
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    t = offs // NCS
    c = (offs // S) % C
    vec = t * C + c
    z, y = film(
        z, bias_ptr, gamma_ptr, beta_ptr, vec, mask, HAS_BIAS, HAS_GAMMA, HAS_BETA, ACT, ACC_DTYPE
    )
    if HAS_BIAS:
        tl.store(z_ptr + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def film_epilogue_bwd_kernel(
    gy_ptr,
    y_ptr,
    z_ptr,
    gamma_ptr,
    dz_ptr,
    dgamma_ptr,
    dbeta_ptr,
    dbias_ptr,
    N,
    C,
    S,
    HAS_GAMMA: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Backward of y = act(z*gamma + beta) for one task and BLOCK_C channels.

    Grid: (cdiv(C, BLOCK_C), T); program_id(1) is the task.  The program walks N and S
    in [BLOCK_N, BLOCK_C, BLOCK_S] tiles (choose BLOCK_S = 1, BLOCK_C wide for S == 1;
    BLOCK_C small and BLOCK_S wide for image layouts), writes dz and the three sums.
    Pointers:
        gy_ptr, y_ptr, z_ptr: [T, N, C, S] contiguous inputs (grad of y, y, pre-FiLM z).
        gamma_ptr: [T, C] contiguous, read when HAS_GAMMA.
        dz_ptr: output [T, N, C, S] contiguous, du * gamma.
        dgamma_ptr, dbeta_ptr, dbias_ptr: outputs [T, C] contiguous.
    Sizes: N, C, S as in the layout (runtime).
    Constexprs: ACT activation code; ACC_DTYPE accumulation dtype; BLOCK_N, BLOCK_C,
        BLOCK_S tile sizes (powers of two, BLOCK_S may be 1).
    """
    pid_c = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    if HAS_GAMMA:
        g = tl.load(gamma_ptr + t * C + offs_c, mask=mask_c, other=0.0).to(ACC_DTYPE)
    else:
        g = tl.full((BLOCK_C,), 1.0, ACC_DTYPE)
    acc_dg = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    acc_db = tl.zeros((BLOCK_N, BLOCK_C, BLOCK_S), dtype=ACC_DTYPE)
    base = t * N * C * S
    for it in range(0, tl.cdiv(N, BLOCK_N) * tl.cdiv(S, BLOCK_S)):
        idx, mask = slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N, BLOCK_S)
        gy = tl.load(gy_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
        if ACT == ACT_NONE:
            du = gy
        else:
            y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC_DTYPE)
            du = gy * activation_grad_from_output(y, ACT)
        dz = du * g[None, :, None]
        tl.store(dz_ptr + idx, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        acc_dg += du * z
        acc_db += du
    dgamma = tl.sum(tl.sum(acc_dg, axis=2), axis=0)
    dbeta = tl.sum(tl.sum(acc_db, axis=2), axis=0)
    dbias = dbeta * g
    vec = t * C + offs_c
    tl.store(dgamma_ptr + vec, dgamma.to(dgamma_ptr.dtype.element_ty), mask=mask_c)
    tl.store(dbeta_ptr + vec, dbeta.to(dbeta_ptr.dtype.element_ty), mask=mask_c)
    tl.store(dbias_ptr + vec, dbias.to(dbias_ptr.dtype.element_ty), mask=mask_c)


def reduce_blocks(n: int, c: int, s: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_C, BLOCK_S, num_warps) for the per-(task, channel-block) reductions
    over a [T, N, C, S] tensor: vectorise along the contiguous axis (C when S == 1, else S)
    and keep about 1-4K elements in flight per program."""
    budget = 256 if _common.INTERPRET else 4096
    if s == 1:
        bs = 1
        bc = _common.clamp_pow2(c, 1, 64 if _common.INTERPRET else 128)
    else:
        # small images: several channels per program so that each row of the tile spans
        # >= 64 contiguous elements (channels c..c+BC-1 of one sample are adjacent)
        bs = _common.clamp_pow2(s, 1, 1024)
        bc = max(1, min(_common.next_pow2(c), 64 // bs))
    bn = max(1, min(_common.next_pow2(n), budget // (bc * bs)))
    warps = 4 if bn * bc * bs <= 2048 else 8
    return bn, bc, bs, warps


def film_epilogue_fwd(z, bias, gamma, beta, act: str):
    """z [T,N,C,S] contiguous (modified in place: + bias); returns y [T,N,C,S]."""
    t, n, c, s = z.shape
    y = torch.empty_like(z)
    numel = z.numel()
    block = 256 if _common.INTERPRET else 1024
    film_epilogue_fwd_kernel[(triton.cdiv(numel, block),)](
        z,
        z if bias is None else bias,
        z if gamma is None else gamma,
        z if beta is None else beta,
        y,
        numel,
        c,
        s,
        n * c * s,
        HAS_BIAS=bias is not None,
        HAS_GAMMA=gamma is not None,
        HAS_BETA=beta is not None,
        ACT=activation_code(act),
        ACC_DTYPE=_common.acc_dtype(z.dtype),
        BLOCK=block,
        num_warps=4,
    )
    return y


def film_epilogue_bwd(gy, y, z, gamma, act: str):
    """Launcher of the raw op ``epilogue_bwd`` (contract in backends/eager.py)."""
    t, n, c, s = gy.shape
    dz = torch.empty_like(gy)
    dgamma, dbeta, dbias = (gy.new_empty((t, c)) for _ in range(3))
    bn, bc, bs, warps = reduce_blocks(n, c, s)
    film_epilogue_bwd_kernel[(triton.cdiv(c, bc), t)](
        gy,
        y,
        z,
        gy if gamma is None else gamma,
        dz,
        dgamma,
        dbeta,
        dbias,
        n,
        c,
        s,
        HAS_GAMMA=gamma is not None,
        ACT=activation_code(act),
        ACC_DTYPE=_common.acc_dtype(gy.dtype),
        BLOCK_N=bn,
        BLOCK_C=bc,
        BLOCK_S=bs,
        num_warps=warps,
    )
    return dz, dgamma, dbeta, dbias
