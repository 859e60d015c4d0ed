"""Backend ``triton``: the raw-op contract (see ``eager.py``) with fused Triton kernels.

Every raw op is a ``torch.library.custom_op`` in the namespace ``mumo_fast_triton``
with a fake (meta) implementation and a vmap rule, and no autograd of its own: the
autograd Functions in ``mumo_fast.ops.functions`` differentiate them.
The vmap rule calls the op once per vmapped index.

Kernels live in ``mumo_fast.kernels``: ``linear`` (batched GEMM over the
task axis + FiLM epilogue), ``lowrank`` (shared GEMM + rank-R correction + epilogue),
``epilogue`` (epilogue backward reductions; conv epilogue), ``norm`` (batch norm
statistics/apply and backward), ``conv`` (vendor conv + fused epilogue), ``update``
(multi-tensor clamped SGD).

Available when triton imports and either CUDA is available or ``TRITON_INTERPRET=1``
(kernels then run on CPU tensors through Triton's interpreter).
"""

# No ``from __future__ import annotations``: torch.library.custom_op infers each op's schema
# from its annotations at run time.

import os

import torch
import triton  # noqa: F401  (ImportError here marks the backend unavailable)
from torch import Tensor

from ...kernels import conv as _conv
from ...kernels import epilogue as _epilogue
from ...kernels import linear as _linear
from ...kernels import lowrank as _lowrank
from ...kernels import norm as _norm
from ...kernels import update as _update
from .. import _torch_internals as _internals
from . import eager

_NS = "mumo_fast_triton"


def available() -> bool:
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _select(arg, dim, i):
    if dim is None:
        return arg
    if isinstance(arg, (list, tuple)):
        return [a if d is None else a.select(d, i) for a, d in zip(arg, dim)]
    return arg.select(dim, i)


def _vmap_loop(op, n_out):
    """A register_vmap rule: call the op once per vmapped index and stack the results
    (torch.vmap cannot be re-entered inside a vmap rule)."""

    def rule(info, in_dims, *args):
        outs = [
            op(*(_select(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)
        ]
        cols = [torch.stack([o[k] for o in outs]) for k in range(len(outs[0]))]
        if n_out is None:
            return cols, [0] * len(cols)
        return tuple(cols), (0,) * n_out

    return rule


def _register(op, fake, n_out):
    op.register_fake(fake)
    torch.library.register_vmap(op, _vmap_loop(op, n_out))
    return op


# --- linear -----------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::linear_fwd", mutates_args=())
def _linear_fwd_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    act: str,
) -> tuple[Tensor, Tensor]:
    return _linear.film_linear_fwd(x, weight, bias, gamma, beta, act)


def _linear_fake(x, weight, bias, gamma, beta, act):
    t, n, _ = x.shape
    o = weight.shape[-2]
    return x.new_empty((t, n, o)), x.new_empty((t, n, o))


_register(_linear_fwd_op, _linear_fake, 2)


@torch.library.custom_op(f"{_NS}::linear_lowrank_fwd", mutates_args=())
def _linear_lowrank_fwd_op(
    x: Tensor,
    weight: Tensor,
    u: Tensor,
    v: Tensor,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    act: str,
) -> tuple[Tensor, Tensor]:
    return _lowrank.film_linear_lowrank_fwd(x, weight, u, v, bias, gamma, beta, act)


def _lowrank_fake(x, weight, u, v, bias, gamma, beta, act):
    t, n, _ = x.shape
    o = weight.shape[0]
    return x.new_empty((t, n, o)), x.new_empty((t, n, o))


_register(_linear_lowrank_fwd_op, _lowrank_fake, 2)


# --- conv -------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::conv_fwd", mutates_args=())
def _conv_fwd_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    stride: list[int],
    padding: list[int],
    act: str,
) -> tuple[Tensor, Tensor]:
    return _conv.film_conv2d_fwd(x, weight, bias, gamma, beta, stride, padding, act)


def _conv_fake(x, weight, bias, gamma, beta, stride, padding, act):
    t, n, _, h, w = x.shape
    o, kh, kw = weight.shape[-4], weight.shape[-2], weight.shape[-1]
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return x.new_empty((t, n, o, ho, wo)), x.new_empty((t, n, o, ho, wo))


_register(_conv_fwd_op, _conv_fake, 2)


# --- FiLM epilogue backward ----------------------------------------------------------


