"""Autograd Functions over a backend's raw ops, differentiable to any order
(docs/design.md, section 3).

Pattern: the forward calls a raw kernel; ``setup_context``
saves only inputs and outputs (the pre-FiLM value ``z`` and the batch-norm
statistics are returned as extra outputs, never saved as hidden
intermediates); every backward is built from torch ops or from other Functions
of this module whose own backward is torch ops, so autograd can differentiate
it again.  ``generate_vmap_rule = True`` keeps them usable under torch.func.

Forward mode: every Function has a ``jvp`` written in torch ops (the tangents of its
outputs from those of its inputs, with the saved inputs and outputs; no raw kernel), so
``torch.func.jvp``, ``jacfwd`` and forward-over-reverse (``hessian``: ``jacfwd`` of
``jacrev``, which differentiates the backward, itself built from torch ops and
``FiLMEpilogueBackward``) work on every backend.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd import Function

from . import _torch_internals as _internals
from .activations import activation_grad_from_output, activation_second_grad_from_output
from .backends import eager
from .reference import conv_pre_film, per_channel


class _Function(Function):
    """autograd.Function whose ``apply`` skips torch's per-call ``inspect.signature``
    argument binding (every call here passes all arguments positionally) unless a
    torch.func transform is active, where torch's own path is needed. Profiling put the
    binding at about a third of the Python overhead of an op call."""

    @classmethod
    def apply(cls, *args):
        if _internals.functorch_transforms_active():
            _refuse_forward_over_forward()
            return super().apply(*args)
        return _internals.apply_unbound(cls, args)


def _refuse_forward_over_forward() -> None:
    """Forward mode over forward mode (``jacfwd(jacfwd(f))``; torch.autograd.forward_ad
    itself refuses nested levels) would be silently wrong: PyTorch does not differentiate
    an autograd.Function's ``jvp``, so the outer tangent misses the inner jvp's own
    derivative. Refuse it."""
    # (a torch.func jvp opens a forward_ad level too: the larger count, not the sum)
    levels = max(_internals.forward_ad_level() + 1, _internals.functorch_jvp_depth())
    if levels >= 2:
        raise NotImplementedError(
            "mumo_fast ops: forward mode over forward mode (e.g. jacfwd(jacfwd(f))) "
            "is not supported (PyTorch does not differentiate "
            "an autograd.Function's jvp); use torch.func.hessian (jacfwd over jacrev), "
            "reverse mode, or backend='reference'"
        )


def _own(outputs: tuple) -> tuple:
    """A Function's outputs, none of them a view while a forward-mode level is open
    (``torch.autograd.forward_ad`` requires a custom Function's view outputs to have
    tangents laid out as views of a base; a raw kernel may return a view of its buffer)."""
    if _internals.forward_ad_level() < 0:
        return outputs
    return tuple(
        o.clone() if isinstance(o, Tensor) and _internals.is_view(o) else o for o in outputs
    )


def _plain_backward() -> bool:
    """Whether this backward is one that nothing will differentiate, so that it may call
    the raw kernels (which have no derivatives): no graph of it is wanted, no torch.func
    transform is active, and no forward-mode level is open (forward-over-reverse through
    ``torch.autograd.forward_ad`` differentiates even a backward run without a graph)."""
    return (
        not torch.is_grad_enabled()
        and not _internals.functorch_transforms_active()
        and _internals.forward_ad_level() < 0
    )


def _channels(v: Tensor) -> Tensor:
    """A per-channel vector [T, C] (or shared [C]) broadcastable over [T, N, C, S]."""
    return per_channel(v, 4)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """a + b, where None stands for zero."""
    if a is None:
        return b
    return a if b is None else a + b


def _epilogue_jvp(tz, t_gamma, t_beta, y4, z4, gamma, act) -> Tensor:
    """Tangent of y = act(z*gamma + beta) (4-D layout) from the tangents of z (4-D),
    gamma and beta ([T, C] or None)."""
    tu = tz if gamma is None else tz * _channels(gamma)
    if t_gamma is not None:
        tu = tu + z4 * _channels(t_gamma)
    if t_beta is not None:
        tu = tu + _channels(t_beta)
    d1 = activation_grad_from_output(y4, act)
    return tu if d1 is None else tu * d1


class FiLMEpilogueBackward(_Function):
    """(dz, dgamma, dbeta, dbias) = epilogue_bwd(gy, y, z, gamma): the fused first
    backward of y = act(z*gamma + beta), itself differentiable (backward in torch ops)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gy, y, z, gamma, act: str, backend: ModuleType):
        return _own(
            backend.epilogue_bwd(gy.contiguous(), y.contiguous(), z.contiguous(), gamma, act)
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        gy, y, z, gamma, act, _ = inputs
        ctx.save_for_backward(gy, y, z, gamma)
        ctx.save_for_forward(gy, y, z, gamma)
        ctx.act = act
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, t_gy, t_y, t_z, t_gamma, _act, _backend):
        gy, y, z, gamma = ctx.saved_tensors
        act = ctx.act
        d1 = activation_grad_from_output(y, act)
        du = gy if d1 is None else gy * d1
        t_du = None if t_gy is None else (t_gy if d1 is None else t_gy * d1)
        d2 = activation_second_grad_from_output(y, act)
        if d2 is not None and t_y is not None:
            t_du = _add(t_du, gy * d2 * t_y)
        if t_du is None:  # (tangents are None where an input has none under torch.func)
            t_du = torch.zeros_like(gy)
        t_dz = t_du if gamma is None else t_du * _channels(gamma)
        if t_gamma is not None:
            t_dz = t_dz + du * _channels(t_gamma)
        t_dgamma = t_du * z if t_z is None else t_du * z + du * t_z
        return t_dz, t_dgamma.sum(dim=(1, 3)), t_du.sum(dim=(1, 3)), t_dz.sum(dim=(1, 3))

    @staticmethod
    def backward(ctx, g_dz, g_dgamma, g_dbeta, g_dbias):
        gy, y, z, gamma = ctx.saved_tensors
        act = ctx.act
        d1 = activation_grad_from_output(y, act)
        du = gy if d1 is None else gy * d1
        # g_du: gradient flowing into du = gy * act'(y) from all four outputs.
        g_dz_total = _add(g_dz, None if g_dbias is None else _channels(g_dbias))
        g_du = None
        if g_dz_total is not None:
            g_du = g_dz_total if gamma is None else g_dz_total * _channels(gamma)
        if g_dgamma is not None:
            g_du = _add(g_du, _channels(g_dgamma) * z)
        if g_dbeta is not None:
            g_du = _add(g_du, _channels(g_dbeta))
        grad_gy = grad_y = grad_z = grad_gamma = None
        if g_du is not None:
            g_du = g_du.expand_as(gy)
            if ctx.needs_input_grad[0]:
                grad_gy = g_du if d1 is None else g_du * d1
            d2 = activation_second_grad_from_output(y, act)
            if ctx.needs_input_grad[1] and d2 is not None:
                grad_y = g_du * gy * d2
        if ctx.needs_input_grad[2] and g_dgamma is not None:
            grad_z = _channels(g_dgamma) * du
        if gamma is not None and ctx.needs_input_grad[3] and g_dz_total is not None:
            grad_gamma = (g_dz_total * du).sum(dim=(1, 3))
        return grad_gy, grad_y, grad_z, grad_gamma, None, None


