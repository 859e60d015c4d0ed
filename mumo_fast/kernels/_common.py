"""Shared pieces of the Triton kernels: settings, activation helpers and the GEMM step.

Settings (read once at import, changeable at run time through the module attributes):

* ``INTERPRET``: True when ``TRITON_INTERPRET=1`` (kernels run on CPU tensors through
  Triton's interpreter; launchers then use one small block configuration).
* ``TF32``: False by default, so ``tl.dot`` on float32 runs with
  ``input_precision="ieee"`` (exact float32 products).  Opt in to TF32 with the
  environment variable ``MUMO_FAST_TF32=1`` or by setting ``mumo_fast.kernels._common.TF32
  = True``; results then differ from the reference by about 1e-3 relative.

The ``ACT`` constexpr of every kernel is an activation's code in
``mumo_fast.ops.activations.ACTIVATION_CODES``.

The reductions over a task's [N, C, S] slice (epilogue backward, batch norm) walk it in
[BLOCK_N, BLOCK_C, BLOCK_S] tiles through :func:`slice_tile`; the kernels that end in the
FiLM epilogue apply it through :func:`film`.
"""

import os

import torch
import triton
import triton.language as tl

from ..ops.activations import ACTIVATION_CODES

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TF32 = os.environ.get("MUMO_FAST_TF32", "0") == "1"

# the activation codes as Triton compile-time constants
ACT_NONE = tl.constexpr(ACTIVATION_CODES["none"])
ACT_RELU = tl.constexpr(ACTIVATION_CODES["relu"])
ACT_TANH = tl.constexpr(ACTIVATION_CODES["tanh"])
ACT_SIGMOID = tl.constexpr(ACTIVATION_CODES["sigmoid"])


def acc_dtype(dtype: torch.dtype):
    """Accumulator dtype for tensors of ``dtype``: float64 stays float64, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """``acc_dtype`` as a torch dtype (for runtime scalars handed to a kernel)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def use_dot(dtype: torch.dtype) -> bool:
    """Whether GEMM tiles go through ``tl.dot`` (float32/16) or a broadcast-multiply-sum
    (float64: exact on every target, including GPUs without a float64 ``tl.dot``)."""
    return dtype != torch.float64


def input_precision() -> str:
    return "tf32" if TF32 else "ieee"


def scalar(value: float, dtype: torch.dtype, device) -> torch.Tensor:
    """A runtime float (clamp bound, eps, ...) for a kernel, as a 1-element tensor of
    ``dtype`` that the kernel loads.  Kernels take no Python float argument: Triton types
    one as float32 (compiled kernels, and some uses in interpreters up to 3.8), which
    rounds a float64 kernel's bound or eps to float32 precision."""
    return torch.full((1,), float(value), dtype=dtype, device=device)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


@triton.jit
def activate(u, ACT: tl.constexpr):
    """act(u) for the activation code ACT, in u's dtype."""
    if ACT == ACT_RELU:
        u = tl.where(u > 0, u, 0.0)
    elif ACT == ACT_TANH:
        e = tl.exp(-2.0 * tl.abs(u))
        th = (1.0 - e) / (1.0 + e)
        u = tl.where(u >= 0, th, -th)
    elif ACT == ACT_SIGMOID:
        u = 1.0 / (1.0 + tl.exp(-u))
    return u


@triton.jit
def activation_grad_from_output(y, ACT: tl.constexpr):
    """d act(u)/du written as a function of y = act(u) (1 for no activation)."""
    if ACT == ACT_NONE:
        d = tl.full(y.shape, 1.0, y.dtype)
    elif ACT == ACT_RELU:
        d = tl.where(y > 0, 1.0, 0.0).to(y.dtype)
    elif ACT == ACT_TANH:
        d = 1.0 - y * y
    else:
        d = y * (1.0 - y)
    return d


@triton.jit
def film(
    z,
    bias_ptr,
    gamma_ptr,
    beta_ptr,
    vec,
    mask,
    HAS_BIAS: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """The FiLM epilogue: (z + bias, act((z + bias) * gamma + beta)) in ACC_DTYPE, the
    per-channel vectors loaded at offsets ``vec`` where ``mask`` (both broadcastable
    against z), each one only where its HAS_* is set."""
    if HAS_BIAS:
        z += tl.load(bias_ptr + vec, mask=mask, other=0.0).to(ACC_DTYPE)
    u = z
    if HAS_GAMMA:
        u = u * tl.load(gamma_ptr + vec, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_BETA:
        u = u + tl.load(beta_ptr + vec, mask=mask, other=0.0).to(ACC_DTYPE)
    return z, activate(u, ACT)


@triton.jit
def slice_tile(base, it, N, C, S, offs_c, mask_c, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """(offsets, mask) of tile ``it`` of one task's [N, C, S] slice of a contiguous
    [T, N, C, S] tensor, the slice starting at element ``base``: the [BLOCK_N, len(offs_c),
    BLOCK_S] block of rows, channels offs_c (valid where mask_c) and positions. Tiles run
    over N in the outer order and S in the inner; a task's slice has
    ``cdiv(N, BLOCK_N) * cdiv(S, BLOCK_S)`` of them."""
    num_s = tl.cdiv(S, BLOCK_S)
    offs_n = (it // num_s) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_s = (it % num_s) * BLOCK_S + tl.arange(0, BLOCK_S)
    row = base + offs_n[:, None, None] * (C * S) + offs_c[None, :, None] * S
    mask = (offs_n < N)[:, None, None] & mask_c[None, :, None] & (offs_s < S)[None, None, :]
    return row + offs_s[None, None, :], mask


@triton.jit
def mm_acc(acc, a, b, USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b for tiles a [BM, BK], b [BK, BN].

    USE_DOT: tensor-core ``tl.dot`` with INPUT_PRECISION ("ieee" exact float32 or
    "tf32"); otherwise a broadcast multiply and sum in acc's dtype (float64).
    """
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    return acc
