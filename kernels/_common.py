"""Shared pieces of the Triton kernels: settings, activation helpers and the GEMM step.

Settings (read once at import, changeable at run time through the module attributes):

* ``INTERPRET``: True when ``TRITON_INTERPRET=1`` (kernels run on CPU tensors through
  Triton's interpreter; launchers then use one small block configuration).
* ``TF32``: False by default, so ``tl.dot`` on float32 runs with
  ``input_precision="ieee"`` (exact float32 products).  Opt in to TF32 with the
  environment variable ``MUMO_FAST_TF32=1`` or by setting ``mumo_fast.kernels._common.TF32
  = True``; results then differ from the reference by about 1e-3 relative.

Activation codes (the ``ACT`` constexpr of every kernel): 0 none, 1 relu, 2 tanh,
3 sigmoid.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TF32 = os.environ.get("MUMO_FAST_TF32", "0") == "1"

ACT_CODES = {"none": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def act_code(act: str) -> int:
    try:
        return ACT_CODES[act]
    except KeyError:
        raise ValueError(f"activation must be one of {tuple(ACT_CODES)}, got {act!r}") from None


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
    """act(u) for ACT in {0 none, 1 relu, 2 tanh, 3 sigmoid}, in u's dtype."""
    if ACT == 1:
        u = tl.where(u > 0, u, 0.0)
    elif ACT == 2:
        e = tl.exp(-2.0 * tl.abs(u))
        th = (1.0 - e) / (1.0 + e)
        u = tl.where(u >= 0, th, -th)
    elif ACT == 3:
        u = 1.0 / (1.0 + tl.exp(-u))
    return u


@triton.jit
def activation_grad_from_output(y, ACT: tl.constexpr):
    """d act(u)/du written as a function of y = act(u) (1 for ACT == 0)."""
    if ACT == 0:
        d = tl.full(y.shape, 1.0, y.dtype)
    elif ACT == 1:
        d = tl.where(y > 0, 1.0, 0.0).to(y.dtype)
    elif ACT == 2:
        d = 1.0 - y * y
    else:
        d = y * (1.0 - y)
    return d


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
