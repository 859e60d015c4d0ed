"""The Omniglot base network: MAML's 4-block CNN with FiLM after each batch norm."""

from __future__ import annotations

from torch import Tensor, nn

from ..nn import FiLMBatchNorm, FiLMConv2d, FiLMLinear
from ._film import FastArg, FiLMArg, check_film, layers_with


def _out_size(size: int, blocks: int) -> int:
    for _ in range(blocks):
        size = (size + 2 * 1 - 3) // 2 + 1
    return size


class Conv4(nn.Module):
    """Blocks of [3x3 conv, stride 2, padding 1 -> per-task batch norm (batch
    statistics) -> FiLM -> ReLU], then a linear layer to ``num_classes``.

    The convolutions have no bias (the batch norm that follows removes it; its
    gradient is exactly zero). ``forward(x, film=None, *, task_axis=False, fast=None)``: x
    [N, C, H, W] or [T, N, C, H, W]; returns logits [N, classes] / [T, N, classes];
    ``fast`` (see :mod:`mumo_fast.models`) replaces layers by per-task fast weights.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 5,
        channels: int = 64,
        num_blocks: int = 4,
        image_size: int = 28,
        bn_affine: bool = True,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = in_channels
        for _ in range(num_blocks):
            self.convs.append(
                FiLMConv2d(c, channels, 3, stride=2, padding=1, bias=False, backend=backend)
            )
            self.norms.append(
                FiLMBatchNorm(channels, affine=bn_affine, activation="relu", backend=backend)
            )
            c = channels
        self.image_size = image_size
        side = _out_size(image_size, num_blocks)
        self.head = FiLMLinear(channels * side * side, num_classes, backend=backend)
        self.film_channels: list[int] = [channels] * num_blocks

    def forward(
        self, x: Tensor, film: FiLMArg = None, *, task_axis: bool = False, fast: FastArg = None
    ) -> Tensor:
        pairs = check_film(film, self.film_channels)
        layer = layers_with(fast, task_axis)
        for conv, norm, (gamma, beta) in zip(self.convs, self.norms, pairs):
            x = layer(conv)(x, task_axis=task_axis)
            x = layer(norm)(x, gamma, beta, task_axis=task_axis)
        lead = 2 if task_axis else 1
        return layer(self.head)(x.flatten(lead), task_axis=task_axis)
