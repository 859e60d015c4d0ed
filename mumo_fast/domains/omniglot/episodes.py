"""N-way K-shot episodes as index gathers from one image tensor on the training device.

Every character gives four classes, its rotations by 0, 90, 180 and 270 degrees
(class ``4 * c + r``). An episode picks N distinct classes and, per class, K support and
Q query drawers out of 20 (distinct); the labels 0..N-1 follow the order in which the
classes were drawn, so they are a random assignment. A meta-batch of T episodes is
drawn with three random tensors and one gather: no Python work per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...meta import TaskBatch
from .data import DRAWERS, Omniglot

ROTATIONS = 4
QUERIES_PER_CLASS = 15
TEST_EPISODES = 600
TEST_SEED = 20_190_101  # the fixed test episodes of every run and method


@dataclass
class Episodes:
    """Which images make up T episodes: ``classes`` [T, N] long, ``drawers`` [T, N, K + Q]."""

    classes: Tensor
    drawers: Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]

    def select(self, idx) -> Episodes:
        return Episodes(self.classes[idx], self.drawers[idx])

    def to(self, device) -> Episodes:
        return Episodes(self.classes.to(device), self.drawers.to(device))


class EpisodeSampler:
    """Episodes of ``ways`` classes, ``shots`` support and ``queries`` query images each,
    from the characters of ``data`` (one split) in four rotations, on ``device``."""

    def __init__(
        self,
        data: Omniglot,
        ways: int,
        shots: int,
        queries: int = QUERIES_PER_CLASS,
        device: torch.device | str = "cpu",
    ) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if shots + queries > DRAWERS:
            raise ValueError(
                f"shots + queries must be at most {DRAWERS} (drawers per character), "
                f"got {shots} + {queries}"
            )
        imgs = data.images
        rotated = torch.stack([torch.rot90(imgs, r, dims=(-2, -1)) for r in range(ROTATIONS)], 1)
        self.images = rotated.flatten(0, 1).contiguous().to(device)  # [C * 4, 20, 28, 28] uint8
        self.num_classes = self.images.shape[0]
        if ways > self.num_classes:
            raise ValueError(f"ways={ways} exceeds the {self.num_classes} classes available")
        self.ways, self.shots, self.queries = ways, shots, queries
        names = sorted(set(data.alphabets))
        self.alphabet_names = names
        per_char = torch.tensor([names.index(a) for a in data.alphabets])
        self.class_alphabet = per_char.repeat_interleave(ROTATIONS).to(device)  # [C * 4]
        self.class_character = data.ids.repeat_interleave(ROTATIONS).to(device)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def draw(self, num_tasks: int, generator: torch.Generator, pool: Tensor | None = None):
        """Random episodes; ``pool`` [T, P] restricts task t's classes to ``pool[t]``."""
        dev = generator.device
        if pool is None:
            keys = torch.rand(num_tasks, self.num_classes, generator=generator, device=dev)
            classes = keys.topk(self.ways, dim=1).indices
        else:
            keys = torch.rand(pool.shape, generator=generator, device=dev)
            classes = pool.gather(1, keys.topk(self.ways, dim=1).indices)
        keys = torch.rand(num_tasks, self.ways, DRAWERS, generator=generator, device=dev)
        drawers = keys.topk(self.shots + self.queries, dim=-1).indices
        return Episodes(classes.to(self.device), drawers.to(self.device))

    def batch(self, episodes: Episodes) -> TaskBatch:
        """Images as floats in [0, 1] (ink 1), ``[T, N*K, 1, 28, 28]`` support and
        ``[T, N*Q, 1, 28, 28]`` query, class-major; labels [T, N*K] and [T, N*Q] long."""
        t, n, k = len(episodes), self.ways, self.shots
        x = self.images[episodes.classes[..., None], episodes.drawers]  # [T, N, K+Q, 28, 28]
        x = x.unsqueeze(3).float().div_(255)
        side = x.shape[-2:]
        labels = torch.arange(n, device=x.device)
        return TaskBatch(
            x[:, :, :k].reshape(t, n * k, 1, *side),
            labels.repeat_interleave(k).expand(t, -1),
            x[:, :, k:].reshape(t, n * self.queries, 1, *side),
            labels.repeat_interleave(self.queries).expand(t, -1),
        )

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self.batch(self.draw(num_tasks, generator))

    def fixed(self, count: int = TEST_EPISODES, seed: int = TEST_SEED) -> Episodes:
        """A seeded set of episodes, the same for every run (drawn on the CPU)."""
        return self.draw(count, torch.Generator().manual_seed(seed))

    def alphabet_episodes(
        self, per_alphabet: int, seed: int = TEST_SEED
    ) -> tuple[Episodes, Tensor]:
        """``per_alphabet`` episodes whose classes all come from one alphabet, for every
        alphabet with at least ``ways`` classes; and the alphabet index of each episode."""
        gen = torch.Generator().manual_seed(seed)
        parts, owners = [], []
        cls_alpha = self.class_alphabet.cpu()
        for a in range(len(self.alphabet_names)):
            members = (cls_alpha == a).nonzero().flatten()
            if members.numel() < self.ways:
                continue
            pool = members.expand(per_alphabet, -1)
            parts.append(self.draw(per_alphabet, gen, pool))
            owners.append(torch.full((per_alphabet,), a))
        if not parts:
            raise ValueError(f"no alphabet has {self.ways} classes")
        eps = Episodes(torch.cat([p.classes for p in parts]), torch.cat([p.drawers for p in parts]))
        return eps, torch.cat(owners)
