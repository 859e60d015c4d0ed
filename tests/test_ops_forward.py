"""Forward of every backend, the reference included, against the ops written out from
their definitions in float64 (``oracle.py``: none of the library's code)."""

import oracle
import pytest
import torch

from mumo_fast import ops
from ops_cases import (
    ACTIVATIONS,
    ALL_BACKENDS,
    bn_args,
    conv_args,
    linear_args,
    optional_flags,
    rand,
    tol,
)

DTYPES = (torch.float32, torch.float64)
pytestmark = pytest.mark.parametrize("backend", ALL_BACKENDS)


def close(got, want, dtype):
    """A backend's output (in the inputs' dtype) against the float64 oracle."""
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.to(torch.float64), want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shared", (True, False))
def test_film_linear(backend, dtype, activation, shared):
    for flags in optional_flags(backend):
        args = linear_args(3, 5, 7, 6, shared, flags, dtype, shared_bias=shared)
        got = ops.film_linear(*args, activation=activation, backend=backend)
        close(got, oracle.film_linear(*args, activation=activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_film_linear_lowrank(backend, dtype, activation):
    x, w, b, g, be = linear_args(4, 9, 5, 3, True, (True, True, True), dtype)
    u, v = rand(4, 2, 5, dtype=dtype), rand(4, 2, 3, dtype=dtype)
    got = ops.film_linear_lowrank(x, w, u, v, b, g, be, activation, backend=backend)
    close(got, oracle.film_linear_lowrank(x, w, u, v, b, g, be, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", (True, False))
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 1))])
def test_film_conv2d(backend, dtype, shared, stride, padding):
    for activation in ACTIVATIONS:
        for flags in optional_flags(backend):
            args = conv_args(2, 3, 3, 7, 6, 5, 3, shared, flags, dtype)
            kw = dict(stride=stride, padding=padding, activation=activation)
            got = ops.film_conv2d(*args, **kw, backend=backend)
            close(got, oracle.film_conv2d(*args, **kw), dtype)


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
            close(got, oracle.film_batch_norm(*args, activation=activation), dtype)


def test_non_contiguous_inputs(backend):
    x = rand(5, 4, 6).transpose(0, 1)  # [4, 5, 6] non-contiguous
    w = rand(4, 6, 3).transpose(1, 2)  # [4, 3, 6] non-contiguous per-task weight
    g = rand(3, 4).t()
    be = rand(3, 4).t()
    f32 = torch.float32
    got = ops.film_linear(x, w, None, g, be, "tanh", backend=backend)
    close(got, oracle.film_linear(x, w, None, g, be, "tanh"), f32)
    xc = rand(2, 3, 4, 6, 5).transpose(3, 4)
    gb = rand(4, 2).t()
    got = ops.film_batch_norm(xc, None, None, gb, None, backend=backend)
    close(got, oracle.film_batch_norm(xc, None, None, gb, None), f32)
    xc = rand(2, 3, 4, 6, 5).transpose(3, 4)
    wc = rand(2, 3, 4, 3, 3).transpose(3, 4)
    got = ops.film_conv2d(xc, wc, padding=1, backend=backend)
    close(got, oracle.film_conv2d(xc, wc, padding=1), f32)


def test_oracle_is_not_trivially_satisfied(backend):
    """The oracle tells a wrong formula apart: beta dropped, gamma and beta swapped, the
    kernel flipped (convolution instead of cross-correlation), the unbiased variance."""
    f64 = torch.float64
    x, w, b, g, be = linear_args(3, 5, 7, 6, False, (True, True, True), f64)
    good = ops.film_linear(x, w, b, g, be, "tanh", backend=backend)
    close(good, oracle.film_linear(x, w, b, g, be, "tanh"), f64)
    for wrong in (
        oracle.film_linear(x, w, b, g, None, "tanh"),
        oracle.film_linear(x, w, b, be, g, "tanh"),
    ):
        assert (good - wrong).abs().max() > 1e-3
    args = conv_args(2, 3, 3, 7, 6, 5, 3, False, (True, True, True), f64)
    good = ops.film_conv2d(*args, padding=1, backend=backend)
    flipped = (args[0], args[1].flip(-1, -2), *args[2:])
    assert (good - oracle.film_conv2d(*flipped, padding=1)).abs().max() > 1e-3
    x = bn_args((3, 4, 5), False, (False, False, False, False), f64)[0]
    good = ops.film_batch_norm(x, backend=backend)
    unbiased = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + 1e-5).sqrt()
    assert (good - unbiased).abs().max() > 1e-3
