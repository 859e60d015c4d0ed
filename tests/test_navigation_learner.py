"""Navigation meta-RL on the core: the batched policy-gradient inner step (and its second
order) against a per-task loop in float64, the TRPO meta-update's KL bound and improvement,
the combined loss-and-KL form of ``trpo_step``, the trajectory encoder's masking, the agent
API.  Small problems only (a few tasks, trajectories and steps)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

import mumo_fast.envs  # noqa: F401  (registers the environment)
from mumo_fast.domains.navigation import sample_goals
from mumo_fast.domains.navigation.learner import (
    NavigationBatch,
    NavigationLearner,
    TrajectoryEncoder,
)
from mumo_fast.domains.navigation.sampling import Trajectories
from mumo_fast.meta import rl

SMALL = {"trajectories": 3, "horizon": 8}


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """torch.allclose with the worst error in the message (torch.testing.assert_close's
    first call imports torch.distributed.tensor: seconds on a busy machine)."""
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape and got.dtype == want.dtype
    err = float((got - want).abs().max()) if got.numel() else 0.0
    assert torch.allclose(got, want, rtol=rtol, atol=atol), f"max abs error {err:.3g}"


def _learner(method: str, dtype=torch.float64, **cfg) -> NavigationLearner:
    torch.manual_seed(3)
    learner = NavigationLearner({"method": method, **SMALL, **cfg}).to(dtype)
    with torch.no_grad():
        learner.log_std.fill_(-0.7)
    return learner


def _trajectories(t: int, b: int, h: int, g: torch.Generator) -> Trajectories:
    lengths = torch.randint(1, h + 1, (t, b), generator=g)
    mask = (torch.arange(h) < lengths.unsqueeze(-1)).double()
    return Trajectories(
        observations=torch.randn(t, b, h, 2, generator=g, dtype=torch.float64) * 0.5,
        actions=torch.randn(t, b, h, 2, generator=g, dtype=torch.float64) * 0.3,
        log_probs=torch.zeros(t, b, h, dtype=torch.float64),
        rewards=-torch.rand(t, b, h, generator=g, dtype=torch.float64) * mask,
        mask=mask,
        goals=torch.zeros(t, 2, dtype=torch.float64),
    )


def _mlp(params: dict, x: torch.Tensor, film) -> torch.Tensor:
    """The policy's mean for one task, written out: relu((W x + b) * gamma + beta) twice."""
    for i in range(2):
        z = x @ params[f"hidden.{i}.weight"].T + params[f"hidden.{i}.bias"]
        if film is not None:
            z = z * film[i][0] + film[i][1]
        x = torch.relu(z)
    return x @ params["out.weight"].T + params["out.bias"]


def test_inner_step_against_a_per_task_loop_float64_second_order():
    g = torch.Generator().manual_seed(0)
    t, b, h = 3, 4, 6
    learner = _learner("maml", inner_lr=0.3)
    traj = _trajectories(t, b, h, g)
    adv = rl.compute_advantages(traj.observations, traj.rewards, traj.mask, 0.9)
    film = [
        (1 + 0.3 * torch.randn(t, 32, generator=g, dtype=torch.float64),
         0.3 * torch.randn(t, 32, generator=g, dtype=torch.float64))
        for _ in range(2)
    ]  # fmt: skip
    probe = torch.randn(t, 5, 2, generator=g, dtype=torch.float64)
    w = torch.randn(t, 5, 2, generator=g, dtype=torch.float64)

    fw = learner.adapt_step(learner.initial_weights(t), film, traj, adv, create_graph=True)
    batched_out = learner.mean_action(fw, probe, film)
    meta_loss = (batched_out * w).sum()
    base = dict(learner.policy.named_parameters())
    batched_grads = torch.autograd.grad(meta_loss, list(base.values()) + [learner.log_std])

    ref_loss = 0.0
    for i in range(t):
        film_i = [(gm[i], bt[i]) for gm, bt in film]
        mean = _mlp(base, traj.observations[i].reshape(-1, 2), film_i)
        lp = rl.gaussian_log_prob(traj.actions[i].reshape(-1, 2), mean, learner.log_std)
        m = traj.mask[i].reshape(-1)
        loss = -(lp * adv[i].reshape(-1) * m).sum() / m.sum()
        grads = torch.autograd.grad(loss, list(base.values()), create_graph=True)
        adapted = {n: p - 0.3 * gr for (n, p), gr in zip(base.items(), grads)}
        for n in adapted:  # the batched fast weights agree
            _close(fw.params[n][i], adapted[n], rtol=1e-10, atol=1e-12)
        out_i = _mlp(adapted, probe[i], film_i)
        _close(batched_out[i], out_i, rtol=1e-10, atol=1e-12)
        ref_loss = ref_loss + (out_i * w[i]).sum()
    # the meta-gradient through the inner step (second order, the log-std included)
    ref_grads = torch.autograd.grad(ref_loss, list(base.values()) + [learner.log_std])
    for got, want in zip(batched_grads, ref_grads):
        _close(got, want, rtol=1e-9, atol=1e-11)
    assert float(ref_grads[-1].abs().sum()) > 0  # the log-std reaches the outer loss