def epilogue_grads(gy, gz, y4, z4, gamma, act, backend):
    """Gradients of the FiLM epilogue given output grads gy (of y) and gz (of z), both
    4-D or None. Returns (dz, dgamma, dbeta, dbias), any of them None when zero."""
    dz = dgamma = dbeta = dbias = None
    if gy is not None:
        if not _plain_backward():
            dz, dgamma, dbeta, dbias = FiLMEpilogueBackward.apply(gy, y4, z4, gamma, act, backend)
        else:  # a first backward without create_graph: nothing will differentiate this
            dz, dgamma, dbeta, dbias = FiLMEpilogueBackward.forward(gy, y4, z4, gamma, act, backend)
    if gz is not None:
        dz = _add(dz, gz)
        dbias = _add(dbias, gz.sum(dim=(1, 3)))
    return dz, dgamma, dbeta, dbias


def _per_task(v: Tensor | None, t: int) -> Tensor | None:
    """A per-channel vector as the raw ops take it: [T, C] contiguous (a shared [C]
    expanded to T tasks), or None."""
    if v is None:
        return None
    return v.expand(t, v.shape[-1]).contiguous() if v.dim() == 1 else v.contiguous()


def _film_vectors(bias, gamma, beta, t: int) -> tuple:
    """(bias, gamma, beta) as the raw ops take them: [T, C] contiguous, or None."""
    return _per_task(bias, t), _per_task(gamma, t), _per_task(beta, t)


