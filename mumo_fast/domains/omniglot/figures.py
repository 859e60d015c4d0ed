"""Omniglot figures: accuracy against inner steps, an example episode with the
model's predictions, and t-SNE of task embeddings coloured by alphabet (paper Fig. 4b)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ...meta import TaskBatch
from ..plots import plot_tsne, step_curves_axes

__all__ = ["plot_episode", "plot_steps", "plot_tsne"]


def plot_steps(curves: Sequence[tuple[str, dict]], path: str | os.PathLike) -> None:
    """Test accuracy against the number of inner steps (95% CI bands); 0 = post-modulation."""
    fig, ax = step_curves_axes(curves, "test accuracy (%)")
    ax.set_xticks(np.arange(len(curves[0][1]["per_step"]["mean"])))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def plot_episode(
    batch: TaskBatch, predictions: torch.Tensor, title: str, path: str | os.PathLike
) -> None:
    """Episode 0 of ``batch``: the support images with their labels (top row), then query
    images with the predicted label, green where right and red where wrong."""
    sx, sy = batch.support_x[0, :, 0].cpu(), batch.support_y[0].cpu()
    qx, qy = batch.query_x[0, :, 0].cpu(), batch.query_y[0].cpu()
    pred = predictions[0].argmax(-1).cpu()
    cols = max(len(sx), 10)
    q_rows = -(-min(len(qx), 3 * cols) // cols)
    fig = Figure(figsize=(cols * 0.9, (1 + q_rows) * 1.05 + 0.4), layout="constrained")
    axes = fig.subplots(1 + q_rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(len(sx)):
        axes[0, i].imshow(sx[i], cmap="gray_r", vmin=0, vmax=1)
        axes[0, i].set_title(f"support {int(sy[i])}", fontsize=7)
    for j in range(min(len(qx), q_rows * cols)):
        ax = axes[1 + j // cols, j % cols]
        ax.imshow(qx[j], cmap="gray_r", vmin=0, vmax=1)
        right = int(pred[j]) == int(qy[j])
        ax.set_title(f"pred {int(pred[j])}", fontsize=7, color="green" if right else "red")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
