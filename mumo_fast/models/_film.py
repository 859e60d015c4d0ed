"""The ``film=`` and ``fast=`` arguments shared by the base networks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

FiLMArg = Sequence[tuple[Tensor | None, Tensor | None]] | None
FastArg = Mapping[nn.Module, Callable[..., Tensor]] | None


def layers_with(fast: FastArg, task_axis: bool) -> Callable[[nn.Module], Callable[..., Tensor]]:
    """``layer -> what to call for it``: the layer itself, or its entry in ``fast`` (per-task
    fast weights called like the layer, which need ``task_axis=True``)."""
    if fast is None:
        return lambda module: module
    if task_axis is not True:
        raise ValueError("fast weights carry a task axis: pass task_axis=True with fast=")
    return lambda module: fast.get(module, module)


def check_film(film: FiLMArg, channels: list[int]) -> list[tuple[Tensor | None, Tensor | None]]:
    """One (gamma, beta) pair per modulated layer; None means no modulation anywhere."""
    if film is None:
        return [(None, None)] * len(channels)
    if not isinstance(film, (list, tuple)) or len(film) != len(channels):
        raise ValueError(
            f"film must be None or a sequence of {len(channels)} (gamma, beta) pairs "
            f"(one per modulated layer), got {type(film).__name__} of length "
            f"{len(film) if isinstance(film, (list, tuple)) else '?'}"
        )
    out = []
    for i, pair in enumerate(film):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"film[{i}] must be a (gamma, beta) pair")
        out.append((pair[0], pair[1]))
    return out
