"""FiLM layers against torch's modules, the task-axis convention, and low-rank scopes."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mumo_fast.nn import FiLMBatchNorm, FiLMConv2d, FiLMLinear

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _same_init(make_a, make_b):
    torch.manual_seed(123)
    a = make_a()
    torch.manual_seed(123)
    b = make_b()
    return a, b


def test_linear_matches_nn_linear():
    a, b = _same_init(lambda: FiLMLinear(7, 13), lambda: nn.Linear(7, 13))
    torch.testing.assert_close(a.weight, b.weight, atol=0, rtol=0)
    torch.testing.assert_close(a.bias, b.bias, atol=0, rtol=0)
    x = torch.randn(11, 7, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [x, a.weight, a.bias], g)
    gb = torch.autograd.grad(yb, [x, b.weight, b.bias], g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, **TOL)


def test_linear_without_bias():
    a, b = _same_init(lambda: FiLMLinear(5, 3, bias=False), lambda: nn.Linear(5, 3, bias=False))
    x = torch.randn(4, 5)
    torch.testing.assert_close(a(x), b(x), **TOL)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 2))])
def test_conv_matches_nn_conv(stride, padding):
    a, b = _same_init(
        lambda: FiLMConv2d(3, 5, (3, 2), stride=stride, padding=padding),
        lambda: nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding),
    )
    x = torch.randn(2, 3, 9, 7, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [x, a.weight, a.bias], g)
    gb = torch.autograd.grad(yb, [x, b.weight, b.bias], g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("shape,ref", [((9, 6), nn.BatchNorm1d), ((3, 6, 5, 4), nn.BatchNorm2d)])
def test_batch_norm_matches_training_mode(shape, ref):
    a, b = FiLMBatchNorm(6), ref(6)
    with torch.no_grad():
        for m in (a, b):
            m.weight.copy_(torch.linspace(0.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-0.3, 0.4, 6))
    b.train()
    x = torch.randn(*shape, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, **TOL)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [x, a.weight, a.bias], g)
    gb = torch.autograd.grad(yb, [x, b.weight, b.bias], g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, **TOL)
    # Transductive: eval mode still uses the batch statistics.
    a.eval()
    torch.testing.assert_close(a(x), yb, **TOL)


def test_batch_norm_running_stats_in_eval():
    a, b = FiLMBatchNorm(4, track_running_stats=True, momentum=0.3), nn.BatchNorm2d(4, momentum=0.3)
    x = torch.randn(5, 4, 3, 3) * 2 + 1
    a(x), b(x)
    torch.testing.assert_close(a.running_mean, b.running_mean, **TOL)
    torch.testing.assert_close(a.running_var, b.running_var, **TOL)
    a.eval(), b.eval()
    x2 = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(a(x2), b(x2), **TOL)


def _film_ref(z, gamma, beta, act):
    shape = [z.shape[0], 1, z.shape[2]] + [1] * (z.dim() - 3)
    u = z * gamma.reshape(shape) + beta.reshape(shape)
    return torch.relu(u) if act == "relu" else u


def test_task_axis_per_task_weights_linear():
    t, n, i, o = 3, 4, 5, 6
    layer = FiLMLinear(i, o, activation="relu")
    w, b = torch.randn(t, o, i), torch.randn(t, o)
    gamma, beta = torch.randn(t, o), torch.randn(t, o)
    x = torch.randn(t, n, i)
    y = functional_call(layer, {"weight": w, "bias": b}, (x, gamma, beta), {"task_axis": True})
    want = torch.stack([x[k] @ w[k].t() + b[k] for k in range(t)])
    torch.testing.assert_close(y, _film_ref(want, gamma, beta, "relu"), **TOL)


def test_task_axis_per_task_weights_conv_and_norm():
    t, n = 2, 3
    conv = FiLMConv2d(2, 4, 3, stride=2, padding=1)
    norm = FiLMBatchNorm(4, activation="relu")
    w = torch.randn(t, 4, 2, 3, 3)
    nw, nb = torch.rand(t, 4) + 0.5, torch.randn(t, 4)
    gamma, beta = torch.randn(t, 4), torch.randn(t, 4)
    x = torch.randn(t, n, 2, 7, 5)
    z = functional_call(conv, {"weight": w, "bias": conv.bias}, (x,), {"task_axis": True})
    y = functional_call(norm, {"weight": nw, "bias": nb}, (z, gamma, beta), {"task_axis": True})
    for k in range(t):
        zk = nn.functional.conv2d(x[k], w[k], conv.bias, stride=2, padding=1)
        torch.testing.assert_close(z[k], zk, **TOL)
        hk = nn.functional.batch_norm(zk, None, None, nw[k], nb[k], training=True)
        yk = torch.relu(hk * gamma[k, :, None, None] + beta[k, :, None, None])
        torch.testing.assert_close(y[k], yk, **TOL)


def test_film_without_task_axis_takes_vectors():
    layer = FiLMLinear(3, 4, activation="relu")
    x, g, b = torch.randn(6, 3), torch.randn(4), torch.randn(4)
    want = torch.relu((x @ layer.weight.t() + layer.bias) * g + b)
    torch.testing.assert_close(layer(x, g, b), want, **TOL)


def test_task_axis_is_never_guessed():
    layer = FiLMLinear(3, 4)
    with pytest.raises(ValueError, match="task_axis"):
        layer(torch.randn(2, 5, 3))  # a task axis not declared
    with pytest.raises(ValueError, match="task_axis"):
        layer(torch.randn(5, 3), task_axis=True)
    with pytest.raises(ValueError, match="gamma"):
        layer(torch.randn(2, 5, 3), gamma=torch.randn(4), task_axis=True)
    with pytest.raises(ValueError, match="task axis"):
        functional_call(layer, {"weight": torch.randn(2, 4, 3)}, (torch.randn(5, 3),))
    with pytest.raises(TypeError, match="task_axis"):
        layer(torch.randn(5, 3), task_axis=1)
    conv = FiLMConv2d(1, 2, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        conv(torch.randn(2, 1, 1, 8, 8))