def test_trajectory_encoder_ignores_steps_after_an_episode_ended():
    g = torch.Generator().manual_seed(1)
    traj = _trajectories(2, 3, 7, g).to(torch.float32)
    enc = TrajectoryEncoder(8)
    e1 = enc(traj)
    noisy = Trajectories(
        traj.observations + 5 * (1 - traj.mask).unsqueeze(-1),
        traj.actions - 3 * (1 - traj.mask).unsqueeze(-1),
        traj.log_probs, traj.rewards + 7 * (1 - traj.mask), traj.mask, traj.goals,
    )  # fmt: skip
    assert torch.equal(enc(noisy), e1)
    assert e1.shape == (2, 8)


def test_trpo_combined_loss_and_kl_matches_separate_functions():
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(4, 30, 3, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    old_mean = obs @ w0
    log_std0 = torch.full((2,), -0.5, dtype=torch.float64)
    actions = old_mean + log_std0.exp() * torch.randn(old_mean.shape, generator=g,
                                                      dtype=torch.float64)  # fmt: skip
    old_lp = rl.gaussian_log_prob(actions, old_mean, log_std0)
    adv = torch.randn(4, 30, generator=g, dtype=torch.float64)

    def problem():
        w, ls = w0.clone().requires_grad_(), log_std0.clone().requires_grad_()

        def loss():
            lp = rl.gaussian_log_prob(actions, obs @ w, ls)
            return rl.importance_sampling_loss(lp, old_lp, adv, None).mean()

        def kl():
            return rl.gaussian_kl(old_mean, log_std0, obs @ w, ls).mean()

        return [w, ls], loss, kl

    p1, loss1, kl1 = problem()
    r1 = rl.trpo_step(p1, loss1, kl1)
    p2, loss2, kl2 = problem()
    r2 = rl.trpo_step(p2, lambda: (loss2(), kl2()))
    assert r1.line_search == r2.line_search and r1.line_search.accepted
    for a, b in zip(p1, p2):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("method", ["maml", "mumomaml"])
def test_trpo_meta_update_keeps_the_kl_bound_and_improves_the_surrogate(method):
    learner = _learner(method, dtype=torch.float32)
    goals = sample_goals(3, torch.Generator().manual_seed(4))
    loss_and_kl, _ = learner.outer_objective(NavigationBatch(goals, 11))
    loss0, kl0 = loss_and_kl()
    assert abs(float(kl0.detach())) < 1e-6
    params = [p for p in learner.parameters()]
    before = rl.flat_concat([p.detach() for p in params]).clone()
    res = rl.trpo_step(params, loss_and_kl, max_kl=0.01)
    assert res.line_search.accepted
    loss1, kl1 = loss_and_kl()  # recomputed through the inner loop at the new parameters
    assert float(kl1.detach()) <= 0.01 and float(loss1.detach()) < float(loss0.detach())
    assert res.expected_kl == pytest.approx(0.01, rel=1e-4)
    after = rl.flat_concat([p.detach() for p in params])
    if method == "mumomaml":  # the encoder and modulation heads are in the TRPO vector
        n_enc = sum(p.numel() for p in learner.encoder.parameters())
        n_mod = sum(p.numel() for p in learner.modulation.parameters())
        tail = slice(before.numel() - n_enc - n_mod, None)
        assert float((after[tail] - before[tail]).abs().max()) > 0
    # and meta_train_step does the same update from the trainer
    stats = learner.meta_train_step(NavigationBatch(goals, 12))
    assert 0 < stats["kl"] <= 0.01 and stats["step_fraction"] > 0
    assert ("return_pre" in stats) == (method == "mumomaml")


def test_modulated_objective_adds_the_modulated_policys_own_policy_gradient():
    """With weight w the TRPO objective's gradient is the adapted policy's plus w times the
    REINFORCE gradient of the modulated, unadapted policy on the first adaptation batch
    (which it sampled), over every parameter; the KL is the mean over the two batches."""
    goals = sample_goals(3, torch.Generator().manual_seed(5))
    batch = NavigationBatch(goals, 13)

    def grads(weight: float):
        learner = _learner("mumomaml", modulated_objective=weight)
        loss_and_kl, a = learner.outer_objective(batch)
        loss, kl = loss_and_kl()
        assert abs(float(kl.detach())) < 1e-12  # at the sampling parameters
        params = list(learner.parameters())
        return torch.autograd.grad(loss, params, allow_unused=True), learner, a, params

    g0, _, _, _ = grads(0.0)
    g2, learner, a, params = grads(2.0)
    traj = a.batches[0]
    t = goals.shape[0]
    obs = traj.observations.reshape(t, -1, 2)
    mean = learner.mean_action(learner.initial_weights(t), obs, learner.film(a.pre))
    log_probs = rl.gaussian_log_prob(traj.actions.reshape(t, -1, 2), mean, learner.log_std)
    pg = rl.reinforce_loss(
        log_probs, learner.advantages(traj).reshape(t, -1), traj.mask.reshape(t, -1)
    ).mean()
    want = torch.autograd.grad(pg, params, allow_unused=True)
    for p, x0, x2, w in zip(params, g0, g2, want):
        z = torch.zeros_like(p)
        x0, x2, w = (z if v is None else v for v in (x0, x2, w))
        _close(x2, x0 + 2 * w, rtol=1e-9, atol=1e-12)
    assert any(float(v.abs().max()) > 0 for v in want if v is not None)


def test_modulated_objective_is_refused_for_maml_and_checked():
    with pytest.raises(ValueError, match="modulated_objective.*maml"):
        NavigationLearner({"method": "maml", "modulated_objective": 1.0})
    with pytest.raises(ValueError, match="modulated_objective.*>= 0"):
        NavigationLearner({"method": "mumomaml", "modulated_objective": -1})
    assert NavigationLearner({"method": "mumomaml"}).config["modulated_objective"] == 1.0
    assert NavigationLearner({"method": "maml"}).config["modulated_objective"] == 0.0


@pytest.mark.parametrize("method", ["maml", "mumomaml"])
def test_agent_adapts_on_the_gymnasium_env_and_acts(method):
    learner = _learner(method, dtype=torch.float32).eval()
    env = gymnasium.make("mumo_fast/BimodalNavigation-v0", goal=(0.4, -0.2), horizon=8)
    assert learner.adapt(env, steps=1, seed=0) is learner
    obs, _ = env.reset()
    a = learner.act(obs)
    assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 0.1)
    obs, *_ = env.step(a)
    assert learner.act(obs, deterministic=False).shape == (2,)
    # a goal instead of an environment: the batched environment collects
    learner.adapt((0.4, -0.2), steps=2, seed=0)
    assert learner.act(np.zeros(2, np.float32)).shape == (2,)
    with pytest.raises(ValueError, match="steps"):
        learner.adapt((0.4, -0.2), steps=-1)
