"""Fast weights of a whole meta-batch: dense per-task tensors and exact low-rank factors.

A :class:`FastWeights` holds, for a base network built from the ``mumo_fast.nn``
layers,

* ``params``: every base parameter by name, either shared (no task axis: not yet
  adapted, or the shared ``W`` of a low-rank layer) or per-task ``[T, ...]``;
* ``factors``: for each low-rank :class:`~mumo_fast.nn.FiLMLinear` layer, ``(u, v)``
  with ``W_t = W + v[t]^T u[t]`` (README, "Ops reference": ``film_linear_lowrank``): ``u = cat_j A_j`` (the layer's
  support inputs at inner step j) and ``v = cat_j (-lr * D_j)`` (the gradients of
  the support loss w.r.t. its pre-FiLM output), rank ``steps * K``, plus a few
  rank-1 terms per step where an inner-gradient clamp binds (``inner_loop``); the bias
  is kept per-task, ``b - lr * sum_j clamp(sum_k D_j[k])``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..models._film import FilmArg
from ..nn import FiLMLinear, LowRankScope, lowrank_scope


@dataclass
class FastWeights:
    params: dict[str, Tensor]
    lowrank: dict[nn.Module, tuple[str, str | None]] = field(default_factory=dict)
    factors: dict[nn.Module, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def lowrank_names(self) -> set[str]:
        return {n for w, b in self.lowrank.values() for n in (w, b) if n is not None}


_LINEAR_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def linear_layers(base: nn.Module) -> dict[nn.Module, tuple[str, str | None]]:
    """Every FiLMLinear layer of ``base`` with its (weight, bias) parameter names
    (cached per module; the structure of a base network does not change)."""
    # (torch.compile traces the scan instead: guards on the cache's changing contents
    # broke Dynamo's guard building when a second network was compiled.)
    compiling = torch.compiler.is_compiling()
    cached = None if compiling else _LINEAR_CACHE.get(base)
    if cached is None:
        cached = {}
        for name, module in base.named_modules():
            if isinstance(module, FiLMLinear):
                prefix = f"{name}." if name else ""
                cached[module] = (
                    prefix + "weight",
                    prefix + "bias" if module.bias is not None else None,
                )
        if not compiling:
            _LINEAR_CACHE[base] = cached
    return dict(cached)


def lowrank_layers(
    base: nn.Module, rank: int, mode: str
) -> dict[nn.Module, tuple[str, str | None]]:
    """The FiLMLinear layers whose fast weights are kept low-rank, with their
    parameter names. ``mode``: "dense" (none), "lowrank" (all), "auto" (those where
    the final rank is below both dimensions, i.e. where the factors are smaller than
    the dense per-task weight; the first and last layers of the regression MLP, with
    one input or output, stay dense)."""
    if mode == "dense":
        return {}
    return {
        module: names
        for module, names in linear_layers(base).items()
        if mode == "lowrank" or rank < min(module.in_features, module.out_features)
    }


def init_fast_weights(
    base: nn.Module,
    params: dict[str, Tensor],
    num_tasks: int,
    lowrank: dict[nn.Module, tuple[str, str | None]],
    *,
    detach: bool = False,
) -> FastWeights:
    """Initial fast weights. ``params`` are shared ([...]) or already per-task
    ([T, ...], e.g. Multi-MAML's gathered per-mode weights; those cannot be low-rank).
    Shared dense parameters are expanded to [T, ...] (a view: the meta-gradient sums
    over tasks). ``detach``: cut them from the meta-parameters (evaluation)."""
    shapes = dict(base.named_parameters())
    lr_names = {n for w, b in lowrank.values() for n in (w, b) if n is not None}
    out = {}
    for name, p in params.items():
        if detach:
            p = p.detach().requires_grad_()
        shared = p.dim() == shapes[name].dim()
        if name in lr_names:
            if not shared:
                raise ValueError(
                    f"low-rank fast weights need a shared initial weight; {name} is per-task"
                )
            out[name] = p
        else:
            out[name] = p.expand(num_tasks, *p.shape) if shared else p
    return FastWeights(out, dict(lowrank), {})


def forward(
    base: nn.Module, fw: FastWeights, x: Tensor, film: FilmArg, *, record: bool = False
) -> tuple[Tensor, dict]:
    """Run the base network with the fast weights: x [T, N, ...] -> output [T, N, ...].
    With ``record``, also returns each FiLMLinear layer's (input, output, gamma, act),
    in call order."""
    scope = LowRankScope(
        factors=fw.factors, record=frozenset(linear_layers(base)) if record else frozenset()
    )
    with lowrank_scope(scope):
        out = functional_call(base, fw.params, (x,), {"film": film, "task_axis": True})
    return out, scope.records


def materialise(fw: FastWeights, module: nn.Module, num_tasks: int) -> Tensor:
    """The dense per-task weight [T, OUT, IN] of a low-rank layer: W + v^T u."""
    wname, _ = fw.lowrank[module]
    w = fw.params[wname]
    if module not in fw.factors:
        return w.expand(num_tasks, *w.shape)
    u, v = fw.factors[module]
    return w + torch.bmm(v.transpose(1, 2), u)
