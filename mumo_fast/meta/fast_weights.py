"""Fast weights: the per-task weights of a whole meta-batch, one object per layer.

The inner loop adapts every task of a meta-batch at once, so each layer's fast weights
carry a leading task axis ``T``. A :class:`FastWeights` maps each parameterised layer of a
base network from ``mumo_fast.models`` (by its module path, e.g. ``"hidden.0"``) to an
object of the type for that layer, and is passed to the network's forward explicitly:
``base(x, film, task_axis=True, fast=fw.bind())`` calls each such object in place of
its layer, with the layer's own call signature. Each type has

* a forward: the layer's fused op (``mumo_fast.ops``) with the fast weights;
* an exact SGD step, ``step(grad, lr_weight, lr_bias, clamp)`` -> new fast weights:
  ``theta - lr * clamp(dL/dtheta, -clamp, clamp)`` (``clamp`` None: plain SGD), the
  inner loop's update, differentiable to any order.

The types:

* :class:`DenseLinear` (:class:`~mumo_fast.nn.FiLMLinear`): weight ``[T, OUT, IN]``,
  bias ``[T, OUT]``. Its gradient comes factored as ``(D, A)``: on K support points
  ``dL/dW = D^T A`` and ``dL/db = sum_k D``, with D ``[T, K, OUT]`` the gradient
  w.r.t. the layer's pre-FiLM output and A ``[T, K, IN]`` its input; the step is
  ``ops.linear_sgd``.
* :class:`LowRankLinear` (FiLMLinear): the shared weight W ``[OUT, IN]`` and factors
  u ``[T, R, IN]``, v ``[T, R, OUT]`` with ``W_t = W + v[t]^T u[t]``
  (``ops.film_linear_lowrank``; the ``[T, OUT, IN]`` weights are never built). Exact:
  ``W_t - lr D^T A = W + v^T u + (-lr D)^T A``, so a step appends A to u and ``-lr D``
  to v (rank grows by K per step). With a clamp, ``clamp(G) = G - E`` where the excess
  ``E = G - clamp(G)`` is zero wherever the clamp does not bind; where it binds it binds
  in a few rows (or columns) of a few tasks' ``G``, so ``-lr E`` is a few more rank-1
  terms: one per binding row o (``v = e_o``, ``u = lr E[o, :]``), padded per task with
  rows where it does not bind (whose excess is exactly zero), or the same by columns,
  whichever adds less rank. Which entries bind is piecewise constant, as in ``clamp``
  itself, so this is exact to any order. When the factors would grow larger than a
  dense weight, the step turns the layer into a :class:`DenseLinear` holding
  ``W + v^T u`` and takes the dense step: the same values.
* :class:`DenseConv` (:class:`~mumo_fast.nn.FiLMConv2d`): weight ``[T, O, C, KH, KW]``,
  bias ``[T, O]`` (or none); gradient ``(dL/dW, dL/db)``; step ``ops.clamped_sgd``.
* :class:`BatchNormAffine` (:class:`~mumo_fast.nn.FiLMBatchNorm`'s affine): weight and
  bias ``[T, C]``, batch statistics per task (transductive, as MAML); same step.

Before the first step the weights are the meta-parameters, expanded to ``[T, ...]``
(a view: the meta-gradient sums over tasks), or shared as they are for W of a low-rank
layer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import ops
from ..nn import FiLMBatchNorm, FiLMConv2d, FiLMLinear

# See LowRankLinear.max_rank.
CLAMP_RANK_FRACTION = 1.0


def _bias_step(bias: Tensor | None, d: Tensor, lr, clamp: float | None, backend) -> Tensor | None:
    """A linear layer's bias after one step: ``b - lr * clamp(sum_k D)``, [T, OUT]."""
    if bias is None:
        return None
    if bias.dim() == 1:
        bias = bias.expand(d.shape[0], *bias.shape)
    return ops.clamped_sgd([bias], [d.sum(1)], [lr], clamp, backend=backend)[0]


