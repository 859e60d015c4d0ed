"""Gradients of every fused backend: first-order parity with the reference, fp64
gradcheck / gradgradcheck, and a third-order check (gradient of a Hessian-vector
product), for each op."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mumo_fast import ops
from ops_cases import (
    ACTIVATIONS,
    FUSED_BACKENDS,
    bn_args,
    conv_args,
    interpreted,
    linear_args,
    rand,
    tol,
)

pytestmark = pytest.mark.parametrize("backend", FUSED_BACKENDS)
F64 = torch.float64


def _present(args):
    return tuple(a for a in args if a is not None)


def _op_cases(dtype, grad=True):
    """(name, callable(backend, *tensors), tensors) for each op; odd shapes."""
    lin = linear_args(3, 4, 5, 3, False, (True, True, True), dtype, grad)
    lin_shared = linear_args(2, 3, 4, 5, True, (True, False, True), dtype, grad, shared_bias=True)
    x, w, b, g, be = linear_args(3, 4, 5, 3, True, (True, True, True), dtype, grad)
    u, v = rand(3, 2, 5, dtype=dtype, grad=grad), rand(3, 2, 3, dtype=dtype, grad=grad)
    conv = conv_args(2, 2, 2, 5, 4, 3, 3, False, (True, True, True), dtype, grad)
    conv_shared = conv_args(2, 2, 2, 5, 5, 3, 3, True, (True, True, False), dtype, grad)
    bn = bn_args((2, 5, 3), False, (True, True, True, True), dtype, grad)
    bn4 = bn_args((2, 3, 2, 3, 2), True, (True, False, True, True), dtype, grad)

    cases = []
    for act in ACTIVATIONS:
        cases.append((f"linear-{act}", _bind(ops.film_linear, lin, activation=act), lin))
        cases.append((f"bn-{act}", _bind(ops.film_batch_norm, bn, activation=act), bn))
    cases += [
        ("linear-shared", _bind(ops.film_linear, lin_shared, activation="tanh"), lin_shared),
        (
            "lowrank",
            _bind(ops.film_linear_lowrank, (x, w, u, v, b, g, be), activation="sigmoid"),
            (x, w, u, v, b, g, be),
        ),
        ("conv", _bind(ops.film_conv2d, conv, stride=2, padding=1, activation="relu"), conv),
        (
            "conv-shared",
            _bind(ops.film_conv2d, conv_shared, padding=(1, 0), activation="tanh"),
            conv_shared,
        ),
        ("bn-4d", _bind(ops.film_batch_norm, bn4, activation="tanh"), bn4),
    ]
    return cases


def _fill(template, present):
    it = iter(present)
    return tuple(None if t is None else next(it) for t in template)


def _bind(op, template, **kw):
    def call(backend, *present):
        return op(*_fill(template, present), **kw, backend=backend)

    return call


@pytest.mark.parametrize("dtype", (torch.float32, F64))
def test_first_order_parity(backend, dtype):
    for name, fn, args in _op_cases(dtype):
        inputs = _present(args)
        out_ref = fn("reference", *inputs)
        cot = torch.randn_like(out_ref)
        want = torch.autograd.grad(out_ref, inputs, cot)
        got = torch.autograd.grad(fn(backend, *inputs), inputs, cot)
        for gw, gg in zip(want, got):
            torch.testing.assert_close(gg, gw, **tol(dtype), msg=name)


def test_gradcheck_and_gradgradcheck(backend):
    for name, fn, args in _op_cases(F64):
        inputs = _present(args)
        f = lambda *a: fn(backend, *a)  # noqa: E731
        fast = interpreted(backend)
        assert gradcheck(f, inputs, fast_mode=fast), name
        assert gradgradcheck(f, inputs, fast_mode=fast), name


def test_third_order_matches_reference(backend):
    """d/d(inputs) of a Hessian-vector product of a scalar loss, against the reference."""
    for name, fn, args in _op_cases(F64):
        inputs = _present(args)
        vecs = [torch.randn_like(t) for t in inputs]
        cot = None

        def third(b):
            nonlocal cot
            out = fn(b, *inputs)
            if cot is None:
                cot = torch.randn_like(out)
            loss = (torch.tanh(out) * cot).sum()
            g1 = torch.autograd.grad(loss, inputs, create_graph=True)
            hv = torch.autograd.grad(g1, inputs, vecs, create_graph=True)
            s = sum((h * h).sum() for h in hv)
            return torch.autograd.grad(s, inputs, allow_unused=True)

        want, got = third("reference"), third(backend)
        for gw, gg in zip(want, got):
            if gw is None:
                assert gg is None or gg.abs().max() < 1e-10, name
            else:
                torch.testing.assert_close(gg, gw, rtol=1e-7, atol=1e-9, msg=name)
