"""Public functional ops: FiLM fused into linear, conv and batch norm, with a task axis.

Shapes and semantics: the README's "Ops reference"; the backends and how every op stays
differentiable to any order: docs/design.md, section 3. Every op takes ``backend=``
("auto" by default, see :func:`set_backend`); every backend computes the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from . import _torch_internals, _validate, backends, reference
from .backends import available_backends
from .functions import (
    FiLMBatchNormFunction,
    FiLMConv2dFunction,
    FiLMLinearFunction,
    FiLMLinearLowRankFunction,
)

__all__ = [
    "film_linear",
    "film_linear_lowrank",
    "film_conv2d",
    "film_batch_norm",
    "clamped_sgd",
    "linear_sgd",
    "set_backend",
    "get_backend",
    "available_backends",
]

_default_backend = "auto"


def set_backend(name: str) -> None:
    """Set the process-wide default backend used when an op is called with backend=None."""
    global _default_backend
    _default_backend = backends.check_name(name, "name")


def get_backend() -> str:
    return _default_backend


def _forward_ad_possible() -> bool:
    """A forward-mode level (``torch.autograd.forward_ad``) or a torch.func transform is
    active, which may carry tangents."""
    return (
        _torch_internals.forward_ad_level() >= 0 or _torch_internals.functorch_transforms_active()
    )


def _pick(backend: str | None, x: Tensor, op: str) -> str:
    name = _default_backend if backend is None else backends.check_name(backend)
    return backends.resolve(name, x.device, op)


def film_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> Tensor:
    """act((x @ weight^T + bias) * gamma + beta).

    x [T, N, IN]; weight [T, OUT, IN] or [OUT, IN]; bias [T, OUT] or [OUT];
    gamma, beta [T, OUT]. Returns [T, N, OUT].
    """
    _validate.check_linear(x, weight, bias, gamma, beta, activation)
    name = _pick(backend, x, "film_linear")
    if name == "reference":
        return reference.film_linear(x, weight, bias, gamma, beta, activation)
    y, _ = FiLMLinearFunction.apply(x, weight, bias, gamma, beta, activation, backends.load(name))
    return y


def film_linear_lowrank(
    x: Tensor,
    weight: Tensor,
    u: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> Tensor:
    """film_linear with per-task weights ``weight + v[t]^T u[t]`` kept in low-rank form.

    x [T, N, IN]; weight [OUT, IN] (shared); u [T, R, IN]; v [T, R, OUT];
    bias [T, OUT] or [OUT]; gamma, beta [T, OUT]. Returns [T, N, OUT].
    The [T, OUT, IN] per-task weights are never built.
    """
    _validate.check_linear_lowrank(x, weight, u, v, bias, gamma, beta, activation)
    name = _pick(backend, x, "film_linear_lowrank")
    if name == "reference":
        return reference.film_linear_lowrank(x, weight, u, v, bias, gamma, beta, activation)
    y, _ = FiLMLinearLowRankFunction.apply(
        x, weight, u, v, bias, gamma, beta, activation, backends.load(name)
    )
    return y


def film_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> Tensor:
    """act((conv2d(x, weight) + bias) * gamma + beta).

    x [T, N, C, H, W]; weight [T, O, C, KH, KW] or [O, C, KH, KW]; bias [T, O] or [O];
    gamma, beta [T, O]. Returns [T, N, O, H', W'].
    """
    stride, padding = _validate.check_conv(
        x, weight, bias, gamma, beta, stride, padding, activation
    )
    name = _pick(backend, x, "film_conv2d")
    if name == "reference":
        return reference.film_conv2d(x, weight, bias, gamma, beta, stride, padding, activation)
    y, _ = FiLMConv2dFunction.apply(
        x, weight, bias, gamma, beta, stride, padding, activation, backends.load(name)
    )
    return y


def film_batch_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    eps: float = 1e-5,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> Tensor:
    """act(((x - mean) / sqrt(var + eps) * weight + bias) * gamma + beta), batch
    statistics per task and channel over N (and H, W).

    x [T, N, C] or [T, N, C, H, W]; weight, bias [T, C] or [C]; gamma, beta [T, C].
    """
    _validate.check_batch_norm(x, weight, bias, gamma, beta, eps, activation)
    name = _pick(backend, x, "film_batch_norm")
    if name == "reference":
        return reference.film_batch_norm(x, weight, bias, gamma, beta, eps, activation)
    y, _, _ = FiLMBatchNormFunction.apply(
        x, weight, bias, gamma, beta, float(eps), activation, backends.load(name)
    )
    return y


def clamped_sgd(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    lr: float | Sequence[float | Tensor],
    clamp: float | None = None,
    *,
    backend: str | None = None,
) -> list[Tensor]:
    """The inner-loop update ``theta - lr * clamp(grad, -clamp, clamp)`` for every
    fast weight; differentiable (second order stays exact). ``lr`` is one float or
    one per parameter (a float or a learnable tensor)."""
    params, grads = list(params), list(grads)
    _validate.check_update(params, grads, lr, clamp)
    if not params:
        return []
    name = _pick(backend, params[0], "clamped_sgd")
    module = None if name == "reference" else backends.load(name)
    fused = getattr(module, "clamped_sgd", None)
    if name == "triton" and _forward_ad_possible():
        fused = None  # the fused kernel's Function has no jvp: the same update in torch ops
    if fused is not None:
        return fused(params, grads, lr, clamp)
    return reference.clamped_sgd(params, grads, lr, clamp)


def linear_sgd(
    weight: Tensor,
    bias: Tensor | None,
    d: Tensor,
    a: Tensor,
    lr: float | Tensor,
    clamp: float | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One inner SGD step of a linear layer whose gradient is given in factored form.

    On a support set of K points per task the gradient of a linear layer is
    ``dL/dW = D^T A`` and ``dL/db = sum_k D`` (D [T, K, OUT]: the gradients w.r.t. the
    layer's pre-FiLM output; A [T, K, IN]: the layer's inputs). Returns
    ``(W - lr * clamp(D^T A), b - lr * clamp(sum_k D))``: weight [T, OUT, IN] (or shared
    [OUT, IN]) becomes per-task [T, OUT, IN]; bias [T, OUT] or [OUT] (or None) becomes
    [T, OUT]. Without a clamp the compiled backends never form ``D^T A``: one batched
    GEMM accumulates into W, and the meta-gradient's backward stays small GEMMs.
    Differentiable to any order in every argument (``lr`` a float or a scalar tensor).
    """
    _validate.check_linear_sgd(weight, bias, d, a, lr, clamp)
    name = _pick(backend, d, "linear_sgd")
    module = None if name == "reference" else backends.load(name)
    fused = getattr(module, "linear_sgd", None)
    if fused is not None:
        return fused(weight, bias, d, a, lr, clamp)
    return reference.linear_sgd(weight, bias, d, a, lr, clamp)
