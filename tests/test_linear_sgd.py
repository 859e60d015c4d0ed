"""ops.linear_sgd: the inner SGD step of a linear layer from its factored gradient
(D [T, K, OUT], A [T, K, IN]) against a per-task loop, to second order, on every backend."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mumo_fast import ops
from ops_cases import ALL_BACKENDS, interpreted, rand

BACKENDS = ALL_BACKENDS  # a missing one is skipped with its reason (failed in CI): conftest
# (T, K, OUT, IN): odd sizes, and a dimension of 1 (first / last layer of an MLP)
SHAPES = [(3, 5, 7, 4), (2, 3, 1, 6), (4, 2, 5, 1), (1, 1, 3, 2)]


def _per_task(weight, bias, d, a, lr, clamp):
    """The step task by task, from the gradient written out: the oracle."""
    new_w, new_b = [], []
    for t in range(d.shape[0]):
        g = d[t].t() @ a[t]
        gb = d[t].sum(0)
        if clamp is not None:
            g, gb = g.clamp(-clamp, clamp), gb.clamp(-clamp, clamp)
        w = weight if weight.dim() == 2 else weight[t]
        new_w.append(w - lr * g)
        if bias is not None:
            b = bias if bias.dim() == 1 else bias[t]
            new_b.append(b - lr * gb)
    return torch.stack(new_w), (torch.stack(new_b) if bias is not None else None)


def _args(shape, shared_w, bias_kind, dtype):
    t, k, o, i = shape
    weight = rand(o, i, dtype=dtype) if shared_w else rand(t, o, i, dtype=dtype)
    bias = {None: None, "shared": rand(o, dtype=dtype), "per-task": rand(t, o, dtype=dtype)}[
        bias_kind
    ]
    return weight, bias, rand(t, k, o, dtype=dtype), rand(t, k, i, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared_w", [False, True])
@pytest.mark.parametrize("bias_kind", [None, "shared", "per-task"])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_matches_per_task_loop(backend, shape, shared_w, bias_kind, clamp):
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        weight, bias, d, a = _args(shape, shared_w, bias_kind, dtype)
        for lr in (0.37, torch.tensor(0.37, dtype=dtype)):
            got_w, got_b = ops.linear_sgd(weight, bias, d, a, lr, clamp, backend=backend)
            want_w, want_b = _per_task(weight, bias, d, a, 0.37, clamp)
            assert got_w.shape == (shape[0], shape[2], shape[3])
            torch.testing.assert_close(got_w, want_w, rtol=tol, atol=tol)
            if bias is None:
                assert got_b is None
            else:
                torch.testing.assert_close(got_b, want_b, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_factors(backend):
    weight, bias, d, a = _args((3, 5, 7, 4), False, "per-task", torch.float64)
    d_nc = d.transpose(1, 2).contiguous().transpose(1, 2)
    a_nc = torch.cat([a, a], 2)[..., ::2]
    want = _per_task(weight, bias, d, a_nc, 0.2, None)
    got = ops.linear_sgd(
        weight.transpose(1, 2).contiguous().transpose(1, 2),
        bias,
        d_nc,
        a_nc,
        0.2,
        backend=backend,
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 3), (3, 2, 1, 4), (2, 2, 3, 1)])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_gradcheck_and_gradgradcheck(backend, shape, clamp):
    """fp64 first and second derivatives in every argument, learnable lr included."""
    weight, bias, d, a = _args(shape, False, "shared", torch.float64)
    lr = torch.tensor(0.3, dtype=torch.float64)
    args = tuple(v.requires_grad_() for v in (weight, bias, d, a, lr))

    def f(w, b, d_, a_, lr_):
        return ops.linear_sgd(w, b, d_, a_, lr_, clamp, backend=backend)

    fast = interpreted(backend)
    assert gradcheck(f, args, fast_mode=fast)
    assert gradgradcheck(f, args, fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_maml_step_matches_weight_gradient_form(backend):
    """Two inner steps of a 2-layer FiLM MLP with linear_sgd (gradients in factored form)
    against autograd w.r.t. the weights and clamped_sgd: equal meta-gradients of the initial
    weights, biases, FiLM vectors, the learnable lr and the support inputs."""
    t, k, q, i, h = 3, 4, 5, 2, 6
    dt = torch.float64
    w1, b1, w2, b2 = (
        rand(h, i, dtype=dt),
        rand(h, dtype=dt),
        rand(1, h, dtype=dt),
        rand(1, dtype=dt),
    )
    gamma, beta = 1 + 0.3 * rand(t, h, dtype=dt), rand(t, h, dtype=dt)
    lr = torch.tensor(0.1, dtype=dt)
    leaves = [v.requires_grad_() for v in (w1, b1, w2, b2, gamma, beta, lr)]
    xs, ys, xq, yq = (
        rand(t, k, i, dtype=dt),
        rand(t, k, 1, dtype=dt),
        rand(t, q, i, dtype=dt),
        rand(t, q, 1, dtype=dt),
    )
    xs.requires_grad_()

    def net(x, p):
        hid = ops.film_linear(x, p[0], p[1], gamma, beta, "tanh", backend=backend)
        return hid, ops.film_linear(hid, p[2], p[3], backend=backend)

    def factored():
        p = [w1, b1, w2, b2]
        for _ in range(2):
            hid, out = net(xs, p)
            d2 = 2 * (out - ys) / k
            d1 = (
                (d2 @ p[2] if p[2].dim() == 2 else torch.bmm(d2, p[2]))
                * (1 - hid**2)
                * gamma.unsqueeze(1)
            )
            p = [
                *ops.linear_sgd(p[0], p[1], d1, xs, lr, backend=backend),
                *ops.linear_sgd(p[2], p[3], d2, hid, lr, backend=backend),
            ]
        _, out = net(xq, p)
        return torch.autograd.grad(((out - yq) ** 2).mean(1).sum(), [*leaves, xs])

    def by_weights():
        p = [v.expand(t, *v.shape) for v in (w1, b1, w2, b2)]
        for _ in range(2):
            _, out = net(xs, p)
            grads = torch.autograd.grad(((out - ys) ** 2).mean(1).sum(), p, create_graph=True)
            p = ops.clamped_sgd(p, grads, lr, backend=backend)
        _, out = net(xq, p)
        return torch.autograd.grad(((out - yq) ** 2).mean(1).sum(), [*leaves, xs])

    for got, want in zip(factored(), by_weights()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda w, b, d, a: (w, b, d[0], a), "d must have shape"),
        (lambda w, b, d, a: (w, b, d, a[:, :2]), "a must have shape"),
        (lambda w, b, d, a: (w[:, :3], b, d, a), "weight must have shape"),
        (lambda w, b, d, a: (w, b[:, :2], d, a), "bias must have shape"),
        (lambda w, b, d, a: (w.double(), b, d, a), "weight must have dtype"),
        (lambda w, b, d, a: (w, b, d, a.double()), "a must have dtype"),
        (lambda w, b, d, a: (w, b, d.int(), a), "d must be a floating tensor"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    weight, bias, d, a = _args((3, 5, 7, 4), False, "per-task", torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.linear_sgd(*change(weight, bias, d, a), 0.1)


@pytest.mark.parametrize(
    "lr, clamp, match",
    [
        (torch.ones(2), None, "lr must be"),
        ("0.1", None, "lr must be"),
        (None, None, "lr must be"),
        (float("inf"), None, "lr must be finite"),
        (0.1, -1.0, "clamp must be"),
        (0.1, True, "clamp must be"),
    ],
)
def test_bad_lr_or_clamp(lr, clamp, match):
    weight, bias, d, a = _args((3, 5, 7, 4), False, None, torch.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.linear_sgd(weight, bias, d, a, lr, clamp)