@dataclass(frozen=True, eq=False)
class _LayerWeights:
    module: nn.Module  # the layer: activation, stride, eps, ...
    weight: Tensor
    bias: Tensor | None
    backend: str | None = None  # None: the layer's own

    @property
    def ops_backend(self) -> str | None:
        return self.module.backend if self.backend is None else self.backend

    def detached(self) -> _LayerWeights:
        """Cut from every graph; weights require grad again (for further inner steps)."""
        bias = None if self.bias is None else self.bias.detach().requires_grad_()
        return replace(self, weight=self.weight.detach().requires_grad_(), bias=bias)


class LinearWeights(_LayerWeights):
    """A FiLMLinear layer's fast weights, stepped from the factored gradient ``(D, A)``."""

    def input_grad(self, d: Tensor) -> Tensor:
        """``d [T, N, OUT] @ W_t [T, OUT, IN]``: the layer's backward to its input."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class DenseLinear(LinearWeights):
    """weight [T, OUT, IN], bias [T, OUT] or None."""

    def __call__(self, x: Tensor, gamma=None, beta=None, *, task_axis: bool = True) -> Tensor:
        _check_task_axis(task_axis)
        act = self.module.activation
        return ops.film_linear(
            x, self.weight, self.bias, gamma, beta, act, backend=self.ops_backend
        )

    def input_grad(self, d: Tensor) -> Tensor:
        return torch.bmm(d, self.weight)

    def step(self, grad: tuple[Tensor, Tensor], lr_w, lr_b, clamp: float | None) -> DenseLinear:
        d, a = grad
        w, _ = ops.linear_sgd(self.weight, None, d, a, lr_w, clamp, backend=self.ops_backend)
        return replace(self, weight=w, bias=_bias_step(self.bias, d, lr_b, clamp, self.ops_backend))


@dataclass(frozen=True, eq=False)
class LowRankLinear(LinearWeights):
    """Shared weight W [OUT, IN], factors u [T, R, IN], v [T, R, OUT] (None before the
    first step): ``W_t = W + v[t]^T u[t]``; bias [OUT] (shared) or [T, OUT], or None."""

    u: Tensor | None = None
    v: Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.u is None else self.u.shape[1]

    @property
    def max_rank(self) -> float:
        """The most rank the clamp's correction may bring the factors to (beyond it the
        layer turns dense): ``CLAMP_RANK_FRACTION`` times ``O*I/(O+I)``, where factors
        ``[T, r, OUT] + [T, r, IN]`` are as large as a dense ``[T, OUT, IN]`` weight."""
        out_f, in_f = self.weight.shape
        return CLAMP_RANK_FRACTION * out_f * in_f / (out_f + in_f)

    def __call__(self, x: Tensor, gamma=None, beta=None, *, task_axis: bool = True) -> Tensor:
        _check_task_axis(task_axis)
        act, backend = self.module.activation, self.ops_backend
        if self.u is None:
            return ops.film_linear(x, self.weight, self.bias, gamma, beta, act, backend=backend)
        return ops.film_linear_lowrank(
            x, self.weight, self.u, self.v, self.bias, gamma, beta, act, backend=backend
        )

    def input_grad(self, d: Tensor) -> Tensor:
        g = torch.matmul(d, self.weight)
        if self.u is None:
            return g
        return torch.baddbmm(g, torch.bmm(d, self.v.transpose(1, 2)), self.u)

    def dense(self, num_tasks: int) -> DenseLinear:
        """The same weights as dense per-task ``W + v^T u`` [T, OUT, IN]."""
        w = self.weight
        w = w.expand(num_tasks, *w.shape) if self.u is None else w + torch.bmm(self.v.mT, self.u)
        return DenseLinear(self.module, w, self.bias, self.backend)

    def step(self, grad: tuple[Tensor, Tensor], lr_w, lr_b, clamp: float | None) -> LinearWeights:
        d, a = grad
        us, vs = [a], [d * -lr_w]
        binding = None if clamp is None else clamp_binding(d, a, clamp)
        if binding is not None:
            if self.rank + a.shape[1] + binding.rank > self.max_rank:
                return self.dense(d.shape[0]).step(grad, lr_w, lr_b, clamp)
            u_c, v_c = clamp_correction(d, a, clamp, lr_w, binding)
            us.append(u_c)
            vs.append(v_c)
        if self.u is not None:
            us.insert(0, self.u)
            vs.insert(0, self.v)
        u, v = (us[0], vs[0]) if len(us) == 1 else (torch.cat(us, 1), torch.cat(vs, 1))
        bias = _bias_step(self.bias, d, lr_b, clamp, self.ops_backend)
        return replace(self, u=u, v=v, bias=bias)

    def detached(self) -> LowRankLinear:
        out = super().detached()
        if self.u is None:
            return out
        return replace(out, u=self.u.detach(), v=self.v.detach())


class Binding(NamedTuple):
    """Where an inner-gradient clamp binds in ``G = D^T A``: per task the indices of the
    binding rows (``by_rows``) or columns, ``idx`` [T, r], padded with non-binding ones."""

    idx: Tensor
    by_rows: bool

    @property
    def rank(self) -> int:
        return self.idx.shape[1]


def _clamp_may_bind(d: Tensor, a: Tensor, clamp: float) -> Tensor:
    """Per task, whether ``clamp`` may bind anywhere in ``D^T A`` ([T] bool): a cheap upper
    bound on ``|D^T A|`` (the smaller of ``max_o sum_k |D| * max |A|`` and, by
    Cauchy-Schwarz, ``max_o ||D_o|| * max_i ||A_i||``) settles most tasks without forming
    ``D^T A``."""
    with torch.no_grad():
        bound1 = d.abs().sum(1).amax(1) * a.abs().amax(dim=(1, 2))
        # (vector_norm over a non-innermost dim is ~40x slower on CPU than this)
        bound2 = d.square().sum(1).amax(1).sqrt() * a.square().sum(1).amax(1).sqrt()
        return torch.minimum(bound1, bound2) > clamp


def clamp_binding(d: Tensor, a: Tensor, clamp: float) -> Binding | None:
    """Where ``clamp`` binds in the gradient ``D^T A`` (d [T, K, OUT], a [T, K, IN]): by
    rows or by columns, whichever needs fewer per task; None where it binds nowhere."""
    may_bind = _clamp_may_bind(d, a, clamp)
    if not bool(may_bind.any()):
        return None
    num_tasks, _, out_f = d.shape
    with torch.no_grad():
        # D^T A only for the tasks the bound did not settle
        tasks = may_bind.nonzero().squeeze(1)
        g_abs = torch.bmm(d[tasks].transpose(1, 2), a[tasks]).abs_()  # [T', OUT, IN]
        # (amax then compare: several times faster on CPU than compare then any)
        rows = d.new_zeros((num_tasks, out_f), dtype=torch.bool)
        cols = d.new_zeros((num_tasks, a.shape[-1]), dtype=torch.bool)
        rows[tasks] = g_abs.amax(2) > clamp
        cols[tasks] = g_abs.amax(1) > clamp
        n_rows, n_cols = int(rows.sum(1).amax()), int(cols.sum(1).amax())
        if min(n_rows, n_cols) == 0:
            return None
        by_rows = n_rows <= n_cols
        mask = rows if by_rows else cols
        # per task: the binding rows (columns) first, then non-binding ones as padding
        idx = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)
        return Binding(idx[:, : min(n_rows, n_cols)], by_rows)


def clamp_correction(d: Tensor, a: Tensor, clamp: float, lr, binding: Binding):
    """The clamp's excess ``-lr * E`` at ``binding`` as factors ``(u, v)`` ([T, r, IN],
    [T, r, OUT]): ``v^T u = lr * (G - clamp(G))`` with ``G = D^T A``."""
    num_tasks, k, _ = d.shape
    idx, r = binding.idx, binding.rank
    if binding.by_rows:
        d_sel = d.gather(2, idx.unsqueeze(1).expand(num_tasks, k, r))
        g = torch.bmm(d_sel.transpose(1, 2), a)  # [T, r, IN]: rows of D^T A
        return (g - g.clamp(-clamp, clamp)) * lr, nn.functional.one_hot(idx, d.shape[2]).to(g)
    a_sel = a.gather(2, idx.unsqueeze(1).expand(num_tasks, k, r))
    g = torch.bmm(a_sel.transpose(1, 2), d)  # [T, r, OUT]: columns of D^T A
    return nn.functional.one_hot(idx, a.shape[2]).to(g), (g - g.clamp(-clamp, clamp)) * lr


@dataclass(frozen=True, eq=False)
class _DenseWeights(_LayerWeights):
    """Per-task weight and bias (or None) stepped from their gradients by ``ops.clamped_sgd``."""

    def step(self, grad: tuple[Tensor, Tensor | None], lr_w, lr_b, clamp: float | None):
        params, grads, lrs = [self.weight], [grad[0]], [lr_w]
        if self.bias is not None:
            params.append(self.bias)
            grads.append(grad[1])
            lrs.append(lr_b)
        new = ops.clamped_sgd(params, grads, lrs, clamp, backend=self.ops_backend)
        return replace(self, weight=new[0], bias=new[1] if self.bias is not None else None)


@dataclass(frozen=True, eq=False)
class DenseConv(_DenseWeights):
    """weight [T, O, C, KH, KW], bias [T, O] or None."""

    def __call__(self, x: Tensor, gamma=None, beta=None, *, task_axis: bool = True) -> Tensor:
        _check_task_axis(task_axis)
        m = self.module
        return ops.film_conv2d(
            x, self.weight, self.bias, gamma, beta, m.stride, m.padding, m.activation,
            backend=self.ops_backend,
        )  # fmt: skip


@dataclass(frozen=True, eq=False)
class BatchNormAffine(_DenseWeights):
    """Batch norm's affine weight and bias [T, C]; statistics of each task's batch."""

    def __call__(self, x: Tensor, gamma=None, beta=None, *, task_axis: bool = True) -> Tensor:
        _check_task_axis(task_axis)
        m = self.module
        return ops.film_batch_norm(
            x, self.weight, self.bias, gamma, beta, m.eps, m.activation, backend=self.ops_backend
        )


def _check_task_axis(task_axis: bool) -> None:
    if task_axis is not True:
        raise ValueError("fast weights carry a task axis: call with task_axis=True")


Tape = dict  # layer name -> (input, output, gamma) of each recorded FiLMLinear layer


class _Taped:
    """A linear layer's fast weights that also record (input, output, gamma) in ``tape``:
    the ``A`` of its inner gradient ``D^T A`` and what ``D`` is computed from."""

    def __init__(self, name: str, weights: LinearWeights, tape: Tape) -> None:
        self.name, self.weights, self.tape = name, weights, tape

    def __call__(self, x: Tensor, gamma=None, beta=None, *, task_axis: bool = True) -> Tensor:
        if self.name in self.tape:
            # one (A, D) pair per step cannot represent weight sharing inside a forward
            raise RuntimeError(f"layer {self.name!r} was called twice in one recorded forward")
        y = self.weights(x, gamma, beta, task_axis=task_axis)
        self.tape[self.name] = (x, y, gamma)
        return y


@dataclass(frozen=True, eq=False)
class FastWeights:
    """Each parameterised layer's fast weights by the layer's module path (``"hidden.0"``)."""

    layers: dict[str, _LayerWeights]

    def bind(self, tape: Tape | None = None) -> dict[nn.Module, Callable]:
        """The ``fast=`` argument of a base network's forward: layer -> its fast weights.
        With ``tape``, linear layers record their input, output and gamma in it."""
        if tape is None:
            return {w.module: w for w in self.layers.values()}
        return {
            w.module: _Taped(name, w, tape) if isinstance(w, LinearWeights) else w
            for name, w in self.layers.items()
        }

    @property
    def params(self) -> dict[str, Tensor]:
        """Every parameter's tensor by name: per-task ``[T, ...]``, or shared (the ``W``
        of a low-rank layer, whose factors are not included; a bias before its first step)."""
        out = {}
        for name, w in self.layers.items():
            out[param_name(name, "weight")] = w.weight
            if w.bias is not None:
                out[param_name(name, "bias")] = w.bias
        return out

    @property
    def all_linear(self) -> bool:
        return all(isinstance(w, LinearWeights) for w in self.layers.values())

    def detached(self) -> FastWeights:
        """The same fast weights cut from every graph (evaluation without meta-gradient);
        weights require grad again so that further inner steps can differentiate."""
        return FastWeights({n: w.detached() for n, w in self.layers.items()})


def forward(base: nn.Module, fw: FastWeights, x: Tensor, film, tape: Tape | None = None) -> Tensor:
    """The base network with fast weights: x [T, N, ...] -> output [T, N, ...]."""
    return base(x, film, task_axis=True, fast=fw.bind(tape))


def param_name(layer: str, name: str) -> str:
    """A layer's parameter name (``"hidden.0"``, ``"weight"`` -> ``"hidden.0.weight"``)."""
    return f"{layer}.{name}" if layer else name


