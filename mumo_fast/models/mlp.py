"""The regression base network: MLP with FiLM on every hidden layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import FiLMLinear
from ._film import FastArg, FiLMArg, check_film, layers_with


class MLP(nn.Module):
    """``in -> hidden... -> out`` with ReLU and FiLM on every hidden layer (paper: 1-100-100-100-1).

    ``forward(x, film=None, *, task_axis=False)``: x [N, in] or [T, N, in] with
    task_axis; ``film`` is one ``(gamma, beta)`` pair (either may be None) per
    modulated layer, sizes :attr:`film_channels`; ``fast`` (see :mod:`mumo_fast.models`)
    replaces layers by per-task fast weights.
    """

    def __init__(
        self,
        in_features: int = 1,
        out_features: int = 1,
        hidden_sizes: Sequence[int] = (100, 100, 100),
        activation: str = "relu",
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden_sizes]
        self.hidden = nn.ModuleList(
            FiLMLinear(i, o, activation=activation, backend=backend)
            for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.out = FiLMLinear(sizes[-1], out_features, backend=backend)
        self.film_channels: list[int] = list(hidden_sizes)

    def forward(
        self, x: Tensor, film: FiLMArg = None, *, task_axis: bool = False, fast: FastArg = None
    ) -> Tensor:
        pairs = check_film(film, self.film_channels)
        layer = layers_with(fast, task_axis)
        for hidden, (gamma, beta) in zip(self.hidden, pairs):
            x = layer(hidden)(x, gamma, beta, task_axis=task_axis)
        return layer(self.out)(x, task_axis=task_axis)
