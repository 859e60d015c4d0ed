"""The batched inner loop: S steps of (clamped) SGD on every task of a meta-batch at once.

No loop over tasks: the support loss is the *sum* of the per-task mean losses, so
its gradient w.r.t. a per-task fast weight ``[T, ...]`` is each task's own gradient.

One step: the support forward with the fast weights (``fast_weights``), recording each
FiLMLinear layer's input ``A`` and output ``y``; each layer's gradient; one exact SGD
step per layer (its fast-weight type's ``step``). A linear layer's gradient is the pair
``(D, A)``, ``D = dL/dz`` (z: the layer's pre-FiLM output), which its step uses as
``dL/dW = D^T A``, ``dL/db = sum_k D`` (in low-rank form where the layer is low-rank).
Two ways to get the D's, both exact to any order:

* chain (written out): when the base network is a chain of FiLMLinear layers (each
  layer's input is the previous layer's output, the network output is the last
  layer's output, every layer with fast weights is one of them, as in the MLP),
  ``D_l = (D_{l+1} W'_{l+1}) * act'(y_l) * gamma_l`` with plain differentiable torch ops
  (``D W'`` in low-rank form where the layer is low-rank). Only the loss gradient w.r.t.
  the output may use autograd (none where the loss gives ``output_grad``).
* generic: one ``autograd.grad`` call w.r.t. every linear layer's output ``y`` and the
  weights of every other layer (conv, batch norm), then ``D = dL/dy * act'(y) * gamma``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..ops.activations import activation_grad_from_output
from .fast_weights import FastWeights, LinearWeights, Tape, forward, param_name

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output [T, N, ...], target) -> per-task loss [T]
LrFn = Callable[[str], "float | Tensor"]


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


def _chain(fw: FastWeights, tape: Tape, out: Tensor) -> list[str] | None:
    """The recorded layers in call order if they form the whole network as a chain."""
    names = list(tape)
    if not names or len(names) != len(fw.layers) or tape[names[-1]][1] is not out:
        return None
    if any(tape[nxt][0] is not tape[prev][1] for prev, nxt in zip(names, names[1:])):
        return None
    return names


def _chain_grads(fw, tape, chain, out, y, loss_fn, create_graph) -> dict[str, tuple]:
    """Every layer's (D, A), written out backwards along the chain."""
    output_grad = getattr(loss_fn, "output_grad", None)
    if output_grad is not None:
        gy = output_grad(out, y)
    else:
        out = out if out.requires_grad else out.detach().requires_grad_()
        (gy,) = torch.autograd.grad(loss_fn(out, y).sum(), out, create_graph=create_graph)
    grads = {}
    with torch.set_grad_enabled(create_graph):
        for i in range(len(chain) - 1, -1, -1):
            w = fw.layers[chain[i]]
            a, y_l, gamma = tape[chain[i]]
            d = _pre_film_grad(gy, y_l, gamma, w.module.activation)
            grads[chain[i]] = (d, a)
            if i > 0:
                gy = w.input_grad(d)
    return grads


def _autograd_grads(fw, tape, out, y, loss_fn, create_graph) -> dict[str, tuple]:
    """Every layer's gradient from one autograd.grad call: (D, A) for a linear layer,
    (dL/dW, dL/db) for any other."""
    targets = {}
    for name, w in fw.layers.items():
        if isinstance(w, LinearWeights):
            targets[name] = [tape[name][1]]
        else:
            targets[name] = [w.weight] if w.bias is None else [w.weight, w.bias]
    flat = [t for ts in targets.values() for t in ts]
    got = iter(
        torch.autograd.grad(
            loss_fn(out, y).sum(), flat, create_graph=create_graph, allow_unused=True,
            materialize_grads=True,
        )
    )  # fmt: skip
    grads = {}
    for name, w in fw.layers.items():
        g = [next(got) for _ in targets[name]]
        if isinstance(w, LinearWeights):
            a, y_l, gamma = tape[name]
            grads[name] = (_pre_film_grad(g[0], y_l, gamma, w.module.activation), a)
        else:
            grads[name] = (g[0], g[1] if len(g) > 1 else None)
    return grads


def inner_step(
    base: nn.Module,
    fw: FastWeights,
    film,
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
    # First order on linear layers only: if they form a chain, the forward needs no graph.
    # (Not under torch.compile, which prunes the unused graph itself.)
    no_graph = not create_graph and fw.all_linear and not torch.compiler.is_compiling()
    tape: Tape = {}
    with torch.set_grad_enabled(torch.is_grad_enabled() and not no_graph):
        out = forward(base, fw, x, film, tape)
    chain = _chain(fw, tape, out)
    if chain is None and no_graph:  # not a chain: autograd needs the forward's graph
        tape = {}
        out = forward(base, fw, x, film, tape)
    if chain is not None:
        grads = _chain_grads(fw, tape, chain, out, y, loss_fn, create_graph)
    else:
        grads = _autograd_grads(fw, tape, out, y, loss_fn, create_graph)
    new = {}
    for name, w in fw.layers.items():
        g = grads[name]
        if not create_graph:
            g = tuple(None if t is None else t.detach() for t in g)
        lr_b = None if w.bias is None else lr(param_name(name, "bias"))
        new[name] = w.step(g, lr(param_name(name, "weight")), lr_b, clamp)
    return FastWeights(new)


def adapt(
    base: nn.Module,
    fw: FastWeights,
    film,
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
