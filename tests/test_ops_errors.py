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
    for backend in ops.available_backends():  # a 0x3 kernel, shared or per task
        with pytest.raises(ValueError, match="weight must not be empty"):
            ops.film_conv2d(x, r(5, 4, 0, 3), backend=backend)
        with pytest.raises(ValueError, match="weight must not be empty"):
            ops.film_conv2d(x, r(2, 5, 4, 3, 0), backend=backend)
        with pytest.raises(ValueError, match="weight must not be empty"):
            ops.film_conv2d(x, r(0, 4, 3, 3), backend=backend)
        with pytest.raises(ValueError, match="weight must not be empty"):
            ops.film_linear(r(2, 3, 4), r(0, 4), backend=backend)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.film_conv2d(x, r(2, 5, 4, 3, 3), bias=r(3, 5))


def test_film_batch_norm_errors():
    x = r(2, 3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[T, N, C\] or \[T, N, C, H, W\]"):
        ops.film_batch_norm(r(2, 3, 4, 5))
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.film_batch_norm(x, weight=r(3))
    with pytest.raises(ValueError, match="eps must be a finite positive number"):
        ops.film_batch_norm(x, eps=0.0)
    for eps in (float("inf"), float("nan"), -1e-5):
        with pytest.raises(ValueError, match="eps must be a finite positive number"):
            ops.film_batch_norm(x, eps=eps)
    with pytest.raises(ValueError, match="eps must be"):
        ops.film_batch_norm(x, eps="1e-5")
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


@pytest.mark.parametrize(
    "lr, clamp, exc, match",
    [
        ("0.1", None, TypeError, "lr must be a number"),
        (None, None, TypeError, "lr must be a number"),
        (True, None, TypeError, "lr must be a number"),
        (float("nan"), None, ValueError, "lr must be finite"),
        (torch.randn(2), None, ValueError, r"lr must be a number or a one-element tensor"),
        (torch.ones(1, dtype=torch.long), None, TypeError, "lr must be a floating tensor"),
        ([0.1, "0.1"], None, TypeError, r"lr\[1\] must be a number"),
        ([0.1, torch.randn(3)], None, ValueError, r"lr\[1\] must be a number or a one-element"),
        (0.1, True, TypeError, "clamp must be None or a positive number"),
        (0.1, "1", TypeError, "clamp must be None or a positive number"),
        (0.1, float("nan"), ValueError, "clamp must be None or a positive number"),
    ],
)
def test_clamped_sgd_bad_lr_or_clamp(lr, clamp, exc, match):
    params, grads = [r(3), r(2, 4)], [r(3), r(2, 4)]
    for backend in ops.available_backends():
        with pytest.raises(exc, match=match):
            ops.clamped_sgd(params, grads, lr, clamp, backend=backend)


def test_clamped_sgd_accepts_numbers_and_scalar_tensors():
    params, grads = [r(3), r(2, 4)], [r(3), r(2, 4)]
    lr = torch.rand(1, dtype=torch.float64).item() + 0.1
    for backend in ops.available_backends():
        for rate in (lr, [lr, torch.tensor(lr)], [torch.full((1,), lr), 1]):
            got = ops.clamped_sgd(params, grads, rate, 0.5, backend=backend)
            rates = rate if isinstance(rate, list) else [rate, rate]
            for g, p, gr, a in zip(got, params, grads, rates):
                want = p - float(a) * gr.clamp(-0.5, 0.5)
                torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-6)


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
