"""Regression figures: predicted functions (paper Fig. 2), MSE vs steps (Fig. 3a), t-SNE (Fig. 4a).

Uses matplotlib's object API (`Figure`, Agg canvas) so no global backend state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from ..plots import COLORS, plot_tsne, step_curves_axes
from .tasks import X_RANGE, RegressionTasks, true_function

__all__ = ["plot_functions", "plot_steps", "plot_tsne"]


def _grid(n_tasks: int, points: int = 200) -> torch.Tensor:
    return torch.linspace(*X_RANGE, points).view(1, -1, 1).expand(n_tasks, -1, -1).contiguous()


def plot_functions(
    models: Sequence[tuple[str, object]],
    tasks: RegressionTasks,
    mode_names: Sequence[str],
    adapt_steps: int,
    path: str | os.PathLike,
) -> None:
    """One row per task (one task per mode): truth, support points, and each model's
    prediction after modulation (left) and after `adapt_steps` inner steps (right)."""
    tasks = tasks.to("cpu")
    n = len(tasks)
    x = _grid(n)
    truth = true_function(tasks.mode_ids, tasks.params, x)
    preds = {}
    for label, model in models:
        device = next(model.parameters()).device
        t = tasks.to(device)
        for steps in (0, adapt_steps):
            p = model.predict(t.support_x, t.support_y, x.to(device), steps=steps, modes=t.modes)
            preds[label, steps] = p.detach().cpu()
    fig = Figure(figsize=(10, 2.8 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    for row in range(n):
        for col, (steps, title) in enumerate(
            [(0, "after modulation (0 steps)"), (adapt_steps, f"after {adapt_steps} steps")]
        ):
            ax = axes[row, col]
            xs = x[row, :, 0].numpy()
            ax.plot(xs, truth[row, :, 0].numpy(), color="black", lw=2, label="ground truth")
            for i, (label, _) in enumerate(models):
                ax.plot(
                    xs, preds[label, steps][row, :, 0].numpy(), color=COLORS[i % 7], label=label
                )
            ax.scatter(
                tasks.support_x[row, :, 0].numpy(), tasks.support_y[row, :, 0].numpy(),
                color="black", marker="^", zorder=5, label="support (K points)",
            )  # fmt: skip
            ax.set_title(f"{mode_names[int(tasks.modes[row])]}: {title}")
            lo, hi = truth[row].min().item(), truth[row].max().item()
            pad = 0.5 * (hi - lo) + 1.0
            ax.set_ylim(lo - pad, hi + pad)
    axes[0, 0].legend(fontsize="small")
    fig.savefig(path, dpi=110)


def plot_steps(curves: Sequence[tuple[str, dict]], path: str | os.PathLike) -> None:
    """Test MSE against the number of inner steps, with 95% CI bands; step 0 = post-modulation."""
    fig, ax = step_curves_axes(curves, "test MSE")
    ax.axhline(0.09, color="gray", ls="--", lw=1, label="noise floor (0.09)")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
