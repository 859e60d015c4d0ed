"""The bimodal navigation environments: gymnasium conformance, the batched twin's
identical dynamics, goal handling and sampling, batched rollouts."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import mumo_fast.envs
from mumo_fast.domains.navigation import (
    GOAL_MEANS,
    BatchedNavigationEnv,
    BimodalNavigationEnv,
    Trajectories,
    gaussian_policy,
    rollout,
    sample_goals,
)
from mumo_fast.domains.navigation.env import sample_goal_numpy
from mumo_fast.meta.rl import gaussian_log_prob


@pytest.mark.parametrize("kwargs", [{}, {"squared_reward": True}, {"goal": (0.3, -0.7)}])
def test_check_env_passes_without_warnings(kwargs):
    env = gym.make("mumo_fast/BimodalNavigation-v0", **kwargs).unwrapped  # with its spec
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


def test_registered_on_import():
    assert mumo_fast.envs.BIMODAL_NAVIGATION_ID == "mumo_fast/BimodalNavigation-v0"
    env = gym.make("mumo_fast/BimodalNavigation-v0", goal=(0.25, -0.5), squared_reward=True)
    assert isinstance(env.unwrapped, BimodalNavigationEnv)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros(2, np.float32))
    np.testing.assert_array_equal(info["goal"], np.float32([0.25, -0.5]))
    obs, reward, terminated, truncated, _ = env.step(np.float32([0.05, -0.05]))
    assert obs.dtype == np.float32 and obs.shape == (2,)
    assert reward == pytest.approx(-(0.2**2 + 0.45**2), abs=1e-6)
    assert not terminated and not truncated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def test_one_step_by_hand_clipping_and_reward():
    env = BimodalNavigationEnv(goal=(0.4, 0.3))
    env.reset()
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.03]))
    np.testing.assert_allclose(obs, [0.1, -0.03], rtol=0, atol=1e-7)  # x clipped to 0.1
    assert reward == pytest.approx(-math.hypot(0.1 - 0.4, -0.03 - 0.3), abs=1e-6)
    assert info["distance"] == pytest.approx(-reward, abs=0)
    assert not terminated and not truncated
    assert env.action_space.contains(np.float32([0.1, -0.1]))
    assert not env.action_space.contains(np.float32([0.11, 0.0]))


def test_goal_is_settable_per_task_and_sampled_otherwise():
    env = BimodalNavigationEnv()
    _, info1 = env.reset(seed=3)
    _, info2 = env.reset(seed=3)
    np.testing.assert_array_equal(info1["goal"], info2["goal"])  # seeded resets reproduce
    _, info3 = env.reset()
    assert not np.array_equal(info3["goal"], info2["goal"])  # a fresh task per reset
    env.reset(options={"goal": (1.0, -1.0)})
    for _ in range(3):  # a goal set by reset options stays for later episodes
        obs, info = env.reset()
        np.testing.assert_array_equal(info["goal"], np.float32([1.0, -1.0]))
        np.testing.assert_array_equal(obs, np.zeros(2, np.float32))  # the goal is not observed
    env.set_goal((-0.2, 0.1))
    _, reward, *_ = env.step(np.zeros(2, np.float32))  # set_goal acts at once
    assert reward == pytest.approx(-math.hypot(0.2, 0.1), abs=1e-6)
    env.set_goal(None)
    goals = {tuple(env.reset()[1]["goal"]) for _ in range(4)}
    assert len(goals) == 4
    with pytest.raises(ValueError):
        env.set_goal((1.0, 2.0, 3.0))
    with pytest.raises(ValueError):
        BimodalNavigationEnv(goal=(0.0, float("nan")))


def _mixture_statistics(goals: np.ndarray, modes: np.ndarray):
    return [
        (float((modes == k).mean()), goals[modes == k].mean(0), goals[modes == k].std(0))
        for k in range(2)
    ]


def test_goal_distribution_torch():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    goals, modes = sample_goals(40000, g, return_modes=True)
    assert goals.shape == (40000, 2) and goals.dtype == torch.float32
    for k, (frac, mean, std) in enumerate(_mixture_statistics(goals.numpy(), modes.numpy())):
        assert abs(frac - 0.5) < 0.015  # 6 standard errors
        np.testing.assert_allclose(mean, GOAL_MEANS[k], atol=0.02)
        np.testing.assert_allclose(std, [0.5, 0.5], atol=0.015)


def test_goal_distribution_numpy_and_env_resets():
    rng = np.random.default_rng()
    goals = np.stack([sample_goal_numpy(rng) for _ in range(20000)])
    assert goals.dtype == np.float32
    assert abs((goals.sum(1) > 0).mean() - 0.5) < 0.02  # symmetric modes
    np.testing.assert_allclose(goals.mean(0), [0.0, 0.0], atol=0.03)
    # per-coordinate variance of the mixture: 0.5**2 + 0.5**2 = 0.5
    np.testing.assert_allclose(goals.var(0), [0.5, 0.5], atol=0.03)
    # the coordinates are correlated through the mode: cov(x, y) = 0.5**2
    assert abs(float((goals[:, 0] * goals[:, 1]).mean()) - 0.25) < 0.03
    env = BimodalNavigationEnv()
    env.reset(seed=int(rng.integers(2**31)))
    env_goals = np.stack([env.reset()[1]["goal"] for _ in range(4000)])
    np.testing.assert_allclose(env_goals.var(0), [0.5, 0.5], atol=0.06)


def _actions_and_goals(t: int, b: int, h: int, g: torch.Generator):
    """Goals and action sequences whose episodes end early at known steps: trajectory 0
    walks straight onto the goal in k steps, trajectory 1 to within 0.005 of it, trajectory 2
    to 0.02 off it and then away (never terminates); the rest are large random moves
    (clipped), whatever happens after an episode's end is random too."""
    goals = sample_goals(t, g)
    goals = torch.where(goals.norm(dim=1, keepdim=True) < 0.1, goals + 0.5, goals)
    actions = 0.15 * torch.randn(t, b, h, 2, generator=g)
    ends = torch.full((t, b), -1)
    for i in range(t):
        for j, offset in enumerate((0.0, 0.005, 0.02)):
            angle = 2 * math.pi * torch.rand((), generator=g)
            away = torch.stack([angle.cos(), angle.sin()])
            target = goals[i] + offset * away
            k = int(math.ceil(target.abs().max() / 0.09)) + int(
                torch.randint(0, 5, (), generator=g)
            )
            actions[i, j, :k] = target / k
            if j == 2:  # then straight away from the goal: never within 0.01 of it
                actions[i, j, k:] = 0.1 * away
            ends[i, j] = k if offset < 0.01 else -1
    return goals, actions, ends


