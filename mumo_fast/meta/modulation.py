"""Modulation heads: task embedding [T, E] -> one (gamma, beta) pair per modulated layer.

All three modulations are expressed as FiLM vectors applied to the pre-activation,
so the fused ops serve them all:

* ``"film"``: gamma = 1 + head[:C], beta = head[C:] (an untrained head is the identity).
* ``"sigmoid"``: the paper's gate on a neuron's output, ``h * sigmoid(head)``. For a
  ReLU layer ``relu(z) * s == relu(z * s)`` for s > 0, so this is gamma =
  sigmoid(head), beta = None.
* ``"softmax"``: attention over the outputs of a layer, ``h * C * softmax(head)`` over
  the C channels. The factor C (the channel count) makes uniform attention the
  identity instead of dividing every activation by C; as for sigmoid, gamma =
  C * softmax(head), beta = None (exact for ReLU layers, the positive gate commutes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

MODULATIONS = ("film", "sigmoid", "softmax")


class ModulationHeads(nn.Module):
    """One head per modulated layer: a one-hidden-layer MLP (``hidden`` units, ReLU)
    or, with ``hidden=None``, a single linear layer."""

    def __init__(
        self,
        embedding_size: int,
        channels: Sequence[int],
        modulation: str = "film",
        hidden: int | None = 128,
    ) -> None:
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        self.modulation = modulation
        self.channels = list(channels)
        width = 2 if modulation == "film" else 1
        heads = []
        for c in self.channels:
            if hidden is None:
                heads.append(nn.Linear(embedding_size, width * c))
            else:
                heads.append(
                    nn.Sequential(
                        nn.Linear(embedding_size, hidden), nn.ReLU(), nn.Linear(hidden, width * c)
                    )
                )
        self.heads = nn.ModuleList(heads)

    def forward(self, embedding: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """embedding [T, E] -> [(gamma [T, C], beta [T, C] or None)] per layer."""
        out = []
        for c, head in zip(self.channels, self.heads):
            h = head(embedding)
            if self.modulation == "film":
                out.append((1 + h[:, :c], h[:, c:]))
            elif self.modulation == "sigmoid":
                out.append((torch.sigmoid(h), None))
            else:
                out.append((c * torch.softmax(h, dim=-1), None))
        return out
