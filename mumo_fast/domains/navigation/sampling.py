"""Rollouts of all tasks x trajectories at once in the batched navigation environment.

A policy is a callable ``policy(observations, generator) -> (actions, log_probs)`` with
``observations`` ``[T, B, 2]``, ``actions`` ``[T, B, 2]`` (unclipped: the environment clips)
and ``log_probs`` ``[T, B]``; ``rollout`` calls it once per time step on the whole batch,
passing the ``torch.Generator`` it should draw its noise from (so a seeded generator makes
the rollout reproducible).  ``gaussian_policy`` builds one from a mean function and a
log-std.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .env import BatchedNavigationEnv

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

Policy = Callable[[Tensor, "torch.Generator | None"], tuple[Tensor, Tensor]]


@dataclass
class Trajectories:
    """A padded batch of episodes; ``T`` tasks x ``B`` trajectories x ``H`` steps.

    observations  ``[T, B, H, 2]``  the position at which step ``h``'s action was chosen
                  (``observations[..., 0, :]`` is the origin; frozen after an episode ends)
    actions       ``[T, B, H, 2]``  the actions as the policy sampled them (before clipping)
    log_probs     ``[T, B, H]``     their log-probabilities under the sampling policy
                  (detached when the rollout ran without gradients)
    rewards       ``[T, B, H]``     0 where masked
    mask          ``[T, B, H]``     float, 1 for the steps the episode took, 0 after it ended
                  (reached the goal); episodes are padded, never dropped
    goals         ``[T, 2]``
    """

    observations: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    mask: Tensor
    goals: Tensor

    @property
    def lengths(self) -> Tensor:
        """Steps taken per episode, ``[T, B]`` (int64)."""
        return self.mask.sum(-1).round().long()

    def returns(self) -> Tensor:
        """Undiscounted return of each episode, ``[T, B]``."""
        return (self.rewards * self.mask).sum(-1)

    def to(self, *args, **kwargs) -> Trajectories:
        return Trajectories(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)))


def gaussian_policy(mean_fn: Callable[[Tensor], Tensor], log_std: Tensor) -> Policy:
    """A policy with actions ``mean_fn(obs) + exp(log_std) * noise``, ``noise`` standard
    normal drawn from the rollout's generator; ``log_std`` ``[2]`` (or broadcastable)."""

    def policy(observations: Tensor, generator: torch.Generator | None = None):
        mean = mean_fn(observations)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        actions = mean + torch.exp(log_std) * noise
        # = gaussian_log_prob(actions, mean, log_std), from the noise: fewer tensor ops
        log_probs = (-0.5 * noise * noise - log_std).sum(-1) - _LOG_SQRT_2PI * mean.shape[-1]
        return actions, log_probs

    return policy


def rollout(
    env: BatchedNavigationEnv,
    policy: Policy,
    *,
    generator: torch.Generator | None = None,
    goals: Tensor | None = None,
    grad: bool = False,
    stop_when_done: bool = True,
) -> Trajectories:
    """Roll out ``env.trajectories`` episodes for each of the ``T`` tasks, ``env.horizon``
    steps, evaluating ``policy`` once per step on all ``[T, B]`` observations.

    ``env`` is reset first (to ``goals`` if given).  Episodes that end early stay in the
    batch with ``mask`` 0 for their remaining steps (the policy still sees their frozen
    positions; those actions are recorded but do nothing).  ``grad=False`` (default) runs
    under ``torch.no_grad()``; recompute log-probabilities with a differentiable policy from
    ``observations`` and ``actions``.  ``stop_when_done``: stop calling the policy once every
    episode has ended (one host sync per step to check; the rest is padding, zero actions).
    """
    with torch.set_grad_enabled(grad):
        obs = env.reset(goals)
        observations, actions, log_probs, rewards, masks = [], [], [], [], []
        for _ in range(env.horizon):
            a, lp = policy(obs, generator)
            step = env.step(a)
            observations.append(obs)
            actions.append(a)
            log_probs.append(lp)
            rewards.append(step.reward)
            masks.append(step.active)
            obs = step.observation
            if stop_when_done and bool(env.done.all()):
                break
        for _ in range(env.horizon - len(observations)):  # padding after every episode ended
            observations.append(obs)
            actions.append(torch.zeros_like(actions[-1]))
            log_probs.append(torch.zeros_like(log_probs[-1]))
            rewards.append(torch.zeros_like(rewards[-1]))
            masks.append(torch.zeros_like(masks[-1]))
        dtype = env.position.dtype
        return Trajectories(
            observations=torch.stack(observations, dim=2),
            actions=torch.stack(actions, dim=2),
            log_probs=torch.stack(log_probs, dim=2),
            rewards=torch.stack(rewards, dim=2),
            mask=torch.stack(masks, dim=2).to(dtype),
            goals=env.goals,
        )
