"""Gymnasium registrations of mumo_fast's environments; importing this module registers them.

>>> import gymnasium as gym
>>> import mumo_fast.envs  # noqa: F401
>>> env = gym.make("mumo_fast/BimodalNavigation-v0", goal=(0.5, 0.5))

``mumo_fast/BimodalNavigation-v0``: ``mumo_fast.domains.navigation.env.BimodalNavigationEnv``
(keyword arguments ``goal``, ``squared_reward``, ``horizon``, ``max_action``,
``goal_tolerance``).  The environment truncates its own episodes at ``horizon`` (100), so
no ``TimeLimit`` wrapper is added.
"""

from __future__ import annotations

import gymnasium

BIMODAL_NAVIGATION_ID = "mumo_fast/BimodalNavigation-v0"

if BIMODAL_NAVIGATION_ID not in gymnasium.registry:  # importlib.reload must not warn
    gymnasium.register(
        id=BIMODAL_NAVIGATION_ID,
        entry_point="mumo_fast.domains.navigation.env:BimodalNavigationEnv",
    )

__all__ = ["BIMODAL_NAVIGATION_ID"]
