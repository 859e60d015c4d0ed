"""Mean and 95% confidence interval of per-task losses, and chunked loss-vs-steps evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% CI over tasks (values [n])."""
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no values")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def per_step_losses(
    evaluate: Callable[[int, int, int], Tensor], num_tasks: int, steps: int, chunk: int = 500
) -> Tensor:
    """Concatenate `evaluate(start, stop, steps)` -> [steps+1, stop-start] over task chunks."""
    parts = [
        evaluate(start, min(start + chunk, num_tasks), steps).detach().cpu()
        for start in range(0, num_tasks, chunk)
    ]
    return torch.cat(parts, dim=1)


def _median(row: Tensor) -> float:
    """Median over tasks; a non-finite task (a diverged inner loop) counts as the worst."""
    if not row.numel():
        return float("nan")
    v = row.double().nan_to_num(nan=float("inf"), posinf=float("inf")).sort().values
    n = v.numel()
    # (the mean of the two middle values, as quantile(0.5))
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def summarize(per_step: Tensor, adapt_steps: int) -> dict:
    """Post-modulation (step 0) and post-adaptation (step `adapt_steps`) mean and CI, and the curve."""
    pm, pm_ci = mean_ci95(per_step[0])
    pa, pa_ci = mean_ci95(per_step[adapt_steps])
    curve = [mean_ci95(row) for row in per_step]
    # (medians too: per-task errors are heavy-tailed, and a rare diverging inner loop
    # can dominate a mean)
    return {
        "num_tasks": per_step.shape[1],
        "adapt_steps": adapt_steps,
        "post_modulation": {"mean": pm, "ci95": pm_ci, "median": _median(per_step[0])},
        "post_adaptation": {"mean": pa, "ci95": pa_ci, "median": _median(per_step[adapt_steps])},
        "per_step": {"mean": [m for m, _ in curve], "ci95": [c for _, c in curve]},
    }
