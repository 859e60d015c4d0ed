"""Low-rank fast-weight scope for :class:`~mumo_fast.nn.FiLMLinear`.

The batched inner loop (``mumo_fast.meta``) keeps a linear layer's per-task fast
weights in the exact low-rank form of ``ops.film_linear_lowrank``, ``W_t = W + v[t]^T u[t]``,
with the shared ``W`` passed through ``torch.func.functional_call`` as usual and the
factors passed here. Inside :func:`lowrank_scope`, a FiLMLinear called with a task
axis

* uses ``film_linear_lowrank(x, W, u, v, ...)`` when the scope holds factors for it;
* records ``(x, y, gamma, activation)`` when the scope records it: ``x`` is the
  layer's input (the ``A`` of the inner gradient ``D^T A``) and ``y`` its output, from
  which the inner loop gets ``D = dL/dz = dL/dy * act'(y) * gamma``.

A layer may be called at most once per recorded forward (weight sharing inside one
forward is not representable by one ``(A, D)`` pair per step).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

_local = threading.local()


@dataclass
class LowRankScope:
    """factors: layer -> (u [T, R, IN], v [T, R, OUT]); record: layers whose
    (input, output, gamma, activation) are stored in ``records``."""

    factors: dict[nn.Module, tuple[Tensor, Tensor]] = field(default_factory=dict)
    record: frozenset[nn.Module] = frozenset()
    records: dict[nn.Module, tuple[Tensor, Tensor, Tensor | None, str]] = field(
        default_factory=dict
    )


def current_scope() -> LowRankScope | None:
    return getattr(_local, "scope", None)


@contextmanager
def lowrank_scope(scope: LowRankScope) -> Iterator[LowRankScope]:
    """Make ``scope`` the active low-rank scope for this thread (nesting restores)."""
    previous = current_scope()
    _local.scope = scope
    try:
        yield scope
    finally:
        _local.scope = previous