def lowrank_layers(base: nn.Module, rank: int, mode: str) -> set[str]:
    """The FiLMLinear layers (module paths) whose fast weights are kept low-rank. ``mode``:
    "dense" (none), "lowrank" (all), "auto" (those where the final rank is below both
    dimensions, i.e. where the factors are smaller than the dense per-task weight; the
    first and last layers of the regression MLP, with one input or output, stay dense)."""
    if mode == "dense":
        return set()
    return {
        name
        for name, m in base.named_modules()
        if isinstance(m, FiLMLinear)
        and (mode == "lowrank" or rank < min(m.in_features, m.out_features))
    }


# layer type -> (its dense fast-weight type, the dimension of its shared weight)
_TYPES = {
    FiLMLinear: (DenseLinear, 2),
    FiLMConv2d: (DenseConv, 4),
    FiLMBatchNorm: (BatchNormAffine, 1),
}


def init_fast_weights(
    base: nn.Module,
    params: dict[str, Tensor],
    num_tasks: int,
    lowrank: Collection[str] = (),
    *,
    detach: bool = False,
    backend: str | None = None,
) -> FastWeights:
    """Initial fast weights of ``base`` from ``params`` (every parameter by name), shared
    ([...]) or already per-task ([T, ...], e.g. Multi-MAML's gathered per-mode weights;
    those cannot be low-rank). ``lowrank``: the FiLMLinear layers kept low-rank.
    ``detach``: cut them from the meta-parameters (evaluation). ``backend``: the ops
    backend of every forward and step (None: each layer's own)."""
    layers, used = {}, set()
    for name, module in base.named_modules():
        names = [param_name(name, p) for p in ("weight", "bias")]
        weight, bias = (params.get(n) for n in names)
        if weight is None:
            continue
        used.update(n for n in names if n in params)
        if detach:
            weight = weight.detach().requires_grad_()
            bias = None if bias is None else bias.detach().requires_grad_()
        if type(module) not in _TYPES:
            raise TypeError(f"{name}: no fast-weight type for {type(module).__name__}")
        kind, shared_dim = _TYPES[type(module)]
        shared = weight.dim() == shared_dim
        if getattr(module, "track_running_stats", False):
            raise ValueError(f"{name}: fast weights use batch statistics, not running ones")
        if name in lowrank:
            if not shared or kind is not DenseLinear:
                raise ValueError(f"low-rank fast weights need a shared FiLMLinear weight: {name}")
            layers[name] = LowRankLinear(module, weight, bias, backend)
            continue
        if shared:
            weight = weight.expand(num_tasks, *weight.shape)
            bias = None if bias is None else bias.expand(num_tasks, *bias.shape)
        layers[name] = kind(module, weight, bias, backend)
    if used != set(params):
        raise ValueError(f"parameters of no FiLM layer: {sorted(set(params) - used)}")
    return FastWeights(layers)
