"""Test accuracy of a trained learner on the fixed episodes, after 0..S inner steps."""

from __future__ import annotations

import torch

from ...train import per_step_losses, summarize
from .episodes import Episodes, EpisodeSampler


def per_step_accuracy(
    learner, sampler: EpisodeSampler, episodes: Episodes, steps: int, chunk: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query accuracy (%) and loss of every episode after 0..steps inner steps:
    two [steps+1, episodes] tensors on the CPU."""
    losses: list[torch.Tensor] = []

    def run(start: int, stop: int, n: int) -> torch.Tensor:
        out = learner.evaluate(sampler.batch(episodes.select(slice(start, stop))), n)
        losses.append(out["per_step"].detach().cpu())
        return out["accuracy_per_step"] * 100

    acc = per_step_losses(run, len(episodes), steps, chunk)
    return acc, torch.cat(losses, dim=1)


def evaluate_learner(learner, sampler: EpisodeSampler, episodes: Episodes, steps: int) -> dict:
    """Accuracy (%) summary: post-modulation (0 steps), post-adaptation (``steps``), the
    curve over steps (mean and 95% CI over episodes), and the query loss curve."""
    acc, loss = per_step_accuracy(learner, sampler, episodes, steps)
    out = summarize(acc, steps)
    out["loss_per_step"] = summarize(loss, steps)["per_step"]
    return out
