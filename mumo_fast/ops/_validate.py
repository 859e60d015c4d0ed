"""Argument checks for the public ops: every error names the argument and what was expected."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .activations import ACTIVATIONS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_activation(activation: object) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _check_same(x: Tensor, name: str, t: Tensor) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype} (the dtype of x), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on device {x.device} (the device of x), got {t.device}")


def _check_x(x: object, ranks: tuple[int, ...], layout: str) -> Tensor:
    x = _check_tensor("x", x)
    if x.dim() not in ranks:
        raise ValueError(f"x must have shape {layout}, got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    return x


def check_vector(x: Tensor, name: str, v: object, t: int, c: int, shared_ok: bool) -> Tensor | None:
    """A per-task [T, C] (or, where shared_ok, [C]) vector argument; None passes."""
    if v is None:
        return None
    v = _check_tensor(name, v)
    _check_same(x, name, v)
    ok = tuple(v.shape) == (t, c) or (shared_ok and tuple(v.shape) == (c,))
    if not ok:
        want = f"[{t}, {c}]" + (f" or [{c}]" if shared_ok else "")
        raise ValueError(f"{name} must have shape {want}, got {tuple(v.shape)}")
    return v


def check_linear(x, weight, bias, gamma, beta, activation) -> None:
    x = _check_x(x, (3,), "[T, N, IN]")
    t, _, in_features = x.shape
    weight = _check_tensor("weight", weight)
    _check_same(x, "weight", weight)
    if weight.dim() == 2 and weight.shape[1] == in_features:
        out = weight.shape[0]
    elif weight.dim() == 3 and weight.shape[0] == t and weight.shape[2] == in_features:
        out = weight.shape[1]
    else:
        raise ValueError(
            f"weight must have shape [{t}, OUT, {in_features}] or [OUT, {in_features}] "
            f"for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if out == 0:
        raise ValueError(f"weight must not be empty (OUT = 0), got {tuple(weight.shape)}")
    check_vector(x, "bias", bias, t, out, shared_ok=True)
    check_vector(x, "gamma", gamma, t, out, shared_ok=False)
    check_vector(x, "beta", beta, t, out, shared_ok=False)
    check_activation(activation)


def check_linear_lowrank(x, weight, u, v, bias, gamma, beta, activation) -> None:
    x = _check_x(x, (3,), "[T, N, IN]")
    t, _, in_features = x.shape
    weight = _check_tensor("weight", weight)
    _check_same(x, "weight", weight)
    if weight.dim() != 2 or weight.shape[1] != in_features:
        raise ValueError(
            f"weight must have shape [OUT, {in_features}] (shared), got {tuple(weight.shape)}"
        )
    out = weight.shape[0]
    u = _check_tensor("u", u)
    v = _check_tensor("v", v)
    _check_same(x, "u", u)
    _check_same(x, "v", v)
    if u.dim() != 3 or u.shape[0] != t or u.shape[2] != in_features:
        raise ValueError(f"u must have shape [{t}, R, {in_features}], got {tuple(u.shape)}")
    if tuple(v.shape) != (t, u.shape[1], out):
        raise ValueError(f"v must have shape [{t}, {u.shape[1]}, {out}], got {tuple(v.shape)}")
    check_vector(x, "bias", bias, t, out, shared_ok=True)
    check_vector(x, "gamma", gamma, t, out, shared_ok=False)
    check_vector(x, "beta", beta, t, out, shared_ok=False)
    check_activation(activation)


def check_pair(name: str, v: object, minimum: int) -> tuple[int, int]:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        pair = (v, v)
    elif (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    ):
        pair = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return pair


def check_conv(x, weight, bias, gamma, beta, stride, padding, activation):
    x = _check_x(x, (5,), "[T, N, C, H, W]")
    t, _, c, h, w = x.shape
    weight = _check_tensor("weight", weight)
    _check_same(x, "weight", weight)
    if weight.dim() == 4 and weight.shape[1] == c:
        o, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    elif weight.dim() == 5 and weight.shape[0] == t and weight.shape[2] == c:
        o, kh, kw = weight.shape[1], weight.shape[3], weight.shape[4]
    else:
        raise ValueError(
            f"weight must have shape [{t}, O, {c}, KH, KW] or [O, {c}, KH, KW] "
            f"for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if 0 in weight.shape:
        raise ValueError(
            f"weight must not be empty (no dimension of size 0), got {tuple(weight.shape)}"
        )
    stride = check_pair("stride", stride, 1)
    padding = check_pair("padding", padding, 0)
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        raise ValueError(
            f"x spatial size {(h, w)} with padding {padding} is smaller than the kernel {(kh, kw)}"
        )
    check_vector(x, "bias", bias, t, o, shared_ok=True)
    check_vector(x, "gamma", gamma, t, o, shared_ok=False)
    check_vector(x, "beta", beta, t, o, shared_ok=False)
    check_activation(activation)
    return stride, padding


def check_batch_norm(x, weight, bias, gamma, beta, eps, activation) -> None:
    x = _check_x(x, (3, 5), "[T, N, C] or [T, N, C, H, W]")
    t, _, c = x.shape[:3]
    check_vector(x, "weight", weight, t, c, shared_ok=True)
    check_vector(x, "bias", bias, t, c, shared_ok=True)
    check_vector(x, "gamma", gamma, t, c, shared_ok=False)
    check_vector(x, "beta", beta, t, c, shared_ok=False)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite positive number, got {eps!r}")
    check_activation(activation)


def _check_clamp(clamp: object) -> None:
    if clamp is None:
        return
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)):
        raise TypeError(f"clamp must be None or a positive number, got {clamp!r}")
    if not clamp > 0:
        raise ValueError(f"clamp must be None or a positive number, got {clamp!r}")


def _check_lr(name: str, lr: object, like: Tensor) -> None:
    """A learning rate: a finite real number, or a one-element floating tensor on the
    device of the tensor it updates (a learnable one; its value is not read here)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a one-element tensor, got shape {tuple(lr.shape)}"
            )
        if not lr.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {lr.dtype}")
        if lr.device != like.device:
            raise ValueError(f"{name} must be on device {like.device}, got {lr.device}")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(
            f"{name} must be a number or a one-element tensor, got {type(lr).__name__} {lr!r}"
        )
    if not math.isfinite(lr):
        raise ValueError(f"{name} must be finite, got {lr!r}")


