"""TaskBatch: a meta-batch of tasks, every tensor with a leading task axis T."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """support_x [T, K, ...], support_y [T, K, ...] (or [T, K] class labels),
    query_x [T, Q, ...], query_y [T, Q, ...]; modes [T] long (ground-truth mode per
    task) or None."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    modes: Tensor | None = None

    def __post_init__(self) -> None:
        names = ("support_x", "support_y", "query_x", "query_y")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() < 2:
                raise ValueError(f"{name} must have shape [T, N, ...], got {tuple(value.shape)}")
        t = self.support_x.shape[0]
        for name in names[1:]:
            if getattr(self, name).shape[0] != t:
                raise ValueError(
                    f"{name} must have the task count T={t} of support_x as its first axis, "
                    f"got shape {tuple(getattr(self, name).shape)}"
                )
        if self.support_y.shape[1] != self.support_x.shape[1]:
            raise ValueError(
                f"support_y must have as many examples as support_x ({self.support_x.shape[1]}), "
                f"got shape {tuple(self.support_y.shape)}"
            )
        if self.query_y.shape[1] != self.query_x.shape[1]:
            raise ValueError(
                f"query_y must have as many examples as query_x ({self.query_x.shape[1]}), "
                f"got shape {tuple(self.query_y.shape)}"
            )
        self.modes = check_modes(self.modes, t)

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks start..stop-1 (a view)."""
        return TaskBatch(
            self.support_x[start:stop],
            self.support_y[start:stop],
            self.query_x[start:stop],
            self.query_y[start:stop],
            None if self.modes is None else self.modes[start:stop],
        )

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            None if self.modes is None else self.modes.to(device),
        )


def check_modes(modes: object, t: int) -> Tensor | None:
    if modes is None:
        return None
    if not isinstance(modes, Tensor):
        raise TypeError(
            f"modes must be a torch.Tensor of dtype long or None, got {type(modes).__name__}"
        )
    if modes.dtype != torch.long or tuple(modes.shape) != (t,):
        raise ValueError(
            f"modes must be a long tensor of shape [{t}], got {modes.dtype} {tuple(modes.shape)}"
        )
    return modes