def _replay(actions: torch.Tensor):
    calls = []

    def policy(obs, generator):
        h = len(calls)
        calls.append(obs.shape)
        return actions[:, :, h], torch.zeros(obs.shape[:2])

    return policy, calls


@pytest.mark.parametrize("squared_reward", [False, True])
def test_batched_env_matches_gymnasium_env_exactly(squared_reward):
    t, b, h = 3, 6, 100
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    goals, actions, ends = _actions_and_goals(t, b, h, g)
    env = BatchedNavigationEnv(goals, b, squared_reward=squared_reward)
    policy, calls = _replay(actions)
    tr = rollout(env, policy, stop_when_done=False)
    assert len(calls) == h and all(s == (t, b, 2) for s in calls)
    assert tr.observations.shape == (t, b, h, 2) and tr.mask.shape == (t, b, h)
    for i in range(t):
        for j in range(b):
            genv = BimodalNavigationEnv(goal=goals[i].numpy(), squared_reward=squared_reward)
            obs, _ = genv.reset()
            for step in range(h):
                # exact: both compute the same float32 operations elementwise
                np.testing.assert_array_equal(tr.observations[i, j, step].numpy(), obs)
                assert tr.mask[i, j, step] == 1
                obs, reward, terminated, truncated, _ = genv.step(actions[i, j, step].numpy())
                assert tr.rewards[i, j, step].item() == reward
                if terminated or truncated:
                    break
            length = step + 1
            assert tr.lengths[i, j] == length
            if length < h:
                assert terminated
            if ends[i, j] > 0:  # the constructed walks onto the goal end where they arrive
                assert terminated and length == ends[i, j]
            # after the end: masked, zero reward, position frozen at the final one
            assert (tr.mask[i, j, length:] == 0).all()
            assert (tr.rewards[i, j, length:] == 0).all()
            np.testing.assert_array_equal(tr.observations[i, j, length:].numpy(),
                                          np.broadcast_to(obs, (h - length, 2)))  # fmt: skip
            np.testing.assert_array_equal(env.position[i, j].numpy(), obs)
    assert (tr.lengths[:, :2] < h).all() and (tr.lengths[:, 2] == h).all()
    assert bool(env.done.all())


