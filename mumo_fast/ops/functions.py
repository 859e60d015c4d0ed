"""Autograd Functions over a backend's raw ops, differentiable to any order.

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
``FilmEpilogueBackward``) work on every backend.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
from torch.autograd import Function

from .backends.eager import activation_grad_from_output
from .reference import conv_pre_film, per_channel


class _Function(Function):
    """autograd.Function whose ``apply`` skips torch's per-call ``inspect.signature``
    argument binding (every call here passes all arguments positionally) unless a
    torch.func transform is active, where torch's own path is needed. Profiling put the
    binding at about a third of the Python overhead of an op call."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            _refuse_forward_over_forward()
            return super().apply(*args)
        return super(Function, cls).apply(*_unwrap_dead_wrappers(args))


def _refuse_forward_over_forward() -> None:
    """Forward mode over forward mode (``jacfwd(jacfwd(f))``; torch.autograd.forward_ad
    itself refuses nested levels) would be silently wrong: PyTorch does not differentiate an autograd.Function's
    ``jvp``, so the outer tangent misses the inner jvp's own derivative. Refuse it."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    # (a torch.func jvp opens a forward_ad level too: the larger count, not the sum)
    jvps = sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
    levels = max(_fwad._current_level + 1, jvps)
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
    if _fwad._current_level < 0:
        return outputs
    return tuple(o.clone() if isinstance(o, Tensor) and o._is_view() else o for o in outputs)


def _plain_backward() -> bool:
    """Whether this backward is one that nothing will differentiate, so that it may call
    the raw kernels (which have no derivatives): no graph of it is wanted, no torch.func
    transform is active, and no forward-mode level is open (forward-over-reverse through
    ``torch.autograd.forward_ad`` differentiates even a backward run without a graph)."""
    return (
        not torch.is_grad_enabled()
        and not torch._C._are_functorch_transforms_active()
        and _fwad._current_level < 0
    )


def _activation_second_grad(y: Tensor, act: str) -> Tensor | None:
    """d/dy of act'(u) written as a function of y; None where it is identically 0."""
    if act == "tanh":
        return -2 * y
    if act == "sigmoid":
        return 1 - 2 * y
    return None


def _tc(v: Tensor) -> Tensor:
    """[T, C] -> broadcastable over [T, N, C, S]."""
    return v[:, None, :, None]


def _tc_any(v: Tensor) -> Tensor:
    """[T, C] or shared [C] -> broadcastable over [T, N, C, S]."""
    return v[:, None, :, None] if v.dim() == 2 else v[None, None, :, None]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _epilogue_jvp(tz, t_gamma, t_beta, y4, z4, gamma, act) -> Tensor:
    """Tangent of y = act(z*gamma + beta) (4-D layout) from the tangents of z (4-D),
    gamma and beta ([T, C] or None)."""
    tu = tz if gamma is None else tz * _tc(gamma)
    if t_gamma is not None:
        tu = tu + z4 * _tc(t_gamma)
    if t_beta is not None:
        tu = tu + _tc(t_beta)
    d1 = activation_grad_from_output(y4, act)
    return tu if d1 is None else tu * d1


class FilmEpilogueBackward(_Function):
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
        d2 = _activation_second_grad(y, act)
        if d2 is not None and t_y is not None:
            t_du = _add(t_du, gy * d2 * t_y)
        if t_du is None:  # (tangents are None where an input has none under torch.func)
            t_du = torch.zeros_like(gy)
        t_dz = t_du if gamma is None else t_du * _tc(gamma)
        if t_gamma is not None:
            t_dz = t_dz + du * _tc(t_gamma)
        t_dgamma = t_du * z if t_z is None else t_du * z + du * t_z
        return t_dz, t_dgamma.sum(dim=(1, 3)), t_du.sum(dim=(1, 3)), t_dz.sum(dim=(1, 3))

    @staticmethod
    def backward(ctx, g_dz, g_dgamma, g_dbeta, g_dbias):
        gy, y, z, gamma = ctx.saved_tensors
        act = ctx.act
        d1 = activation_grad_from_output(y, act)
        du = gy if d1 is None else gy * d1
        # g_du: gradient flowing into du = gy * act'(y) from all four outputs.
        g_dz_total = g_dz
        if g_dbias is not None:
            g_dz_total = _tc(g_dbias) if g_dz_total is None else g_dz_total + _tc(g_dbias)
        g_du = None
        if g_dz_total is not None:
            g_du = g_dz_total if gamma is None else g_dz_total * _tc(gamma)
        if g_dgamma is not None:
            term = _tc(g_dgamma) * z
            g_du = term if g_du is None else g_du + term
        if g_dbeta is not None:
            term = _tc(g_dbeta)
            g_du = term if g_du is None else g_du + term
        grad_gy = grad_y = grad_z = grad_gamma = None
        if g_du is not None:
            g_du = g_du.expand_as(gy)
            if ctx.needs_input_grad[0]:
                grad_gy = g_du if d1 is None else g_du * d1
            d2 = _activation_second_grad(y, act)
            if ctx.needs_input_grad[1] and d2 is not None:
                grad_y = g_du * gy * d2
        if ctx.needs_input_grad[2] and g_dgamma is not None:
            grad_z = _tc(g_dgamma) * du
        if gamma is not None and ctx.needs_input_grad[3] and g_dz_total is not None:
            grad_gamma = (g_dz_total * du).sum(dim=(1, 3))
        return grad_gy, grad_y, grad_z, grad_gamma, None, None


