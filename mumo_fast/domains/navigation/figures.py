"""Navigation figures: sample trajectories (paper Fig. 6), returns against gradient steps
(Fig. 5a); the t-SNE of embeddings (Fig. 5b) is the shared ``plots.plot_tsne``."""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.figure import Figure

from ..plots import group_colors, plot_tsne
from .learner import Adaptation

__all__ = ["plot_trajectories", "plot_returns", "plot_tsne"]


def plot_trajectories(
    adaptation: Adaptation, method: str, path: str | os.PathLike, per_panel: int = 5
) -> None:
    """One row per goal; columns: before modulation (MuMoMAML only), after modulation
    (MAML: before adaptation), then after each gradient step; ``per_panel`` trajectories
    of each batch, the goal as a star."""
    panels = []
    if adaptation.pre is not None:
        panels.append(("before modulation", adaptation.pre))
    first = "after modulation" if adaptation.pre is not None else "before adaptation"
    panels.append((first, adaptation.batches[0]))
    for k, b in enumerate(adaptation.batches[1:], start=1):
        panels.append((f"after {k} step{'s' if k > 1 else ''}", b))
    goals = adaptation.batches[0].goals.detach().cpu()
    n_goals = goals.shape[0]
    fig = Figure(figsize=(2.6 * len(panels), 2.6 * n_goals), layout="constrained")
    axes = fig.subplots(n_goals, len(panels), squeeze=False)
    colors = group_colors(per_panel)
    for i in range(n_goals):
        for j, (title, traj) in enumerate(panels):
            ax = axes[i][j]
            obs = traj.observations[i].detach().cpu()
            mask = traj.mask[i].detach().cpu()
            returns = traj.returns()[i].detach().cpu()
            for b in range(min(per_panel, obs.shape[0])):
                n = int(mask[b].sum())
                xy = obs[b, : n + 1] if n < obs.shape[1] else obs[b]
                ax.plot(xy[:, 0], xy[:, 1], color=colors[b], lw=1)
            ax.plot(*goals[i].tolist(), marker="*", color="k", ms=12, ls="none")
            ax.plot(0, 0, marker="o", color="gray", ms=4, ls="none")
            ax.set_xlim(-1.5, 1.5)
            ax.set_ylim(-1.5, 1.5)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize="small")
            ax.text(
                0.03, 0.03, f"return {float(returns.mean()):.1f}", transform=ax.transAxes,
                fontsize="x-small",
            )  # fmt: skip
    fig.suptitle(f"{method}: sample trajectories", fontsize="medium")
    fig.savefig(path, dpi=110)


def plot_returns(curves: Sequence[tuple[str, dict]], path: str | os.PathLike) -> None:
    """Mean return (95% CI band) against gradient steps, one curve per run; MuMoMAML's
    pre-modulation return as a marker at step -1 (paper Fig. 5a)."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for (label, m), color in zip(curves, group_colors(len(curves))):
        mean, ci = m["per_step"]["mean"], m["per_step"]["ci95"]
        steps = list(range(len(mean)))
        ax.plot(steps, mean, marker="o", color=color, label=label)
        ax.fill_between(steps, [a - c for a, c in zip(mean, ci)],
                        [a + c for a, c in zip(mean, ci)], color=color, alpha=0.2)  # fmt: skip
        pre = m["returns"]["pre-modulation"]
        if label.startswith("mumomaml"):
            ax.errorbar([-1], [pre["mean"]], yerr=[pre["ci95"]], marker="s", color=color)
    n_steps = max(len(m["per_step"]["mean"]) for _, m in curves)
    ax.set_xticks(range(-1 if any(lb.startswith("mumomaml") for lb, _ in curves) else 0, n_steps))
    ax.set_xlabel("gradient steps (-1: before modulation, 0: after modulation)")
    ax.set_ylabel("average return")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