@torch.library.custom_op(f"{_NS}::epilogue_bwd", mutates_args=())
def _epilogue_bwd_op(
    gy: Tensor, y: Tensor, z: Tensor, gamma: Tensor | None, act: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _epilogue.film_epilogue_bwd(gy, y, z, gamma, act)


def _epilogue_bwd_fake(gy, y, z, gamma, act):
    t, _, c, _ = gy.shape
    return torch.empty_like(gy), gy.new_empty((t, c)), gy.new_empty((t, c)), gy.new_empty((t, c))


_register(_epilogue_bwd_op, _epilogue_bwd_fake, 4)


# --- batch norm ---------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::bn_fwd", mutates_args=())
def _bn_fwd_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _norm.bn_fwd(x, weight, bias, gamma, beta, eps, act)


def _bn_fwd_fake(x, weight, bias, gamma, beta, eps, act):
    t, _, c, _ = x.shape
    return torch.empty_like(x), x.new_empty((t, c)), x.new_empty((t, c))


_register(_bn_fwd_op, _bn_fwd_fake, 3)


@torch.library.custom_op(f"{_NS}::bn_bwd", mutates_args=())
def _bn_bwd_op(
    gy: Tensor,
    x: Tensor,
    y: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    gamma: Tensor | None,
    act: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _norm.bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act)


def _bn_bwd_fake(gy, x, y, mean, rstd, weight, bias, gamma, act):
    t, _, c, _ = x.shape
    return (torch.empty_like(x), *(x.new_empty((t, c)) for _ in range(4)))


_register(_bn_bwd_op, _bn_bwd_fake, 5)


# --- inner-loop update ----------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::clamped_sgd", mutates_args=())
def _clamped_sgd_op(
    params: list[Tensor], grads: list[Tensor], lr: Tensor, clamp: float | None
) -> list[Tensor]:
    """params[i] - lr[i] * clamp(grads[i], -clamp, clamp), one launch per 8 tensors."""
    return _update_launch(params, grads, lr, clamp)


def _update_launch(params, grads, lr, clamp):
    return _update.clamped_sgd(
        [p.contiguous() for p in params], [g.contiguous() for g in grads], lr, clamp
    )


def _update_fake(params, grads, lr, clamp):
    return [torch.empty_like(p) for p in params]


_register(_clamped_sgd_op, _update_fake, None)


# --- the raw ops as called by the autograd Functions ----------------------------------


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _direct(args) -> bool:
    """True when a raw op may launch its kernel without the custom-op dispatch (saving its
    Python overhead): plain tensors, no torch.func transform, not under torch.compile.
    Anything else (vmap, grad, fake tensors, tracing) goes through the custom op."""
    if torch.compiler.is_compiling() or _internals.functorch_transforms_active():
        return False
    for a in args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        for t in items:
            if isinstance(t, Tensor) and type(t) not in _PLAIN:
                return False
    return True


def _direct_or_custom_op(op, launcher, name):
    """The raw op ``name``: ``launcher`` called directly where :func:`_direct` allows it,
    else the custom op ``op``."""

    def raw(*args):
        if _direct(args):
            return launcher(*args)
        return op(*args)

    raw.__name__ = raw.__qualname__ = name
    raw.__doc__ = f"Raw op ``{name}`` (contract: backends/eager.py); custom op {op}."
    raw.op = op
    return raw


linear_fwd = _direct_or_custom_op(_linear_fwd_op, _linear.film_linear_fwd, "linear_fwd")
linear_lowrank_fwd = _direct_or_custom_op(
    _linear_lowrank_fwd_op, _lowrank.film_linear_lowrank_fwd, "linear_lowrank_fwd"
)
conv_fwd = _direct_or_custom_op(_conv_fwd_op, _conv.film_conv2d_fwd, "conv_fwd")
epilogue_bwd = _direct_or_custom_op(_epilogue_bwd_op, _epilogue.film_epilogue_bwd, "epilogue_bwd")
bn_fwd = _direct_or_custom_op(_bn_fwd_op, _norm.bn_fwd, "bn_fwd")
bn_bwd = _direct_or_custom_op(_bn_bwd_op, _norm.bn_bwd, "bn_bwd")
clamped_sgd_raw = _direct_or_custom_op(_clamped_sgd_op, _update_launch, "clamped_sgd_raw")


class ClampedSGDFunction(torch.autograd.Function):
    """Differentiable to any order: forward is the fused multi-tensor kernel, backward
    is torch ops of the inputs (grad_p = g_out; grad_g = -lr * g_out * (|g| <= clamp);
    grad_lr = -sum(g_out * clamp(g)))."""

    generate_vmap_rule = True

    @staticmethod
    def forward(clamp, n, lr, *tensors):
        return tuple(clamped_sgd_raw(list(tensors[:n]), list(tensors[n:]), lr, clamp))

    @staticmethod
    def setup_context(ctx, inputs, output):
        clamp, n, lr, *tensors = inputs
        ctx.save_for_backward(lr, *tensors[n:])
        ctx.clamp, ctx.n = clamp, n
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *g_out):
        lr, *grads = ctx.saved_tensors
        n, clamp = ctx.n, ctx.clamp
        need = ctx.needs_input_grad
        grad_p = list(g_out)
        grad_g: list = [None] * n
        grad_lr = None
        lr_terms = []
        for i, (go, g) in enumerate(zip(g_out, grads)):
            if go is None:
                lr_terms.append(torch.zeros((), dtype=lr.dtype, device=lr.device))
                continue
            if need[3 + n + i]:
                gg = -lr[i] * go
                if clamp is not None:
                    gg = gg * (g.abs() <= clamp).to(go.dtype)
                grad_g[i] = gg
            if need[2]:
                gc = g if clamp is None else g.clamp(-clamp, clamp)
                lr_terms.append(-(go * gc).sum())
        if need[2]:
            grad_lr = torch.stack(lr_terms)
        return (
            None,
            None,
            grad_lr,
            *[gp if need[3 + i] else None for i, gp in enumerate(grad_p)],
            *grad_g,
        )


def clamped_sgd(params, grads, lr, clamp):
    """The fused inner-loop update (called by ``mumo_fast.ops.clamped_sgd``)."""
    from .. import reference

    n = len(params)
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * n
    dtype, device = params[0].dtype, params[0].device
    uniform = all(p.dtype == dtype and p.device == device for p in params)
    scalar_lr = all(not isinstance(a, Tensor) or a.numel() == 1 for a in lrs)
    if not (uniform and scalar_lr):
        return reference.clamped_sgd(params, grads, lr, clamp)
    lr_vec = torch.stack(
        [
            a.reshape(()).to(dtype=dtype, device=device)
            if isinstance(a, Tensor)
            else torch.tensor(float(a), dtype=dtype, device=device)
            for a in lrs
        ]
    )
    clamp = None if clamp is None else float(clamp)
    return list(ClampedSGDFunction.apply(clamp, n, lr_vec, *params, *grads))


# one batched GEMM (cuBLAS) accumulating into the weight is already the fused form
linear_sgd = eager.linear_sgd