def epilogue_grads(gy, gz, y4, z4, gamma, act, backend):
    """Gradients of the FiLM epilogue given output grads gy (of y) and gz (of z), both
    4-D or None. Returns (dz, dgamma, dbeta, dbias), any of them None when zero."""
    dz = dgamma = dbeta = dbias = None
    if gy is not None:
        if not _plain_backward():
            dz, dgamma, dbeta, dbias = FilmEpilogueBackward.apply(gy, y4, z4, gamma, act, backend)
        else:  # a first backward without create_graph: nothing will differentiate this
            dz, dgamma, dbeta, dbias = FilmEpilogueBackward.forward(gy, y4, z4, gamma, act, backend)
    if gz is not None:
        dz = gz if dz is None else dz + gz
        gzb = gz.sum(dim=(1, 3))
        dbias = gzb if dbias is None else dbias + gzb
    return dz, dgamma, dbeta, dbias


def _expand_tc(v: Tensor | None, t: int) -> Tensor | None:
    if v is None:
        return None
    return v.expand(t, v.shape[-1]).contiguous() if v.dim() == 1 else v.contiguous()


def _reduce_like(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    """Sum a per-task [T, C] gradient over T when the argument was shared [C]."""
    if grad is None or like is None:
        return None
    return grad.sum(0) if like.dim() == 1 else grad


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


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


class FilmLinearFunction(_Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, act: str, backend: ModuleType):
        t = x.shape[0]
        return _own(
            backend.linear_fwd(
                x.contiguous(),
                weight.contiguous(),
                _expand_tc(bias, t),
                _opt(gamma),
                _opt(beta),
                act,
            )
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gamma, beta, act, backend = inputs
        y, z = output
        ctx.save_for_backward(x, weight, gamma, y, z)
        ctx.save_for_forward(x, weight, gamma, y, z)
        ctx.act, ctx.backend = act, backend
        ctx.bias_shared = bias is not None and bias.dim() == 1
        ctx.has = (bias is not None, gamma is not None, beta is not None)
        ctx.set_materialize_grads(False)

    @staticmethod
    def jvp(ctx, tx, tw, tb, t_gamma, t_beta, _act, _backend):
        x, weight, gamma, y, z = ctx.saved_tensors
        tz = _add(_linear(tx, weight), _linear(x, tw))
        if tb is not None:
            tz = _add(tz, tb.unsqueeze(-2).expand_as(z))
        if tz is None:
            tz = torch.zeros_like(z)
        ty = _epilogue_jvp(
            tz.unsqueeze(-1), t_gamma, t_beta, y.unsqueeze(-1), z.unsqueeze(-1), gamma, ctx.act
        )
        return ty.squeeze(-1), tz

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, gamma, y, z = ctx.saved_tensors
        dz, dgamma, dbeta, dbias = epilogue_grads(
            None if gy is None else gy.unsqueeze(-1),
            None if gz is None else gz.unsqueeze(-1),
            y.unsqueeze(-1),
            z.unsqueeze(-1),
            gamma,
            ctx.act,
            ctx.backend,
        )
        if dz is None:
            return (None,) * 7
        dz = dz.squeeze(-1)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx = dz @ weight if weight.dim() == 2 else torch.bmm(dz, weight)
        if ctx.needs_input_grad[1]:
            if weight.dim() == 2:
                dweight = dz.reshape(-1, dz.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            else:
                dweight = torch.bmm(dz.transpose(1, 2), x)
        has_bias, has_gamma, has_beta = ctx.has
        if has_bias and dbias is not None and ctx.bias_shared:
            dbias = dbias.sum(0)
        return (
            dx,
            dweight,
            dbias if has_bias else None,
            dgamma if has_gamma else None,
            dbeta if has_beta else None,
            None,
            None,
        )


class FilmLinearLowRankFunction(_Function):
    """z = x W^T + (x u^T) v + b per task; y = act(z*gamma + beta)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, u, v, bias, gamma, beta, act: str, backend: ModuleType):
        t = x.shape[0]
        return _own(
            backend.linear_lowrank_fwd(
                x.contiguous(),
                weight.contiguous(),
                u.contiguous(),
                v.contiguous(),
                _expand_tc(bias, t),
                _opt(gamma),
                _opt(beta),
                act,
            )
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, u, v, bias, gamma, beta, act, backend = inputs
        y, z = output
        ctx.save_for_backward(x, weight, u, v, gamma, y, z)
        ctx.save_for_forward(x, weight, u, v, gamma, y, z)
        ctx.act, ctx.backend = act, backend
        ctx.bias_shared = bias is not None and bias.dim() == 1
        ctx.has = (bias is not None, gamma is not None, beta is not None)
        ctx.set_materialize_grads(False)

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
        if tz is None:
            tz = torch.zeros_like(z)
        ty = _epilogue_jvp(
            tz.unsqueeze(-1), t_gamma, t_beta, y.unsqueeze(-1), z.unsqueeze(-1), gamma, ctx.act
        )
        return ty.squeeze(-1), tz

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, u, v, gamma, y, z = ctx.saved_tensors
        dz, dgamma, dbeta, dbias = epilogue_grads(
            None if gy is None else gy.unsqueeze(-1),
            None if gz is None else gz.unsqueeze(-1),
            y.unsqueeze(-1),
            z.unsqueeze(-1),
            gamma,
            ctx.act,
            ctx.backend,
        )
        if dz is None:
            return (None,) * 9
        dz = dz.squeeze(-1)
        t, n, i = x.shape
        o = dz.shape[-1]
        dx = dweight = du = dv = None
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
        has_bias, has_gamma, has_beta = ctx.has
        if has_bias and dbias is not None and ctx.bias_shared:
            dbias = dbias.sum(0)
        return (
            dx,
            dweight,
            du,
            dv,
            dbias if has_bias else None,
            dgamma if has_gamma else None,
            dbeta if has_beta else None,
            None,
            None,
        )


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


class FilmConv2dFunction(_Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, stride, padding, act: str, backend: ModuleType):
        t = x.shape[0]
        return _own(
            backend.conv_fwd(
                x.contiguous(),
                weight.contiguous(),
                _expand_tc(bias, t),
                _opt(gamma),
                _opt(beta),
                stride,
                padding,
                act,
            )
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gamma, beta, stride, padding, act, backend = inputs
        y, z = output
        ctx.save_for_backward(x, weight, gamma, y, z)
        ctx.save_for_forward(x, weight, gamma, y, z)
        ctx.stride, ctx.padding, ctx.act, ctx.backend = stride, padding, act, backend
        ctx.bias_shared = bias is not None and bias.dim() == 1
        ctx.has = (bias is not None, gamma is not None, beta is not None)
        ctx.set_materialize_grads(False)

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
        if tz is None:
            tz = torch.zeros_like(z)
        shape4 = (*y.shape[:3], -1)
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

    @staticmethod
    def backward(ctx, gy, gz):
        x, weight, gamma, y, z = ctx.saved_tensors
        shape4 = (*y.shape[:3], -1)
        dz, dgamma, dbeta, dbias = epilogue_grads(
            None if gy is None else gy.reshape(shape4),
            None if gz is None else gz.reshape(shape4),
            y.reshape(shape4),
            z.reshape(shape4),
            gamma,
            ctx.act,
            ctx.backend,
        )
        if dz is None:
            return (None,) * 9
        dz = dz.reshape(y.shape)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        per_task_bwd = getattr(ctx.backend, "conv_bwd_per_task", None)
        if per_task_bwd is not None and _plain_backward():
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
        has_bias, has_gamma, has_beta = ctx.has
        if has_bias and dbias is not None and ctx.bias_shared:
            dbias = dbias.sum(0)
        return (
            dx,
            dweight,
            dbias if has_bias else None,
            dgamma if has_gamma else None,
            dbeta if has_beta else None,
            None,
            None,
            None,
            None,
        )


class FilmBatchNormFunction(_Function):
    """Outputs (y, mean, rstd); mean and rstd are outputs so that the backward,
    which uses them, stays differentiable (never hidden intermediates)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, gamma, beta, eps: float, act: str, backend: ModuleType):
        t, n, c = x.shape[:3]
        y, mean, rstd = backend.bn_fwd(
            x.reshape(t, n, c, -1).contiguous(),
            _expand_tc(weight, t),
            _expand_tc(bias, t),
            _opt(gamma),
            _opt(beta),
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
        xc = x4 - _tc(mean)
        xhat = xc * _tc(rstd)
        t_mean = tx4.mean(dim=(1, 3))
        txc = tx4 - _tc(t_mean)
        # rstd = (mean(xc^2) + eps)^(-1/2)
        t_rstd = -(rstd**3) * (xc * txc).mean(dim=(1, 3))
        t_xhat = txc * _tc(rstd) + xc * _tc(t_rstd)
        z, tz = xhat, t_xhat
        if weight is not None:
            z, tz = z * _tc_any(weight), tz * _tc_any(weight)
        if tw is not None:
            tz = tz + xhat * _tc_any(tw)
        if bias is not None:
            z = z + _tc_any(bias)
        if tb is not None:
            tz = tz + _tc_any(tb)
        ty = _epilogue_jvp(tz, t_gamma, t_beta, y.reshape(t, n, c, -1), z, gamma, ctx.act)
        return ty.reshape(x.shape), t_mean, t_rstd

    @staticmethod
    def backward(ctx, gy, gmean, grstd):
        x, weight, bias, gamma, y, mean, rstd = ctx.saved_tensors
        t, n, c = x.shape[:3]
        x4 = x.reshape(t, n, c, -1)
        y4 = y.reshape(t, n, c, -1)
        w = _expand_tc(weight, t) if weight is not None else None
        b = _expand_tc(bias, t) if bias is not None else None
        fused = _plain_backward() and gy is not None and gmean is None and grstd is None
        if fused:
            dx, dweight, dbias, dgamma, dbeta = ctx.backend.bn_bwd(
                gy.reshape(t, n, c, -1).contiguous(),
                x4.contiguous(),
                y4.contiguous(),
                mean,
                rstd,
                w,
                b,
                gamma,
                ctx.act,
            )
        else:
            dx, dweight, dbias, dgamma, dbeta = _bn_backward_differentiable(
                gy, gmean, grstd, x4, y4, mean, rstd, w, b, gamma, ctx.act, ctx.backend
            )
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


def _bn_backward_differentiable(gy, gmean, grstd, x4, y4, mean, rstd, w, b, gamma, act, backend):
    """Batch-norm backward from torch ops and FilmEpilogueBackward only (used when a
    graph of the backward is wanted, or when mean/rstd receive gradients)."""
    t, n, c, s = x4.shape
    m = n * s
    xhat = (x4 - _tc(mean)) * _tc(rstd)
    dx = dweight = dbias = dgamma = dbeta = None
    if gy is not None:
        z = xhat
        if w is not None:
            z = z * _tc(w)
        if b is not None:
            z = z + _tc(b)
        dz, dgamma, dbeta, dbias = FilmEpilogueBackward.apply(
            gy.reshape(t, n, c, -1), y4, z, gamma, act, backend
        )
        dweight = (dz * xhat).sum(dim=(1, 3))
        dxhat = dz if w is None else dz * _tc(w)
        s1 = dxhat.sum(dim=(1, 3), keepdim=True) / m
        s2 = (dxhat * xhat).sum(dim=(1, 3), keepdim=True) / m
        dx = _tc(rstd) * (dxhat - s1 - xhat * s2)
    if gmean is not None:
        term = (_tc(gmean) / m).expand_as(x4)
        dx = term if dx is None else dx + term
    if grstd is not None:
        term = -_tc(grstd * rstd * rstd / m) * xhat
        dx = term if dx is None else dx + term
    return dx, dweight, dbias, dgamma, dbeta
