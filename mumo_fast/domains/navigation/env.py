"""Bimodal 2-D point navigation (the paper's meta-RL task): a ``gymnasium.Env`` and a batched torch twin.

The task: a point starts at the origin and moves by 2-D actions towards a goal it never
observes (the observation is its position only); the goal is the task.  Goals come from a
mixture of two Gaussians, means (0.5, 0.5) and (-0.5, -0.5), standard deviation 0.5 per
coordinate, each mode with probability 1/2.

Dynamics of one step, in this order (both environments, float32 throughout):

1. ``a = clip(action, -max_action, max_action)`` per coordinate (``max_action`` 0.1);
2. ``position = position + a``;
3. ``d = position - goal`` (the **new** position), ``distance = sqrt(d0*d0 + d1*d1)``;
4. ``reward = -distance`` (default) or ``-(d0*d0 + d1*d1)`` with ``squared_reward=True``
   (the paper's appendix);
5. ``terminated = distance < goal_tolerance`` (0.01, Euclidean, on the new position: the
   step that reaches the goal is rewarded, then the episode ends);
6. ``t = t + 1``; ``truncated = t >= horizon`` (100).  Both flags may be true at once.

The reward of the step that reaches the goal is included; an episode therefore has between
1 and ``horizon`` rewarded steps.  The batched environment computes the same float32
operations elementwise (its square root in float64, rounded to float32: correctly rounded
like numpy's, which torch's vectorised float32 ``sqrt`` is not always), so for the same goals
and actions both produce bit-identical positions, rewards and flags
(tests/test_navigation_env.py checks it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

GOAL_MEANS = ((0.5, 0.5), (-0.5, -0.5))
GOAL_STD = 0.5
HORIZON = 100
MAX_ACTION = 0.1
GOAL_TOLERANCE = 0.01


def sample_goals(
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    return_modes: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``n`` goals ``[n, 2]`` from the two-Gaussian mixture (each mode with probability 1/2).

    With ``return_modes`` also the mode of each goal, ``[n]`` int64 (0: mean (0.5, 0.5),
    1: mean (-0.5, -0.5)).  Randomness from ``generator`` (on ``device``).
    """
    means = torch.tensor(GOAL_MEANS, dtype=dtype, device=device)
    modes = torch.randint(0, 2, (n,), generator=generator, device=device)
    noise = torch.randn(n, 2, generator=generator, dtype=dtype, device=device)
    goals = means[modes] + GOAL_STD * noise
    return (goals, modes) if return_modes else goals


def sample_goal_numpy(rng: np.random.Generator) -> np.ndarray:
    """One goal ``(2,)`` float32 from the same mixture, drawn with a numpy generator (the
    gymnasium environment's ``np_random``); the same distribution as ``sample_goals``, not
    the same stream of numbers."""
    mode = int(rng.integers(0, 2))
    return (np.asarray(GOAL_MEANS[mode]) + GOAL_STD * rng.standard_normal(2)).astype(np.float32)


def _as_goal(goal: Any) -> np.ndarray:
    g = np.asarray(goal, dtype=np.float32).reshape(-1)
    if g.shape != (2,) or not np.all(np.isfinite(g)):
        raise ValueError(f"a goal is two finite numbers, got {goal!r}")
    return g


class BimodalNavigationEnv(gym.Env):
    """The bimodal point-navigation task as a gymnasium environment.

    Registered as ``mumo_fast/BimodalNavigation-v0`` by ``import mumo_fast.envs``.

    Observation: the position, starting at the origin, ``Box(-L, L, (2,), float32)`` with
    ``L`` just above ``horizon * max_action`` (10.01), the farthest reachable point.
    Action: a 2-D move, ``Box(-max_action, max_action, (2,), float32)``; larger actions are
    clipped.  Reward, termination and truncation: see the module docstring (the order of the
    computations there is the contract shared with ``BatchedNavigationEnv``).

    The goal (the task) is never observed.  It is set by ``goal=`` here, by
    ``set_goal(goal)``, or by ``reset(options={"goal": goal})``, and then stays for every
    later episode until changed; ``set_goal(None)`` (or ``options={"goal": None}``) returns to
    the default, a fresh goal from the two-Gaussian mixture at every ``reset``, drawn with
    ``self.np_random`` (so ``reset(seed=s)`` is reproducible).  ``info`` of ``reset`` holds
    the episode's goal, for diagnostics and plots; the agent is not meant to read it.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal: Any = None,
        *,
        squared_reward: bool = False,
        horizon: int = HORIZON,
        max_action: float = MAX_ACTION,
        goal_tolerance: float = GOAL_TOLERANCE,
        render_mode: str | None = None,
    ):
        if render_mode is not None:
            raise ValueError("BimodalNavigationEnv has no render modes")
        self.render_mode = render_mode
        self.squared_reward = bool(squared_reward)
        self.horizon = int(horizon)
        self.max_action = np.float32(max_action)
        self.goal_tolerance = np.float32(goal_tolerance)
        # the farthest point reachable in `horizon` steps, with a margin for float32 rounding
        bound = np.float32(self.horizon * float(self.max_action) * 1.001)
        self.observation_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(
            -self.max_action, self.max_action, shape=(2,), dtype=np.float32
        )
        self._fixed_goal = None if goal is None else _as_goal(goal)
        self._goal = self._fixed_goal
        self._position = np.zeros(2, dtype=np.float32)
        self._t = 0

    @property
    def goal(self) -> np.ndarray | None:
        """The current goal (a copy), or None before the first reset without a fixed goal."""
        return None if self._goal is None else self._goal.copy()

    def set_goal(self, goal: Any) -> None:
        """Fix the goal (the task) for this and every later episode; None: sample one per
        reset.  A goal takes effect at once: the next step's reward and termination use it."""
        self._fixed_goal = None if goal is None else _as_goal(goal)
        if self._fixed_goal is not None:
            self._goal = self._fixed_goal

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and "goal" in options:
            self.set_goal(options["goal"])
        self._goal = (
            self._fixed_goal if self._fixed_goal is not None else sample_goal_numpy(self.np_random)
        )
        self._position = np.zeros(2, dtype=np.float32)
        self._t = 0
        return self._position.copy(), {"goal": self._goal.copy()}

    def step(self, action):
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -self.max_action,
                    self.max_action)  # fmt: skip
        self._position = (self._position + a).astype(np.float32)
        d = self._position - self._goal
        squared = d[0] * d[0] + d[1] * d[1]
        distance = np.sqrt(squared)
        reward = -(squared if self.squared_reward else distance)
        terminated = bool(distance < self.goal_tolerance)
        self._t += 1
        truncated = self._t >= self.horizon
        return (
            self._position.copy(),
            float(reward),
            terminated,
            truncated,
            {"distance": float(distance)},
        )


