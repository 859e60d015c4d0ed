"""The batched inner loop: S steps of (clamped) SGD on every task of a meta-batch at once.

No loop over tasks: the support loss is the *sum* of the per-task mean losses, so
its gradient w.r.t. a per-task fast weight ``[T, ...]`` is each task's own gradient.

Inner gradients of FiLMLinear layers come from ``D = dL/dz`` (z: the layer's pre-FiLM
output) and the layer input ``A``: ``dL/dW = D^T A``, ``dL/db = sum_k D``. Two ways to
get the D's, both exact to any order:

* chain (written out): when the base network is a chain of FiLMLinear layers (each
  layer's input is the previous layer's output, the network output is the last
  layer's output, every parameter belongs to one of them, as in the regression MLP),
  ``D_l = (D_{l+1} W'_{l+1}) * act'(y_l) * gamma_l`` is computed with plain
  differentiable torch ops, with ``D W'`` in low-rank form (``D W + (D v^T) u``) where
  the layer is low-rank. Only the loss gradient w.r.t. the output uses autograd.
* generic: one ``autograd.grad`` call w.r.t. every dense parameter and every low-rank
  layer's output ``y``, then ``D = dL/dy * act'(y) * gamma``.

With an inner-gradient clamp the clamped gradient is no longer ``D^T A``, but
``clamp(G) = G - E`` where the excess ``E = G - clamp(G)`` is zero wherever the clamp
does not bind. Where it binds, it binds in a few rows (or columns) of a few tasks'
``G``, so ``E`` is added to the low-rank factors exactly as a few more rank-1 terms:
one per binding row ``o`` (``v = e_o``, ``u = lr * E[o, :]``), padded per task with
rows where it does not bind (whose excess is exactly zero), or the same by columns,
whichever adds less rank. Only when that would make the factors larger than a dense
weight does the layer switch to dense per-task weights ``W + v^T u``. Every form is
exact to any order: which entries bind is piecewise constant, as in ``clamp`` itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import ops
from ..models._film import FilmArg
from ..ops.backends.eager import activation_grad_from_output
from .fast_weights import FastWeights, forward, linear_layers, materialise

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output [T, N, ...], target) -> per-task loss [T]
LrFn = Callable[[str], "float | Tensor"]


def _clamp_may_bind(d: Tensor, a: Tensor, clamp: float) -> Tensor:
    """Per task, whether ``clamp`` may bind anywhere in the inner gradient ``D^T A`` of a
    low-rank layer ([T] bool): a cheap upper bound on ``|D^T A|`` (the smaller of
    ``max_o sum_k |D| * max |A|`` and, by Cauchy-Schwarz, ``max_o ||D_o|| * max_i ||A_i||``)
    settles most tasks without forming ``D^T A``."""
    with torch.no_grad():
        bound1 = d.abs().sum(1).amax(1) * a.abs().amax(dim=(1, 2))
        # (vector_norm over a non-innermost dim is ~40x slower on CPU than this)
        bound2 = d.square().sum(1).amax(1).sqrt() * a.square().sum(1).amax(1).sqrt()
        return torch.minimum(bound1, bound2) > clamp


# The clamp's correction is kept low-rank while the layer's total rank stays at most this
# fraction of O*I/(O+I) (where factors [T, r, O] + [T, r, I] match a dense [T, O, I] weight).
CLAMP_RANK_FRACTION = 1.0


def _clamp_correction(
    d: Tensor, a: Tensor, clamp: float, lr: float | Tensor, rank: int
) -> tuple[Tensor, Tensor] | None | bool:
    """The clamp's excess ``-lr * E`` (see the module docstring) as factors ``(u, v)``
    ([T, r, IN], [T, r, OUT]) to append to a low-rank layer's, ``None`` where the clamp
    binds nowhere, or ``False`` where the correction would need more rank than a dense
    weight is worth (``rank``: the layer's rank so far, this step's ``D^T A`` included)."""
    may_bind = _clamp_may_bind(d, a, clamp)
    if not bool(may_bind.any()):
        return None
    num_tasks, _, out_f = d.shape
    in_f = a.shape[-1]
    with torch.no_grad():
        # D^T A only for the tasks the bound did not settle
        tasks = may_bind.nonzero().squeeze(1)
        g_abs = torch.bmm(d[tasks].transpose(1, 2), a[tasks]).abs_()  # [T', OUT, IN]
        # (amax then compare: several times faster on CPU than compare then any)
        rows = d.new_zeros((num_tasks, out_f), dtype=torch.bool)
        cols = d.new_zeros((num_tasks, in_f), dtype=torch.bool)
        rows[tasks] = g_abs.amax(2) > clamp
        cols[tasks] = g_abs.amax(1) > clamp
        n_rows, n_cols = int(rows.sum(1).amax()), int(cols.sum(1).amax())
        extra = min(n_rows, n_cols)
        if extra == 0:
            return None
        if rank + extra > CLAMP_RANK_FRACTION * out_f * in_f / (out_f + in_f):
            return False
        by_rows = n_rows <= n_cols
        mask = rows if by_rows else cols
        # per task: the binding rows (columns) first, then non-binding ones as padding
        idx = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :extra]
    if by_rows:
        d_sel = d.gather(2, idx.unsqueeze(1).expand(num_tasks, d.shape[1], extra))
        g = torch.bmm(d_sel.transpose(1, 2), a)  # [T, extra, IN]: rows of D^T A
        u = (g - g.clamp(-clamp, clamp)) * lr
        v = torch.nn.functional.one_hot(idx, out_f).to(g.dtype)
    else:
        a_sel = a.gather(2, idx.unsqueeze(1).expand(num_tasks, a.shape[1], extra))
        g = torch.bmm(a_sel.transpose(1, 2), d)  # [T, extra, OUT]: columns of D^T A
        v = (g - g.clamp(-clamp, clamp)) * lr
        u = torch.nn.functional.one_hot(idx, in_f).to(g.dtype)
    return u, v


def _pre_film_grad(gy: Tensor, y: Tensor, gamma: Tensor | None, act: str) -> Tensor:
    """D = dL/dz from dL/dy for y = act(z * gamma + beta)."""
    if act == "relu":
        # relu's own backward: one differentiable op instead of compare, cast and multiply.
        # y only supplies the mask, whose derivative is 0: detaching it is exact and spares
        # the meta-backward a zeros_like and an accumulation per call.
        d = torch.ops.aten.threshold_backward(gy, y.detach(), 0)
    else:
        act_grad = activation_grad_from_output(y, act)
        d = gy if act_grad is None else gy * act_grad
    return d if gamma is None else d * gamma.unsqueeze(1)


# base network -> whether its FiLMLinear layers form a chain (see _chain); the
# structure of a network is static, so first-order steps can skip the forward's graph.
_IS_CHAIN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chain(fw: FastWeights, records: dict, out: Tensor, layers: dict) -> list | None:
    """The recorded FiLMLinear layers in order if they form the whole network as a chain."""
    chain = list(records)
    if not chain or records[chain[-1]][1] is not out:
        return None
    for prev, nxt in zip(chain[:-1], chain[1:]):
        if records[nxt][0] is not records[prev][1]:
            return None
    names = {n for m in chain for n in layers[m] if n is not None}
    return chain if names == set(fw.params) else None


def _times_weight_t(d: Tensor, fw: FastWeights, module: nn.Module, wname: str) -> Tensor:
    """d [T, N, OUT] @ W'_t [T, OUT, IN] -> [T, N, IN] (the backward of the layer to its input)."""
    w = fw.params[wname]
    if w.dim() == 3:
        return torch.bmm(d, w)
    g = torch.matmul(d, w)
    if module in fw.factors:
        u, v = fw.factors[module]
        g = torch.baddbmm(g, torch.bmm(d, v.transpose(1, 2)), u)
    return g