def _reduce_like(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    """Sum a per-task [T, C] gradient over T when the argument was shared [C]; None when
    the argument was absent."""
    if grad is None or like is None:
        return None
    return grad.sum(0) if like.dim() == 1 else grad


def _linear(x: Tensor | None, weight: Tensor | None) -> Tensor | None:
    """x [T, N, IN] @ weight^T, weight [OUT, IN] or [T, OUT, IN]; None if either is."""
    if x is None or weight is None:
        return None
    return x @ weight.t() if weight.dim() == 2 else torch.bmm(x, weight.transpose(1, 2))


def _bmm3(a: Tensor | None, b: Tensor | None, c: Tensor | None) -> Tensor | None:
    """(a @ b^T) @ c batched (x u^T v), None if any factor is."""
    if a is None or b is None or c is None:
        return None
    return torch.bmm(torch.bmm(a, b.transpose(1, 2)), c)


# -- the FiLM Functions: outputs (y, z) with y = act(z * gamma + beta) ----------------------
# Each saves its inputs and outputs the same way, differentiates the epilogue the same way
# (``_film_grads``) and differs only in how z is formed and differentiated.


def _setup_film_context(ctx, saved: tuple, bias, gamma, beta, act: str, backend) -> None:
    """Save ``saved`` for both modes and remember the activation, the backend and which
    of (bias, gamma, beta) were given (their gradients are returned shaped like them)."""
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.act, ctx.backend = act, backend
    ctx.film_args = (None if bias is None else bias.dim(), gamma is not None, beta is not None)
    ctx.set_materialize_grads(False)


def _film_grads(ctx, gy, gz, y: Tensor, z: Tensor, gamma):
    """The backward of the epilogue from the gradients of y and z (either None), in the
    layout [T, N, C, ...] of y and z. Returns (dz shaped like z, dbias, dgamma, dbeta),
    each None where no gradient reaches it or its argument was absent; dbias summed over
    the tasks where the bias was shared [C]."""
    shape4 = (*z.shape[:3], -1)
    dz, dgamma, dbeta, dbias = epilogue_grads(
        None if gy is None else gy.reshape(shape4),
        None if gz is None else gz.reshape(shape4),
        y.reshape(shape4),
        z.reshape(shape4),
        gamma,
        ctx.act,
        ctx.backend,
    )
    bias_dim, has_gamma, has_beta = ctx.film_args
    if bias_dim is None:
        dbias = None
    elif bias_dim == 1 and dbias is not None:
        dbias = dbias.sum(0)
    return (
        None if dz is None else dz.reshape(z.shape),
        dbias,
        dgamma if has_gamma else None,
        dbeta if has_beta else None,
    )


def _film_tangents(ctx, tz, t_gamma, t_beta, y: Tensor, z: Tensor, gamma):
    """(ty, tz): the output tangents of a FiLM Function from the tangent of z (None where
    z has none) and those of gamma and beta, in the layout [T, N, C, ...] of y and z."""
    if tz is None:
        tz = torch.zeros_like(z)
    shape4 = (*z.shape[:3], -1)
    ty = _epilogue_jvp(
        tz.reshape(shape4),
        t_gamma,
        t_beta,
        y.reshape(shape4),
        z.reshape(shape4),
        gamma,
        ctx.act,
    )
    return ty.reshape(y.shape), tz


class FiLMLinearFunction(_Function):
    """z = x W^T + b (W shared [OUT, IN] or per task [T, OUT, IN]); y = act(z*gamma + beta)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, act: str, backend: ModuleType):
        vectors = _film_vectors(bias, gamma, beta, x.shape[0])
        return _own(backend.linear_fwd(x.contiguous(), weight.contiguous(), *vectors, act))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gamma, beta, act, backend = inputs
        y, z = output
        _setup_film_context(ctx, (x, weight, gamma, y, z), bias, gamma, beta, act, backend)

    @staticmethod
    def jvp(ctx, tx, tw, tb, t_gamma, t_beta, _act, _backend):
        x, weight, gamma, y, z = ctx.saved_tensors
        tz = _add(_linear(tx, weight), _linear(x, tw))
        if tb is not None:
            tz = _add(tz, tb.unsqueeze(-2).expand_as(z))
        return _film_tangents(ctx, tz, t_gamma, t_beta, y, z, gamma)

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, gamma, y, z = ctx.saved_tensors
        dz, dbias, dgamma, dbeta = _film_grads(ctx, gy, gz, y, z, gamma)
        dx = dweight = None
        if dz is not None and ctx.needs_input_grad[0]:
            dx = dz @ weight if weight.dim() == 2 else torch.bmm(dz, weight)
        if dz is not None and ctx.needs_input_grad[1]:
            if weight.dim() == 2:
                dweight = dz.reshape(-1, dz.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            else:
                dweight = torch.bmm(dz.transpose(1, 2), x)
        return dx, dweight, dbias, dgamma, dbeta, None, None


class FiLMLinearLowRankFunction(_Function):
    """z = x W^T + (x u^T) v + b per task; y = act(z*gamma + beta)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, u, v, bias, gamma, beta, act: str, backend: ModuleType):
        vectors = _film_vectors(bias, gamma, beta, x.shape[0])
        factors = (x.contiguous(), weight.contiguous(), u.contiguous(), v.contiguous())
        return _own(backend.linear_lowrank_fwd(*factors, *vectors, act))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, u, v, bias, gamma, beta, act, backend = inputs
        y, z = output
        _setup_film_context(ctx, (x, weight, u, v, gamma, y, z), bias, gamma, beta, act, backend)

    @staticmethod
    def jvp(ctx, tx, tw, tu, tv, tb, t_gamma, t_beta, _act, _backend):
        x, weight, u, v, gamma, y, z = ctx.saved_tensors
        # z = x W^T + (x u^T) v + b: the product rule in each factor
        tz = None
        for term in (
            _linear(tx, weight),
            _linear(x, tw),
            _bmm3(tx, u, v),
            _bmm3(x, tu, v),
            _bmm3(x, u, tv),
            None if tb is None else tb.unsqueeze(-2).expand_as(z),
        ):
            tz = _add(tz, term)
        return _film_tangents(ctx, tz, t_gamma, t_beta, y, z, gamma)

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, u, v, gamma, y, z = ctx.saved_tensors
        dz, dbias, dgamma, dbeta = _film_grads(ctx, gy, gz, y, z, gamma)
        dx = dweight = du = dv = None
        if dz is not None:
            t, n, i = x.shape
            o = dz.shape[-1]
            need = ctx.needs_input_grad
            dp = torch.bmm(dz, v.transpose(1, 2)) if (need[0] or need[2]) else None  # [T,N,R]
            if need[0]:
                dx = (dz.reshape(t * n, o) @ weight).reshape(t, n, i) + torch.bmm(dp, u)
            if need[1]:
                dweight = dz.reshape(t * n, o).t() @ x.reshape(t * n, i)
            if need[2]:
                du = torch.bmm(dp.transpose(1, 2), x)
            if need[3]:
                dv = torch.bmm(torch.bmm(x, u.transpose(1, 2)).transpose(1, 2), dz)
        return dx, dweight, du, dv, dbias, dgamma, dbeta, None, None