class BatchedStep(NamedTuple):
    """What ``BatchedNavigationEnv.step`` returns; every field is ``[T, B]`` except
    ``observation`` ``[T, B, 2]``.  ``active``: the entries that took this step (not done
    before it); the others have reward 0 and both flags False."""

    observation: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    active: Tensor


class BatchedNavigationEnv:
    """``T`` tasks x ``B`` trajectories of the navigation task stepped as one tensor operation.

    ``goals``: ``[T, 2]`` (trajectory ``b`` of task ``i`` navigates to ``goals[i]``).  The
    state is ``position`` ``[T, B, 2]``, the shared step counter ``t`` and ``done`` ``[T, B]``
    (bool; terminated or truncated).  ``step`` applies the module docstring's dynamics to
    every entry that is not done; done entries are frozen (position unchanged, reward 0,
    flags False, ``active`` False), so a fixed-length rollout of ``horizon`` steps is the
    padded, masked batch of all episodes.  Works on any device and float dtype
    (float32 matches the gymnasium environment exactly).
    """

    def __init__(
        self,
        goals: Tensor,
        trajectories: int,
        *,
        squared_reward: bool = False,
        horizon: int = HORIZON,
        max_action: float = MAX_ACTION,
        goal_tolerance: float = GOAL_TOLERANCE,
    ):
        self.squared_reward = bool(squared_reward)
        self.horizon = int(horizon)
        self.max_action = float(max_action)
        self.goal_tolerance = float(goal_tolerance)
        self.trajectories = int(trajectories)
        self.set_goals(goals)
        self.reset()

    def set_goals(self, goals: Tensor) -> None:
        """New goals ``[T, 2]`` (takes effect at the next ``reset``)."""
        goals = torch.as_tensor(goals)
        if not goals.is_floating_point():
            goals = goals.to(torch.float32)
        if goals.dim() != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must be [T, 2], got {tuple(goals.shape)}")
        self.goals = goals

    @property
    def num_tasks(self) -> int:
        return self.goals.shape[0]

    def reset(self, goals: Tensor | None = None) -> Tensor:
        """Start every episode at the origin (with new ``goals`` if given); returns the
        observations ``[T, B, 2]``."""
        if goals is not None:
            self.set_goals(goals)
        g = self.goals
        self.position = g.new_zeros(g.shape[0], self.trajectories, 2)
        self.done = torch.zeros(g.shape[0], self.trajectories, dtype=torch.bool, device=g.device)
        self.t = 0
        return self.position

    def step(self, actions: Tensor) -> BatchedStep:
        """One step of every episode; ``actions`` ``[T, B, 2]`` (clipped here)."""
        if actions.shape != self.position.shape:
            raise ValueError(
                f"actions must be {tuple(self.position.shape)}, got {tuple(actions.shape)}"
            )
        active = ~self.done
        a = actions.to(self.position.dtype).clamp(-self.max_action, self.max_action)
        position = torch.where(active.unsqueeze(-1), self.position + a, self.position)
        d = position - self.goals.unsqueeze(1)
        dx, dy = d.unbind(-1)
        squared = dx * dx + dy * dy
        # correctly rounded like numpy's: torch's vectorised float32 sqrt can be 1 ulp off
        distance = squared.to(torch.float64).sqrt().to(squared.dtype)
        reward = -(squared if self.squared_reward else distance)
        reward = torch.where(active, reward, torch.zeros_like(reward))
        terminated = active & (distance < self.goal_tolerance)
        self.t += 1
        truncated = active if self.t >= self.horizon else torch.zeros_like(active)
        self.done = self.done | terminated | truncated
        self.position = position
        return BatchedStep(position, reward, terminated, truncated, active)