def check_update(params, grads, lr, clamp) -> None:
    if not isinstance(params, (list, tuple)) or not isinstance(grads, (list, tuple)):
        raise TypeError("params and grads must be lists of tensors")
    if len(params) != len(grads):
        raise ValueError(f"grads must have one entry per param ({len(params)}), got {len(grads)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        _check_tensor(f"params[{i}]", p)
        _check_tensor(f"grads[{i}]", g)
        if p.shape != g.shape:
            raise ValueError(
                f"grads[{i}] must have the shape of params[{i}] {tuple(p.shape)}, got {tuple(g.shape)}"
            )
        _check_same(p, f"grads[{i}]", g)
    if isinstance(lr, (list, tuple)):
        if len(lr) != len(params):
            raise ValueError(f"lr must be a float or one per param ({len(params)}), got {len(lr)}")
        for i, (a, p) in enumerate(zip(lr, params)):
            _check_lr(f"lr[{i}]", a, p)
    elif params:
        _check_lr("lr", lr, params[0])
    _check_clamp(clamp)


def check_linear_sgd(weight, bias, d, a, lr, clamp) -> None:
    d = _check_tensor("d", d)
    if d.dim() != 3 or any(s == 0 for s in d.shape):
        raise ValueError(f"d must have shape [T, K, OUT] (non-empty), got {tuple(d.shape)}")
    if d.dtype not in FLOAT_DTYPES:
        raise TypeError(f"d must be a floating tensor, got dtype {d.dtype}")
    t, k, out = d.shape
    a = _check_tensor("a", a)
    _check_same(d, "a", a)
    if a.dim() != 3 or a.shape[:2] != d.shape[:2] or a.shape[2] == 0:
        raise ValueError(
            f"a must have shape [{t}, {k}, IN] (the T and K of d), got {tuple(a.shape)}"
        )
    in_features = a.shape[2]
    weight = _check_tensor("weight", weight)
    _check_same(d, "weight", weight)
    if tuple(weight.shape) not in ((t, out, in_features), (out, in_features)):
        raise ValueError(
            f"weight must have shape [{t}, {out}, {in_features}] or [{out}, {in_features}] "
            f"for d {tuple(d.shape)} and a {tuple(a.shape)}, got {tuple(weight.shape)}"
        )
    check_vector(d, "bias", bias, t, out, shared_ok=True)
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"lr must be a float or a one-element tensor, got shape {tuple(lr.shape)}"
            )
        _check_same(d, "lr", lr)
    else:
        _check_lr("lr", lr, d)
    _check_clamp(clamp)
