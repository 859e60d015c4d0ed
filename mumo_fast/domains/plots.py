"""Figures every domain draws: t-SNE of task embeddings (paper Fig. 4), and the palette.

Uses matplotlib's object API (`Figure`, Agg canvas) so no global backend state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

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
    fig.savefig(path, dpi=110)
