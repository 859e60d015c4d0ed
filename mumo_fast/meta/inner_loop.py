"""The batched inner loop: S steps of (clamped) SGD on every task of a meta-batch at once.

No loop over tasks: the support loss is the *sum* of the per-task mean losses, so
its gradient w.r.t. a per-task fast weight ``[T, ...]`` is each task's own gradient.

Low-rank layers (see :mod:`mumo_fast.meta.fast_weights`) get their inner gradient
``D^T A`` from one ``autograd.grad`` call w.r.t. the layer outputs ``y``:
``D = dL/dz = dL/dy * act'(y) * gamma``. With an inner-gradient clamp the clamped
gradient is no longer ``D^T A``; the step checks (exactly, in no-grad) whether the
clamp binds anywhere in the layer, and if it does, that layer switches to dense
per-task weights ``W + v^T u`` from then on. Either way the result is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import ops
from ..models._film import FilmArg
from ..ops.backends.eager import activation_grad_from_output
from .fast_weights import FastWeights, forward, materialise

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output [T, N, ...], target) -> per-task loss [T]
LrFn = Callable[[str], "float | Tensor"]


def _clamp_binds(d: Tensor, a: Tensor, clamp: float, has_bias: bool) -> bool:
    with torch.no_grad():
        if torch.bmm(d.transpose(1, 2), a).abs().amax() >= clamp:
            return True
        return bool(has_bias and d.sum(1).abs().amax() >= clamp)


def inner_step(
    base: nn.Module,
    fw: FastWeights,
    film: FilmArg,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    lr: LrFn,
    clamp: float | None = None,
    create_graph: bool = True,
) -> FastWeights:
    """One inner SGD step on the support set (x [T, K, ...], y [T, K, ...]).

    ``lr(name)`` gives the inner learning rate of a base parameter (a float or a
    learnable scalar tensor). ``create_graph=False`` is first-order MAML: the inner
    gradients (and low-rank factors) are constants of the meta-gradient.
    """
    num_tasks = x.shape[0]
    out, records = forward(base, fw, x, film, record=bool(fw.lowrank))
    loss = loss_fn(out, y).sum()
    lr_names = fw.lowrank_names()
    dense_names = [n for n in fw.params if n not in lr_names]
    layers = list(fw.lowrank)
    targets = [fw.params[n] for n in dense_names] + [records[m][1] for m in layers]
    grads = torch.autograd.grad(
        loss, targets, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    new_params = dict(fw.params)
    new_lowrank = dict(fw.lowrank)
    new_factors = dict(fw.factors)
    names = list(dense_names)
    params = [fw.params[n] for n in dense_names]
    dense_grads = list(grads[: len(dense_names)])
    for module, gy in zip(layers, grads[len(dense_names) :]):
        x_in, y_out, gamma, act = records[module]
        act_grad = activation_grad_from_output(y_out, act)
        d = gy if act_grad is None else gy * act_grad
        if gamma is not None:
            d = d * gamma.unsqueeze(1)
        a = x_in
        if not create_graph:
            d, a = d.detach(), a.detach()
        wname, bname = fw.lowrank[module]
        if clamp is not None and _clamp_binds(d, a, clamp, bname is not None):
            names.append(wname)
            params.append(materialise(fw, module, num_tasks))
            dense_grads.append(torch.bmm(d.transpose(1, 2), a))
            if bname is not None:
                b = fw.params[bname]
                names.append(bname)
                params.append(b.expand(num_tasks, *b.shape) if b.dim() == 1 else b)
                dense_grads.append(d.sum(1))
            del new_lowrank[module]
            new_factors.pop(module, None)
            continue
        vd = d * -lr(wname)
        if module in fw.factors:
            u, v = fw.factors[module]
            new_factors[module] = (torch.cat([u, a], 1), torch.cat([v, vd], 1))
        else:
            new_factors[module] = (a, vd)
        if bname is not None:
            new_params[bname] = fw.params[bname] - lr(bname) * d.sum(1)
    if names:
        updated = ops.clamped_sgd(params, dense_grads, [lr(n) for n in names], clamp)
        new_params.update(zip(names, updated))
    return FastWeights(new_params, new_lowrank, new_factors)


def adapt(
    base: nn.Module,
    fw: FastWeights,
    film: FilmArg,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: LrFn,
    clamp: float | None = None,
    first_order: bool = False,
) -> FastWeights:
    """``steps`` inner steps; second order (the graph is kept) unless ``first_order``."""
    for _ in range(steps):
        fw = inner_step(base, fw, film, x, y, loss_fn, lr, clamp, create_graph=not first_order)
    return fw


def detached(fw: FastWeights) -> FastWeights:
    """The same fast weights cut from every graph (evaluation without meta-gradient);
    parameters require grad again so that further inner steps can differentiate."""
    return FastWeights(
        {n: p.detach().requires_grad_() for n, p in fw.params.items()},
        dict(fw.lowrank),
        {m: (u.detach(), v.detach()) for m, (u, v) in fw.factors.items()},
    )