def _conv_input_weight_grads(dz, x, weight, stride, padding, need_x, need_w):
    """Differentiable grads of z = conv(x, weight) in the task layout, via
    aten.convolution_backward (which has its own double-backward formula); per-task
    weights through one grouped call."""
    t, n, c, h, w = x.shape
    mask = [bool(need_x), bool(need_w), False]
    args = (list(stride), list(padding), [1, 1], False, [0, 0])
    if weight.dim() == 4:
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dz.reshape(t * n, *dz.shape[2:]),
            x.reshape(t * n, c, h, w),
            weight,
            None,
            *args,
            1,
            mask,
        )
        return (None if dx is None else dx.reshape(x.shape)), dw
    o = weight.shape[1]
    dx, dw, _ = torch.ops.aten.convolution_backward(
        dz.transpose(0, 1).reshape(n, t * o, *dz.shape[3:]),
        x.transpose(0, 1).reshape(n, t * c, h, w),
        weight.reshape(t * o, *weight.shape[2:]),
        None,
        *args,
        t,
        mask,
    )
    if dx is not None:
        dx = dx.reshape(n, t, c, h, w).transpose(0, 1)
    if dw is not None:
        dw = dw.reshape(weight.shape)
    return dx, dw


class FiLMConv2dFunction(_Function):
    """z = conv2d(x, W) + b (W shared or per task); y = act(z*gamma + beta)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, stride, padding, act: str, backend: ModuleType):
        vectors = _film_vectors(bias, gamma, beta, x.shape[0])
        return _own(
            backend.conv_fwd(x.contiguous(), weight.contiguous(), *vectors, stride, padding, act)
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gamma, beta, stride, padding, act, backend = inputs
        y, z = output
        _setup_film_context(ctx, (x, weight, gamma, y, z), bias, gamma, beta, act, backend)
        ctx.stride, ctx.padding = stride, padding

    @staticmethod
    def jvp(ctx, tx, tw, tb, t_gamma, t_beta, _stride, _padding, _act, _backend):
        x, weight, gamma, y, z = ctx.saved_tensors
        conv = functools.partial(conv_pre_film, bias=None, stride=ctx.stride, padding=ctx.padding)
        tz = None  # bilinear in (x, weight)
        if tx is not None:
            tz = conv(tx, weight)
        if tw is not None:
            tz = _add(tz, conv(x, tw))
        if tb is not None:
            tz = _add(tz, per_channel(tb, 5).expand_as(z))
        return _film_tangents(ctx, tz, t_gamma, t_beta, y, z, gamma)

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, gamma, y, z = ctx.saved_tensors
        dz, dbias, dgamma, dbeta = _film_grads(ctx, gy, gz, y, z, gamma)
        dx = dweight = None
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        per_task_bwd = getattr(ctx.backend, "conv_bwd_per_task", None)
        if dz is None:
            pass
        elif per_task_bwd is not None and _plain_backward():
            # a backend's faster first backward, task by task; when the backward itself
            # must be differentiable (create_graph), aten's call, which has a derivative.
            # Shared weights go task by task too, as T copies whose gradients are summed:
            # measured 1.1-1.4x faster than aten's one call over all T*N images.
            shared = weight.dim() == 4
            w = weight.expand(x.shape[0], *weight.shape) if shared else weight
            dx, dweight = per_task_bwd(dz, x, w, ctx.stride, ctx.padding, *need)
            if shared and dweight is not None:
                dweight = dweight.sum(0)
        else:
            dx, dweight = _conv_input_weight_grads(dz, x, weight, ctx.stride, ctx.padding, *need)
        return dx, dweight, dbias, dgamma, dbeta, None, None, None, None


class FiLMBatchNormFunction(_Function):
    """Outputs (y, mean, rstd); mean and rstd are outputs so that the backward,
    which uses them, stays differentiable (never hidden intermediates)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, eps: float, act: str, backend: ModuleType):
        t, n, c = x.shape[:3]
        y, mean, rstd = backend.bn_fwd(
            x.reshape(t, n, c, -1).contiguous(),
            _per_task(weight, t),
            *_film_vectors(bias, gamma, beta, t),
            eps,
            act,
        )
        return _own((y.reshape(x.shape), mean, rstd))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gamma, beta, eps, act, backend = inputs
        y, mean, rstd = output
        ctx.save_for_backward(x, weight, bias, gamma, y, mean, rstd)
        ctx.save_for_forward(x, weight, bias, gamma, y, mean, rstd)
        ctx.act, ctx.backend = act, backend
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, tx, tw, tb, t_gamma, t_beta, _eps, _act, _backend):
        x, weight, bias, gamma, y, mean, rstd = ctx.saved_tensors
        t, n, c = x.shape[:3]
        if tx is None:
            tx = torch.zeros_like(x)
        x4, tx4 = x.reshape(t, n, c, -1), tx.reshape(t, n, c, -1)
        xc = x4 - _channels(mean)
        xhat = xc * _channels(rstd)
        t_mean = tx4.mean(dim=(1, 3))
        txc = tx4 - _channels(t_mean)
        # rstd = (mean(xc^2) + eps)^(-1/2)
        t_rstd = -(rstd**3) * (xc * txc).mean(dim=(1, 3))
        t_xhat = txc * _channels(rstd) + xc * _channels(t_rstd)
        z, tz = xhat, t_xhat
        if weight is not None:
            z, tz = z * _channels(weight), tz * _channels(weight)
        if tw is not None:
            tz = tz + xhat * _channels(tw)
        if bias is not None:
            z = z + _channels(bias)
        if tb is not None:
            tz = tz + _channels(tb)
        ty = _epilogue_jvp(tz, t_gamma, t_beta, y.reshape(t, n, c, -1), z, gamma, ctx.act)
        return ty.reshape(x.shape), t_mean, t_rstd

    @staticmethod
    def backward(ctx, gy, gmean, grstd):
        x, weight, bias, gamma, y, mean, rstd = ctx.saved_tensors
        t, n, c = x.shape[:3]
        x4 = x.reshape(t, n, c, -1)
        y4 = y.reshape(t, n, c, -1)
        gy4 = None if gy is None else gy.reshape(t, n, c, -1)
        w, b = _per_task(weight, t), _per_task(bias, t)
        dx = dweight = dbias = dgamma = dbeta = None
        if _plain_backward() and gy is not None and gmean is None and grstd is None:
            dx, dweight, dbias, dgamma, dbeta = ctx.backend.bn_bwd(
                gy4.contiguous(), x4.contiguous(), y4.contiguous(), mean, rstd, w, b, gamma, ctx.act
            )
        else:  # differentiable: torch ops and FiLMEpilogueBackward (whose backward is torch ops)
            if gy is not None:
                backend = ctx.backend

                def epilogue_bwd(gy, y, z, gamma, act):
                    return FiLMEpilogueBackward.apply(gy, y, z, gamma, act, backend)

                dx, dweight, dbias, dgamma, dbeta = eager.bn_bwd(
                    gy4, x4, y4, mean, rstd, w, b, gamma, ctx.act, epilogue_bwd=epilogue_bwd
                )
            dx = _add(dx, eager.bn_stats_input_grad(gmean, grstd, x4, mean, rstd))
        dx = None if dx is None or not ctx.needs_input_grad[0] else dx.reshape(x.shape)
        return (
            dx,
            _reduce_like(dweight, weight),
            _reduce_like(dbias, bias),
            dgamma if gamma is not None else None,
            dbeta if ctx.needs_input_grad[4] else None,
            None,
            None,
            None,
        )