def test_truncation_at_a_short_horizon_in_both_envs():
    goals = torch.tensor([[5.0, 5.0], [-5.0, 0.0]])
    env = BatchedNavigationEnv(goals, 3, horizon=4)
    env.reset()
    genv = BimodalNavigationEnv(goal=(5.0, 5.0), horizon=4)
    genv.reset()
    for step in range(4):
        out = env.step(torch.full((2, 3, 2), 0.1))
        _, _, terminated, truncated, _ = genv.step(np.float32([0.1, 0.1]))
        assert out.truncated.all().item() == truncated == (step == 3)
        assert not out.terminated.any() and not terminated
    out = env.step(torch.full((2, 3, 2), 0.1))  # after the end: frozen, nothing active
    assert not out.active.any() and (out.reward == 0).all() and not out.truncated.any()
    torch.testing.assert_close(env.position[0, 0], torch.tensor([0.4, 0.4]))


def test_rollout_seeded_and_early_stop():
    t, b = 4, 5
    goals = sample_goals(t, torch.Generator().manual_seed(1))
    mean_fn = lambda obs: 0.05 * torch.tanh(goals.unsqueeze(1) - obs)  # noqa: E731
    log_std = torch.tensor([-2.0, -1.5])
    policy = gaussian_policy(mean_fn, log_std)
    seed = int(torch.randint(0, 2**31, ()))
    env = BatchedNavigationEnv(goals, b)
    a = rollout(env, policy, generator=torch.Generator().manual_seed(seed))
    c = rollout(env, policy, generator=torch.Generator().manual_seed(seed))
    d = rollout(env, policy, generator=torch.Generator().manual_seed(seed + 1))
    for name in ("observations", "actions", "log_probs", "rewards", "mask"):
        torch.testing.assert_close(getattr(a, name), getattr(c, name), rtol=0, atol=0)
    assert not torch.equal(a.actions, d.actions)
    assert isinstance(a, Trajectories) and not a.log_probs.requires_grad
    # the recorded log-probabilities are the policy's, on the recorded observations
    lp = gaussian_log_prob(a.actions, mean_fn(a.observations.flatten(1, 2)).view_as(a.actions),
                           log_std)  # fmt: skip
    torch.testing.assert_close(lp * a.mask, a.log_probs * a.mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.returns(), (a.rewards * a.mask).sum(-1))
    assert a.rewards.max() <= 0 and a.mask[..., 0].eq(1).all()


def test_rollout_stops_calling_the_policy_when_every_episode_ended():
    t, b, h = 2, 3, 100
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    goals, actions, _ = _actions_and_goals(t, 3, h, g)
    actions = actions[:, :2].repeat(1, 2, 1, 1)[:, :b]  # every trajectory walks to its goal
    env = BatchedNavigationEnv(goals, b)
    policy, calls = _replay(actions)
    early = rollout(env, policy, stop_when_done=True)
    last = int(early.lengths.max())
    assert len(calls) == last < h
    policy, calls = _replay(actions)
    full = rollout(env, policy, stop_when_done=False)
    assert len(calls) == h
    for name in ("observations", "rewards", "mask"):
        torch.testing.assert_close(getattr(early, name), getattr(full, name), rtol=0, atol=0)
    torch.testing.assert_close(early.actions[:, :, :last], full.actions[:, :, :last])
    assert (early.actions[:, :, last:] == 0).all()


def test_batched_env_rejects_bad_shapes():
    with pytest.raises(ValueError):
        BatchedNavigationEnv(torch.zeros(3), 2)
    env = BatchedNavigationEnv(torch.zeros(3, 2), 2)
    with pytest.raises(ValueError):
        env.step(torch.zeros(3, 2))
