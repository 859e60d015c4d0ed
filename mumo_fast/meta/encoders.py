"""Task encoders: support set -> task embedding [T, E], batched over tasks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SequenceEncoder(nn.Module):
    """Bidirectional GRU (or LSTM) over the sequence of support pairs (x, y).

    x [T, K, X], y [T, K, Y] -> [T, 2 * hidden]: the last layer's forward state
    after the last pair concatenated with its backward state after the first pair.
    """

    def __init__(
        self, input_size: int, hidden_size: int = 40, num_layers: int = 1, cell: str = "gru"
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.embedding_size = 2 * hidden_size

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        seq = torch.cat([x.flatten(2), y.flatten(2).to(x.dtype)], dim=-1)
        _, h = self.rnn(seq)
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        # h_n: [num_layers * 2, T, H]; the last two rows are the last layer's directions.
        return torch.cat([h[-2], h[-1]], dim=-1)


class ImageEncoder(nn.Module):
    """Per support image a small conv feature extractor (blocks of 3x3 conv stride 2
    + ReLU, then a linear layer), concatenated with the one-hot label and projected;
    aggregated over the support set by the mean ("mean", the authors' code) or a
    bidirectional GRU ("gru", the paper's description).

    x [T, K, C, H, W], labels [T, K] long -> [T, embedding_size].
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden_size: int = 40,
        channels: int = 32,
        num_blocks: int = 4,
        aggregator: str = "mean",
    ) -> None:
        super().__init__()
        if aggregator not in ("mean", "gru"):
            raise ValueError(f"aggregator must be 'mean' or 'gru', got {aggregator!r}")
        layers: list[nn.Module] = []
        c, side = in_channels, image_size
        for _ in range(num_blocks):
            layers += [nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU()]
            c, side = channels, (side - 1) // 2 + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.num_classes = num_classes
        self.aggregator = aggregator
        self.embedding_size = 2 * hidden_size
        feat = channels * side * side + num_classes
        if aggregator == "mean":
            self.project = nn.Sequential(nn.Linear(feat, self.embedding_size), nn.ReLU())
        else:
            self.rnn = nn.GRU(feat, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        t, k = x.shape[:2]
        f = self.features(x.reshape(t * k, *x.shape[2:])).reshape(t, k, -1)
        onehot = F.one_hot(labels.long(), self.num_classes).to(f.dtype)
        f = torch.cat([f, onehot], dim=-1)
        if self.aggregator == "mean":
            return self.project(f).mean(dim=1)
        _, h = self.rnn(f)
        return torch.cat([h[-2], h[-1]], dim=-1)