def _chain_pre_film_grads(
    fw: FastWeights, records: dict, chain: list, layers: dict, g_out: Tensor
) -> dict:
    ds = {}
    gy = g_out
    for i in range(len(chain) - 1, -1, -1):
        module = chain[i]
        _, y, gamma, act = records[module]
        d = _pre_film_grad(gy, y, gamma, act)
        ds[module] = d
        if i > 0:
            gy = _times_weight_t(d, fw, module, layers[module][0])
    return ds


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
    layers = linear_layers(base)
    # First order on a known chain: the support forward needs no graph at all (only the
    # loss gradient w.r.t. the output, taken from a detached copy).
    # (Not under torch.compile: the compiler prunes the unused graph itself, and a
    # guard on this mutable cache made Dynamo recompile every step.)
    compiling = torch.compiler.is_compiling()
    no_graph = not create_graph and not compiling and _IS_CHAIN.get(base, False)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not no_graph):
        out, records = forward(base, fw, x, film, record=True)
    chain = _chain(fw, records, out, layers)
    if not no_graph and not compiling:
        _IS_CHAIN[base] = chain is not None
    elif chain is None:  # the structure changed after all: redo the step with a graph
        _IS_CHAIN[base] = False
        return inner_step(base, fw, film, x, y, loss_fn, lr, clamp, create_graph)
    if chain is not None:
        if no_graph:
            out = out.detach().requires_grad_()
        output_grad = getattr(loss_fn, "output_grad", None)
        if output_grad is not None:
            g_out = output_grad(out, y)
        else:
            loss = loss_fn(out, y).sum()
            (g_out,) = torch.autograd.grad(loss, out, create_graph=create_graph)
        with torch.set_grad_enabled(create_graph):
            ds = _chain_pre_film_grads(fw, records, chain, layers, g_out)
        names, params, grads = [], [], []
        dense_layers = [m for m in chain if m not in fw.lowrank]
    else:
        loss = loss_fn(out, y).sum()
        lr_names = fw.lowrank_names()
        names = [n for n in fw.params if n not in lr_names]
        lr_layers = list(fw.lowrank)
        targets = [fw.params[n] for n in names] + [records[m][1] for m in lr_layers]
        all_grads = torch.autograd.grad(
            loss, targets, create_graph=create_graph, allow_unused=True, materialize_grads=True
        )
        params = [fw.params[n] for n in names]
        grads = list(all_grads[: len(names)])
        ds = {}
        for module, gy in zip(lr_layers, all_grads[len(names) :]):
            _, y_out, gamma, act = records[module]
            ds[module] = _pre_film_grad(gy, y_out, gamma, act)
        dense_layers = []
    new_params = dict(fw.params)
    new_lowrank = dict(fw.lowrank)
    new_factors = dict(fw.factors)

    def add_dense(module, d, a, weight):
        wname, bname = layers[module]
        new_params[wname], _ = ops.linear_sgd(weight, None, d, a, lr(wname), clamp)
        if bname is not None:
            b = fw.params[bname]
            names.append(bname)
            params.append(b.expand(num_tasks, *b.shape) if b.dim() == 1 else b)
            grads.append(d.sum(1))

    for module in dense_layers:
        d, a = ds[module], records[module][0]
        if not create_graph:
            d, a = d.detach(), a.detach()
        add_dense(module, d, a, fw.params[layers[module][0]])
    for module in fw.lowrank:
        d, a = ds[module], records[module][0]
        if not create_graph:
            d, a = d.detach(), a.detach()
        wname, bname = fw.lowrank[module]
        old = fw.factors.get(module)
        us, vs = ([old[0]], [old[1]]) if old is not None else ([], [])
        us.append(a)
        vs.append(d * -lr(wname))
        if clamp is not None:
            rank = sum(u.shape[1] for u in us)
            correction = _clamp_correction(d, a, clamp, lr(wname), rank)
            if correction is False:
                add_dense(module, d, a, materialise(fw, module, num_tasks))
                del new_lowrank[module]
                new_factors.pop(module, None)
                continue
            if correction is not None:
                us.append(correction[0])
                vs.append(correction[1])
        new_factors[module] = (torch.cat(us, 1), torch.cat(vs, 1)) if len(us) > 1 else (a, vs[0])
        if bname is not None:
            gb = d.sum(1)
            if clamp is not None:
                gb = gb.clamp(-clamp, clamp)
            new_params[bname] = fw.params[bname] - lr(bname) * gb
    if names:
        updated = ops.clamped_sgd(params, grads, [lr(n) for n in names], clamp)
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
