"""MAML-style parity: adapt weight, bias, gamma and beta together for 3 inner steps with
create_graph=True through each fused op, and compare the meta-gradients of every input
with the reference backend. Also torch.func agreement (grad, grad-of-grad, vmap(grad))."""

import pytest
import torch

from mumo_fast import ops
from ops_cases import FUSED_BACKENDS, rand

pytestmark = pytest.mark.parametrize("backend", FUSED_BACKENDS)
F64 = torch.float64


def _maml_meta_grads(backend, net, params, xs, ys, xq, yq, steps=3, lr=0.1):
    """Inner loop over all adapted params (W, b, gamma, beta of every layer), then
    meta-gradients of the query loss w.r.t. the initial params and the data."""
    fast = list(params)
    for _ in range(steps):
        loss = ((net(backend, xs, fast) - ys) ** 2).mean()
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        fast = ops.clamped_sgd(fast, grads, lr, None, backend=backend)
    qloss = ((net(backend, xq, fast) - yq) ** 2).mean()
    return torch.autograd.grad(qloss, [*params, xs, xq])


def _mlp(backend, x, p):
    w1, b1, g1, be1, w2, b2, g2, be2 = p
    h = ops.film_linear(x, w1, b1, g1, be1, "tanh", backend=backend)
    return ops.film_linear(h, w2, b2, g2, be2, "none", backend=backend)


def _cnn(backend, x, p):
    w1, b1, g1, be1, bw, bb, g2, be2, w2 = p
    h = ops.film_conv2d(x, w1, b1, g1, be1, stride=2, padding=1, activation="none", backend=backend)
    h = ops.film_batch_norm(h, bw, bb, g2, be2, activation="relu", backend=backend)
    return ops.film_linear(h.flatten(2), w2, backend=backend)


def test_maml_mlp(backend):
    t, i, h, o = 3, 4, 6, 2
    params = [
        rand(t, h, i, dtype=F64, grad=True),
        rand(t, h, dtype=F64, grad=True),
        (1 + 0.3 * rand(t, h, dtype=F64)).requires_grad_(),
        rand(t, h, dtype=F64, grad=True),
        rand(t, o, h, dtype=F64, grad=True),
        rand(t, o, dtype=F64, grad=True),
        (1 + 0.3 * rand(t, o, dtype=F64)).requires_grad_(),
        rand(t, o, dtype=F64, grad=True),
    ]
    data = [
        rand(t, 5, i, dtype=F64, grad=True),
        rand(t, 5, o, dtype=F64),
        rand(t, 7, i, dtype=F64, grad=True),
        rand(t, 7, o, dtype=F64),
    ]
    want = _maml_meta_grads("reference", _mlp, params, *data)
    got = _maml_meta_grads(backend, _mlp, params, *data)
    for gw, gg in zip(want, got):
        torch.testing.assert_close(gg, gw, rtol=1e-9, atol=1e-11)


def test_maml_conv_bn(backend):
    # weights scaled so that 3 inner steps stay well conditioned for every draw (batch norm
    # over 4 images can otherwise amplify the inner steps into overflow)
    t, c, o, n = 2, 2, 3, 4

    def small(*shape):
        return (0.3 * rand(*shape, dtype=F64)).requires_grad_()

    def near_one(*shape):
        return (1 + 0.2 * rand(*shape, dtype=F64)).requires_grad_()

    params = [
        small(t, o, c, 3, 3),
        small(t, o),
        near_one(t, o),
        small(t, o),
        near_one(t, o),
        small(t, o),
        near_one(t, o),
        small(t, o),
        small(t, 2, o * 9),
    ]
    data = [
        rand(t, n, c, 5, 5, dtype=F64, grad=True),
        rand(t, n, 2, dtype=F64),
        rand(t, n + 1, c, 5, 5, dtype=F64, grad=True),
        rand(t, n + 1, 2, dtype=F64),
    ]
    want = _maml_meta_grads("reference", _cnn, params, *data, steps=3, lr=0.02)
    got = _maml_meta_grads(backend, _cnn, params, *data, steps=3, lr=0.02)
    for gw, gg in zip(want, got):
        assert torch.isfinite(gw).all()
        torch.testing.assert_close(gg, gw, rtol=1e-8, atol=1e-10)


def test_torch_func_agreement(backend):
    """torch.func.grad, grad(grad) and vmap(grad) through the fused ops equal the
    reference's torch.autograd results."""
    from torch.func import grad, vmap

    x = rand(3, 4, 5, dtype=F64)
    w = rand(3, 6, 5, dtype=F64)
    b, g, be = rand(3, 6, dtype=F64), 1 + 0.3 * rand(3, 6, dtype=F64), rand(3, 6, dtype=F64)

    def loss(w_, b_, g_, be_, bk):
        return (ops.film_linear(x, w_, b_, g_, be_, "sigmoid", backend=bk) ** 2).sum()

    for argnums in (0, 1, 2, 3):
        got = grad(loss, argnums=argnums)(w, b, g, be, backend)
        want = grad(loss, argnums=argnums)(w, b, g, be, "reference")
        torch.testing.assert_close(got, want)

    def gnorm(w_, bk):
        gw = grad(loss)(w_, b, g, be, bk)
        return (gw * gw).sum()

    torch.testing.assert_close(grad(gnorm)(w, backend), grad(gnorm)(w, "reference"))

    # per-example gradients: vmap over a stack of weight sets
    ws = rand(4, 3, 6, 5, dtype=F64)
    got = vmap(grad(loss), in_dims=(0, None, None, None, None))(ws, b, g, be, backend)
    want = torch.stack([grad(loss)(wi, b, g, be, "reference") for wi in ws])
    torch.testing.assert_close(got, want)

    xb = 2 * rand(2, 5, 3, dtype=F64) + 1

    def bn_loss(gm, bk):
        return (
            ops.film_batch_norm(xb, None, None, gm, None, activation="tanh", backend=bk)
            .pow(2)
            .sum()
        )

    gm = 1 + 0.3 * rand(2, 3, dtype=F64)
    torch.testing.assert_close(grad(bn_loss)(gm, backend), grad(bn_loss)(gm, "reference"))
