"""The private torch internals behind mumo_fast.ops._torch_internals: each checked against
the public behaviour it stands for, so that a torch release that changes one fails here."""

import inspect

import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import Function
from torch.func import grad, jacfwd, jvp, vmap

from mumo_fast.ops import _torch_internals as internals


def test_forward_ad_level():
    assert internals.forward_ad_level() == -1
    with fwAD.dual_level():
        assert internals.forward_ad_level() == 0
    assert internals.forward_ad_level() == -1


def test_functorch_transforms_active():
    seen = []

    def probe(x):
        seen.append(internals.functorch_transforms_active())
        return x.sum()

    assert not internals.functorch_transforms_active()
    x = torch.randn(3, 4)
    vmap(probe)(x)
    grad(probe)(x)
    jvp(probe, (x,), (x,))
    assert seen == [True, True, True]
    assert not internals.functorch_transforms_active()


def test_functorch_jvp_depth():
    seen = []

    def probe(x):
        seen.append(internals.functorch_jvp_depth())
        return x.sin()

    x = torch.randn(3, dtype=torch.float64)
    assert internals.functorch_jvp_depth() == 0
    vmap(probe)(x)
    jvp(probe, (x,), (x,))
    jacfwd(jacfwd(probe))(x)
    assert seen == [0, 1, 2]


def test_is_view():
    base = torch.randn(4, 5)
    assert internals.is_view(base[1:]) and internals.is_view(base.t())
    assert not internals.is_view(base) and not internals.is_view(base.clone())


class _Scale(Function):
    @staticmethod
    def forward(x, factor):
        return x * factor

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def test_apply_unbound_is_function_apply():
    """The same output, graph and gradient as ``Function.apply``, whose non-transform path
    (argument binding, then dead functorch wrappers unwrapped, then the C++ apply) it
    repeats without the binding where torch writes that path in Python, and which it calls
    directly where ``Function.apply`` is torch's C++ apply."""
    in_python = isinstance(Function.__dict__["apply"], classmethod)
    assert internals.TORCH_APPLY_IN_PYTHON == in_python
    if in_python:
        source = inspect.getsource(Function.apply)
        assert "_are_functorch_transforms_active" in source
        assert "unwrap_dead_wrappers(args)" in source
    else:
        c_apply = torch._C._FunctionBase.__dict__["apply"]
        assert Function.__dict__["apply"] is c_apply
        assert super(Function, _Scale).apply == c_apply.__get__(None, _Scale)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    factor = float(torch.rand(()) + 0.5)
    got = internals.apply_unbound(_Scale, (x, factor))
    want = _Scale.apply(x, factor)
    torch.testing.assert_close(got, want)
    assert type(got.grad_fn) is type(want.grad_fn)
    g = torch.randn(3, 4, dtype=torch.float64)
    (dx,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(dx, g * factor)
