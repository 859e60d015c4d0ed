"""Test-set MSE of a trained learner: post-modulation, post-adaptation, and MSE vs steps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...train import per_step_losses, summarize
from .data import to_task_batch
from .tasks import RegressionTasks


def per_step_mse(learner, tasks: RegressionTasks, steps: int, chunk: int = 500) -> torch.Tensor:
    """Query MSE of every test task after 0..steps inner steps: [steps+1, num_tasks] on CPU."""
    device = next(learner.parameters()).device
    tasks = tasks.to(device)

    def run(start: int, stop: int, n: int) -> torch.Tensor:
        return learner.evaluate(to_task_batch(tasks.select(slice(start, stop))), n)["per_step"]

    return per_step_losses(run, len(tasks), steps, chunk)


def evaluate_learner(
    learner,
    tasks: RegressionTasks,
    mode_names: Sequence[str],
    adapt_steps: int,
    max_steps: int = 10,
    chunk: int = 500,
) -> dict:
    """Summary over all test tasks and per mode (mean and 95% CI)."""
    losses = per_step_mse(learner, tasks, max(max_steps, adapt_steps), chunk)
    out = summarize(losses, adapt_steps)
    modes = tasks.modes.cpu()
    out["per_mode"] = {
        name: summarize(losses[:, modes == m], adapt_steps) for m, name in enumerate(mode_names)
    }
    return out
