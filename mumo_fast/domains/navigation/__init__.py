"""Meta-RL on bimodal 2-D point navigation (paper Fig. 5, 6).

Submodules: `env` (the gymnasium environment ``BimodalNavigationEnv``, registered as
``mumo_fast/BimodalNavigation-v0`` by ``import mumo_fast.envs``, the batched torch
environment ``BatchedNavigationEnv`` with the same dynamics, goal sampling) and `sampling`
(rollouts of all tasks x trajectories at once, ``Trajectories``), `learner`
(``NavigationLearner``: the Gaussian FiLM-MLP policy, MuMoMAML's trajectory encoder and
modulation heads, the policy-gradient inner loop on the core's batched ``inner_step``, the
TRPO meta-update; also the agent ``mumo_fast.load`` returns), `run` (the CLI commands) and
`figures`.  The domain-free RL math (returns, GAE, the linear feature baseline, surrogates,
conjugate gradient, line search, the TRPO step) lives in ``mumo_fast.meta.rl``.
"""

from .env import (
    GOAL_MEANS,
    GOAL_STD,
    BatchedNavigationEnv,
    BatchedStep,
    BimodalNavigationEnv,
    sample_goals,
)
from .learner import NavigationBatch, NavigationLearner, TrajectoryEncoder
from .sampling import Trajectories, gaussian_policy, rollout

__all__ = [
    "GOAL_MEANS",
    "GOAL_STD",
    "BatchedNavigationEnv",
    "BatchedStep",
    "BimodalNavigationEnv",
    "sample_goals",
    "NavigationBatch",
    "NavigationLearner",
    "TrajectoryEncoder",
    "Trajectories",
    "gaussian_policy",
    "rollout",
]
