"""Regression tasks as the meta-learner's TaskBatch, and the training sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...meta import TaskBatch
from .tasks import DEFAULT_TASK_FAMILY, RegressionTasks, sample_tasks


def to_task_batch(tasks: RegressionTasks) -> TaskBatch:
    return TaskBatch(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y, tasks.modes)


def make_sampler(
    num_modes: int,
    tasks_per_mode: int,
    k_support: int = 5,
    l_query: int = 10,
    family: str = DEFAULT_TASK_FAMILY,
) -> Callable[[torch.Generator], TaskBatch]:
    """A function drawing one balanced meta-batch from a generator (on the generator's device)."""

    def sample(gen: torch.Generator) -> TaskBatch:
        tasks = sample_tasks(num_modes, tasks_per_mode, gen, k_support, l_query, family=family)
        return to_task_batch(tasks)

    return sample
