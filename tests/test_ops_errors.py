"""Bad input gets a ValueError/TypeError naming the argument and what was expected."""

import pytest
import torch

from mumo_fast import ops


def r(*s, dtype=torch.float32):
    return torch.randn(*s, dtype=dtype)


LINEAR_CASES = [
    (dict(x=r(3, 4, 5), weight=r(3, 6, 4)), ValueError, "weight must have shape"),
    (dict(x=r(3, 4, 5), weight=r(2, 6, 5)), ValueError, "weight must have shape"),
    (dict(x=r(4, 5), weight=r(6, 5)), ValueError, r"x must have shape \[T, N, IN\]"),
    (dict(x=r(3, 4, 5), weight=r(6, 5), bias=r(3, 5)), ValueError, "bias must have shape"),
    (dict(x=r(3, 4, 5), weight=r(6, 5), gamma=r(6)), ValueError, r"gamma must have shape \[3, 6\]"),
    (dict(x=r(3, 4, 5), weight=r(6, 5), beta=r(1, 6)), ValueError, "beta must have shape"),
    (dict(x=r(3, 4, 5), weight=r(6, 5, dtype=torch.float64)), TypeError, "weight must have dtype"),
    (
        dict(x=r(3, 4, 5), weight=r(6, 5), activation="gelu"),
        ValueError,
        "activation must be one of",
    ),
    (dict(x=r(3, 4, 5), weight=r(6, 5), backend="cuda"), ValueError, "backend must be one of"),
    (
        dict(x=torch.ones(3, 4, 5, dtype=torch.long), weight=r(6, 5)),
        TypeError,
        "x must be a floating",
    ),
    (dict(x=[[1.0]], weight=r(6, 5)), TypeError, "x must be a torch.Tensor"),
    (dict(x=r(3, 0, 5), weight=r(6, 5)), ValueError, "x must not be empty"),
]


@pytest.mark.parametrize("kwargs,exc,match", LINEAR_CASES)
def test_film_linear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.film_linear(**kwargs)


def test_film_conv2d_errors():
    x = r(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.film_conv2d(x, r(5, 3, 3, 3))
    with pytest.raises(ValueError, match=r"x must have shape \[T, N, C, H, W\]"):
        ops.film_conv2d(r(3, 4, 8, 8), r(5, 4, 3, 3))
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        ops.film_conv2d(x, r(5, 4, 3, 3), padding=(1, 1, 1))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ops.film_conv2d(x, r(5, 4, 3, 3), stride=0)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ops.film_conv2d(r(2, 3, 4, 2, 2), r(5, 4, 3, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.film_conv2d(x, r(2, 5, 4, 3, 3), bias=r(3, 5))


def test_film_batch_norm_errors():
    x = r(2, 3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[T, N, C\] or \[T, N, C, H, W\]"):
        ops.film_batch_norm(r(2, 3, 4, 5))
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.film_batch_norm(x, weight=r(3))
    with pytest.raises(ValueError, match="eps must be a positive number"):
        ops.film_batch_norm(x, eps=0.0)
    with pytest.raises(ValueError, match="gamma must have shape"):
        ops.film_batch_norm(x, gamma=r(4))


def test_lowrank_and_update_errors():
    x = r(2, 3, 4)
    with pytest.raises(ValueError, match="u must have shape"):
        ops.film_linear_lowrank(x, r(5, 4), r(2, 3, 5), r(2, 3, 5))
    with pytest.raises(ValueError, match="v must have shape"):
        ops.film_linear_lowrank(x, r(5, 4), r(2, 3, 4), r(2, 2, 5))
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.film_linear_lowrank(x, r(2, 5, 4), r(2, 3, 4), r(2, 3, 5))
    with pytest.raises(ValueError, match="grads must have one entry per param"):
        ops.clamped_sgd([r(3)], [], 0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] must have the shape"):
        ops.clamped_sgd([r(3)], [r(4)], 0.1)
    with pytest.raises(ValueError, match="clamp must be None or a positive number"):
        ops.clamped_sgd([r(3)], [r(3)], 0.1, clamp=-1.0)


def test_backend_selection():
    assert "reference" in ops.available_backends()
    with pytest.raises(ValueError, match="name must be one of"):
        ops.set_backend("fastest")
    before = ops.get_backend()
    try:
        ops.set_backend("reference")
        assert ops.get_backend() == "reference"
    finally:
        ops.set_backend(before)
    if "triton" not in ops.available_backends():
        with pytest.raises(ValueError, match="not available"):
            ops.film_linear(r(2, 3, 4), r(5, 4), backend="triton")
