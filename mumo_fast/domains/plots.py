"""Figures every domain draws: t-SNE of task embeddings (paper Fig. 4), and the palette.

Uses matplotlib's object API (`Figure`, Agg canvas) so no global backend state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]


def group_colors(n: int) -> list:
    """``n`` distinguishable colours (COLORS, then tab20 for more groups)."""
    if n <= len(COLORS):
        return COLORS[:n]
    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def step_curves_axes(curves: Sequence[tuple[str, dict]], ylabel: str) -> tuple[Figure, object]:
    """A figure of metrics against inner steps, one line per ``(label, summary)`` with its
    95% CI band (``summary["per_step"]`` holds ``mean`` and ``ci95`` per step); step 0 is
    post-modulation. Returns the figure and its axes for domain-specific touches."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, summary) in enumerate(curves):
        mean = np.asarray(summary["per_step"]["mean"])
        ci = np.asarray(summary["per_step"]["ci95"])
        steps = np.arange(len(mean))
        ax.plot(steps, mean, marker="o", color=COLORS[i % 7], label=label)
        ax.fill_between(steps, mean - ci, mean + ci, color=COLORS[i % 7], alpha=0.2)
    ax.set_xlabel("gradient steps (0 = after modulation)")
    ax.set_ylabel(ylabel)
    return fig, ax


def plot_tsne(
    embeddings: torch.Tensor,
    groups: torch.Tensor,
    group_names: Sequence[str],
    path: str | os.PathLike,
    seed: int = 0,
    title: str = "t-SNE of task embeddings",
) -> None:
    """2-D t-SNE of task embeddings [n, E], coloured by group (mode, alphabet)."""
    from sklearn.manifold import TSNE

    emb = embeddings.detach().cpu().double().numpy()
    perplexity = min(30.0, (len(emb) - 1) / 3)
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        emb
    )
    fig = Figure(figsize=(5.5 if len(group_names) <= 7 else 8, 5), layout="constrained")
    ax = fig.subplots()
    groups = groups.cpu().numpy()
    for g, (name, color) in enumerate(zip(group_names, group_colors(len(group_names)))):
        sel = groups == g
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=color, label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits outside the axes
