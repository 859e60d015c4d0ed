"""Forward parity of every fused backend with the pure-PyTorch reference."""

import pytest
import torch

from mumo_fast import ops
from ops_cases import (
    ACTIVATIONS,
    FUSED_BACKENDS,
    bn_args,
    conv_args,
    linear_args,
    optional_flags,
    rand,
    tol,
)

DTYPES = (torch.float32, torch.float64)
pytestmark = pytest.mark.parametrize("backend", FUSED_BACKENDS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shared", (True, False))
def test_film_linear(backend, dtype, activation, shared):
    for flags in optional_flags(backend):
        args = linear_args(3, 5, 7, 6, shared, flags, dtype, shared_bias=shared)
        got = ops.film_linear(*args, activation=activation, backend=backend)
        want = ops.film_linear(*args, activation=activation, backend="reference")
        torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_film_linear_lowrank(backend, dtype, activation):
    x, w, b, g, be = linear_args(4, 9, 5, 3, True, (True, True, True), dtype)
    u, v = rand(4, 2, 5, dtype=dtype), rand(4, 2, 3, dtype=dtype)
    got = ops.film_linear_lowrank(x, w, u, v, b, g, be, activation, backend=backend)
    dense = w + torch.bmm(v.transpose(1, 2), u)
    want = ops.film_linear(x, dense, b, g, be, activation, backend="reference")
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", (True, False))
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 1))])
def test_film_conv2d(backend, dtype, shared, stride, padding):
    for activation in ACTIVATIONS:
        for flags in optional_flags(backend):
            args = conv_args(2, 3, 3, 7, 6, 5, 3, shared, flags, dtype)
            kw = dict(stride=stride, padding=padding, activation=activation)
            got = ops.film_conv2d(*args, **kw, backend=backend)
            want = ops.film_conv2d(*args, **kw, backend="reference")
            torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 3, 4, 5, 3), (1, 2, 3, 1, 1)])
@pytest.mark.parametrize("shared", (True, False))
def test_film_batch_norm(backend, dtype, shape, shared):
    for activation in ACTIVATIONS:
        for flags in [
            (True, True, True, True),
            (False, False, False, False),
            (True, False, True, False),
            (False, True, False, True),
        ]:
            args = bn_args(shape, shared, flags, dtype)
            got = ops.film_batch_norm(*args, activation=activation, backend=backend)
            want = ops.film_batch_norm(*args, activation=activation, backend="reference")
            torch.testing.assert_close(got, want, **tol(dtype))


def test_non_contiguous_inputs(backend):
    x = rand(5, 4, 6).transpose(0, 1)  # [4, 5, 6] non-contiguous
    w = rand(4, 6, 3).transpose(1, 2)  # [4, 3, 6] non-contiguous per-task weight
    g = rand(3, 4).t()
    be = rand(3, 4).t()
    got = ops.film_linear(x, w, None, g, be, "tanh", backend=backend)
    want = ops.film_linear(x, w, None, g, be, "tanh", backend="reference")
    torch.testing.assert_close(got, want, **tol(torch.float32))
    xc = rand(2, 3, 4, 6, 5).transpose(3, 4)
    gb = rand(4, 2).t()
    got = ops.film_batch_norm(xc, None, None, gb, None, backend=backend)
    want = ops.film_batch_norm(xc, None, None, gb, None, backend="reference")
    torch.testing.assert_close(got, want, **tol(torch.float32))
    xc = rand(2, 3, 4, 6, 5).transpose(3, 4)
    wc = rand(2, 3, 4, 3, 3).transpose(3, 4)
    got = ops.film_conv2d(xc, wc, padding=1, backend=backend)
    want = ops.film_conv2d(xc, wc, padding=1, backend="reference")
    torch.testing.assert_close(got, want, **tol(torch.float32))
