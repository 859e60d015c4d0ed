"""mumo_fast.meta.rl: returns, GAE, the linear feature baseline, surrogate losses, Gaussian
policies, conjugate gradient, the KL-constrained line search and the TRPO step, each against
a written-out reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mumo_fast.meta import rl


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


def _episode_mask(t: int, b: int, h: int, g: torch.Generator) -> torch.Tensor:
    """Masks of episodes of random lengths 1..h (1 then 0), some full length."""
    lengths = torch.randint(1, h + 1, (t, b), generator=g)
    lengths[0, 0] = h
    return (torch.arange(h) < lengths.unsqueeze(-1)).to(torch.float64)


def test_discounted_returns_against_a_loop():
    g = _gen()
    t, b, h = 3, 4, 17
    rewards = torch.randn(t, b, h, generator=g, dtype=torch.float64)
    mask = _episode_mask(t, b, h, g)
    discount = 0.8 + 0.19 * float(torch.rand((), generator=g))
    expected = torch.zeros_like(rewards)
    for i in range(t):
        for j in range(b):
            ret = 0.0
            for k in reversed(range(h)):
                ret = float(mask[i, j, k]) * (float(rewards[i, j, k]) + discount * ret)
                expected[i, j, k] = ret
    out = rl.discounted_returns(rewards, mask, discount)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # no mask: every step counts; float32 within float32 rounding
    out32 = rl.discounted_returns(rewards[0].float(), None, discount)
    ref = rl.discounted_returns(rewards[0], torch.ones_like(rewards[0]), discount)
    torch.testing.assert_close(out32, ref.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gae_lambda", [0.0, 0.37, 0.95, 1.0])
def test_gae_against_a_loop(gae_lambda):
    g = _gen()
    t, b, h = 2, 5, 13
    rewards = torch.randn(t, b, h, generator=g, dtype=torch.float64)
    values = torch.randn(t, b, h, generator=g, dtype=torch.float64)
    mask = _episode_mask(t, b, h, g)
    discount = 0.9 + 0.09 * float(torch.rand((), generator=g))
    expected = torch.zeros_like(rewards)
    for i in range(t):
        for j in range(b):
            adv = 0.0
            for k in reversed(range(h)):
                if mask[i, j, k] == 0:
                    adv = 0.0
                    continue
                v_next = float(values[i, j, k + 1] * mask[i, j, k + 1]) if k + 1 < h else 0.0
                delta = float(rewards[i, j, k]) + discount * v_next - float(values[i, j, k])
                adv = delta + discount * gae_lambda * adv
                expected[i, j, k] = adv
    out = rl.gae(rewards, values, mask, discount, gae_lambda)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if gae_lambda == 1.0:
        returns = rl.discounted_returns(rewards, mask, discount)
        torch.testing.assert_close(out, (returns - values) * mask, rtol=1e-12, atol=1e-12)


def test_normalize_advantages_per_task():
    g = _gen()
    adv = 3 + 2 * torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    adv[1] *= 10
    mask = _episode_mask(3, 4, 9, g)
    out = rl.normalize_advantages(adv, mask)
    for i in range(3):
        sel = out[i][mask[i] == 1]
        assert abs(float(sel.mean())) < 1e-12
        assert float(sel.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert (out[mask == 0] == 0).all()


def test_linear_baseline_features_are_rllabs():
    g = _gen()
    obs = 8 * torch.randn(2, 3, 7, 2, generator=g, dtype=torch.float64)  # some beyond the clip
    feats = rl.linear_baseline_features(obs)
    assert feats.shape == (2, 3, 7, 8)
    o = np.clip(obs[1, 2].numpy(), -10, 10)
    al = np.arange(7).reshape(-1, 1) / 100.0
    ref = np.concatenate([o, o**2, al, al**2, al**3, np.ones((7, 1))], axis=1)  # rllab
    np.testing.assert_allclose(feats[1, 2].numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reg", [1e-5, 0.3])
def test_baseline_fit_against_numpy_lstsq(reg):
    g = _gen()
    t, b, h = 4, 6, 20
    obs = torch.randn(t, b, h, 2, generator=g).cumsum(2) * 0.1  # float32, as rollouts
    returns = torch.randn(t, b, h, generator=g).cumsum(2)
    mask = _episode_mask(t, b, h, g)
    feats = rl.linear_baseline_features(obs)
    coeffs = rl.fit_linear_baseline(feats, returns, mask, reg=reg)
    assert coeffs.shape == (t, 8) and coeffs.dtype == torch.float64
    for i in range(t):
        keep = mask[i].reshape(-1) == 1
        x = feats[i].reshape(-1, 8).double().numpy()[keep.numpy()]
        y = returns[i].reshape(-1).double().numpy()[keep.numpy()]
        # the ridge solution in closed form: least squares on [X; sqrt(reg) I], [y; 0]
        xa = np.concatenate([x, math.sqrt(reg) * np.eye(8)])
        ya = np.concatenate([y, np.zeros(8)])
        ref = np.linalg.lstsq(xa, ya, rcond=None)[0]
        np.testing.assert_allclose(coeffs[i].numpy(), ref, rtol=1e-6, atol=1e-6)
    values = rl.linear_baseline_values(obs, returns, mask, reg=reg)
    assert values.dtype == torch.float32 and not values.requires_grad
    assert (values[mask == 0] == 0).all()
    ref_values = rl.predict_linear_baseline(feats, coeffs) * mask
    torch.testing.assert_close(values, ref_values.float(), rtol=1e-5, atol=1e-5)
    # a better fit than the best constant on the same rows (the bias is a feature)
    resid = ((values - returns) * mask).pow(2).sum()
    const = ((returns - (returns * mask).sum() / mask.sum()) * mask).pow(2).sum()
    assert resid < const


@pytest.mark.parametrize("gae_lambda", [1.0, 0.9])
def test_compute_advantages_against_a_per_episode_numpy_pipeline(gae_lambda):
    g = _gen()
    t, b, h, discount = 3, 5, 15, 0.95
    obs = torch.randn(t, b, h, 2, generator=g).cumsum(2) * 0.1
    rewards = -torch.rand(t, b, h, generator=g)
    mask = _episode_mask(t, b, h, g).float()
    rewards = rewards * mask
    out = rl.compute_advantages(obs, rewards, mask, discount, gae_lambda=gae_lambda)
    for i in range(t):  # rllab-style: a list of variable-length paths per task
        paths = []
        for j in range(b):
            n = int(mask[i, j].sum())
            r = rewards[i, j, :n].double().numpy()
            ret = np.array([sum(discount**k * r[s + k] for k in range(n - s)) for s in range(n)])
            o = obs[i, j, :n].double().numpy()
            tt = np.arange(n).reshape(-1, 1) / 100.0
            feats = np.concatenate([o, o**2, tt, tt**2, tt**3, np.ones((n, 1))], axis=1)
            paths.append((r, ret, feats))
        x = np.concatenate([p[2] for p in paths])
        y = np.concatenate([p[1] for p in paths])
        coeffs = np.linalg.lstsq(x.T @ x + 1e-5 * np.eye(8), x.T @ y, rcond=None)[0]
        advs = []
        for r, _, feats in paths:
            v = np.append(feats @ coeffs, 0.0)
            deltas = r + discount * v[1:] - v[:-1]
            a = np.array([sum((discount * gae_lambda) ** k * deltas[s + k]
                               for k in range(len(r) - s)) for s in range(len(r))])  # fmt: skip
            advs.append(a)
        flat = np.concatenate(advs)
        flat = (flat - flat.mean()) / (flat.std() + 1e-8)
        got = out[i][mask[i] == 1].double().numpy()
        np.testing.assert_allclose(got, flat, rtol=1e-4, atol=1e-4)
    assert (out[mask == 0] == 0).all()


def test_baseline_of_a_task_without_steps_is_zero():
    g = _gen()
    feats = torch.randn(2, 10, 8, generator=g, dtype=torch.float64)
    targets = torch.randn(2, 10, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.float64)
    mask[1] = 0
    coeffs = rl.fit_linear_baseline(feats, targets, mask)
    assert (coeffs[1] == 0).all() and (coeffs[0] != 0).all()


def test_gaussian_log_prob_and_kl_against_torch_distributions():
    g = _gen()
    mean_p, mean_q, a = (torch.randn(5, 3, 2, generator=g, dtype=torch.float64) for _ in "pqa")
    ls_p = 0.5 * torch.randn(2, generator=g, dtype=torch.float64)
    ls_q = 0.5 * torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    p = torch.distributions.Normal(mean_p, ls_p.exp())
    q = torch.distributions.Normal(mean_q, ls_q.exp())
    torch.testing.assert_close(rl.gaussian_log_prob(a, mean_p, ls_p), p.log_prob(a).sum(-1))
    torch.testing.assert_close(
        rl.gaussian_kl(mean_p, ls_p, mean_q, ls_q),
        torch.distributions.kl_divergence(p, q).sum(-1),
    )


def test_reinforce_and_importance_losses_against_a_per_task_loop():
    g = _gen()
    t, b, h = 3, 4, 6
    log_probs = torch.randn(t, b, h, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(t, b, h, generator=g, dtype=torch.float64)
    mask = _episode_mask(t, b, h, g)
    loss = rl.reinforce_loss(log_probs, adv, mask)
    assert loss.shape == (t,)
    for i in range(t):
        terms = [
            float(log_probs[i, j, k].detach() * adv[i, j, k])
            for j in range(b)
            for k in range(h)
            if mask[i, j, k] == 1
        ]
        assert float(loss[i].detach()) == pytest.approx(-sum(terms) / len(terms), rel=1e-12)
    (grad,) = torch.autograd.grad(loss.sum(), log_probs)
    n = mask.sum((1, 2)).view(t, 1, 1)
    torch.testing.assert_close(grad, -adv * mask / n)
    # the importance-sampling loss: -mean(A) at the old policy, the same gradient there
    old = log_probs.detach().clone()
    is_loss = rl.importance_sampling_loss(log_probs, old, adv, mask)
    torch.testing.assert_close(is_loss, -(adv * mask).sum((1, 2)) / n.view(t))
    (is_grad,) = torch.autograd.grad(is_loss.sum(), log_probs)
    torch.testing.assert_close(is_grad, grad)


def _spd(n: int, g: torch.Generator, cond: float = 50.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


def test_conjugate_gradient_solves_a_small_spd_system():
    g = _gen()
    n = 8
    a = _spd(n, g)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    calls = []

    def hvp(v):
        calls.append(1)
        return a @ v

    x = rl.conjugate_gradient(hvp, b, iterations=n, residual_tol=0.0)
    ref = np.linalg.solve(a.numpy(), b.numpy())
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-8, atol=1e-10)
    assert len(calls) == n
    # fewer iterations: not yet the solution, but closer in the A-norm (which CG decreases
    # monotonically; the residual's 2-norm need not)
    x3 = rl.conjugate_gradient(hvp, b, iterations=3)
    err = torch.from_numpy(ref)
    a_norm = lambda e: float(e @ a @ e)  # noqa: E731
    assert 1e-12 < a_norm(x3 - err) < a_norm(err)
    # stops early once the residual is below the tolerance
    calls.clear()
    rl.conjugate_gradient(hvp, a @ b, iterations=50, residual_tol=1e-16)
    assert len(calls) <= n + 1


def test_hessian_vector_product_by_double_backward_with_damping():
    g = _gen()
    a = _spd(6, g)
    w = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def f(w, c, unused):
        x = torch.cat([w.reshape(-1), c])
        return 0.5 * x @ a @ x + torch.sin(x).sum()  # the sine: a parameter-dependent Hessian

    hvp = rl.hessian_vector_product(f(w, c, unused), [w, c, unused], damping=0.1)
    full = torch.autograd.functional.hessian(
        lambda v: f(v[:4].view(2, 2), v[4:6], v[6:]),
        torch.cat([w.reshape(-1), c, unused]).detach(),
    )
    for _ in range(2):  # the graph survives repeated calls
        v = torch.randn(9, generator=g, dtype=torch.float64)
        torch.testing.assert_close(hvp(v), full @ v + 0.1 * v, rtol=1e-10, atol=1e-10)
    assert (full[6:] == 0).all()


def _toy_search(x0, step, max_kl):
    """Minimise (x - 1)**2 from x0 along -step with KL(x) = 0.5 (x - x0)**2."""
    tried = []

    def evaluate(fraction):
        tried.append(fraction)
        x = x0 - fraction * step
        return (x - 1.0) ** 2, 0.5 * (x - x0) ** 2

    return evaluate, tried


def test_line_search_accepts_the_first_fraction_within_the_kl_bound():
    # from 0 with a full step to x = 4: the loss improves for 0 < x < 2 (fraction < 0.5),
    # KL <= 0.5 needs x <= 1 (fraction <= 0.25): 0.8**7 = 0.2097 is the first such fraction
    evaluate, tried = _toy_search(0.0, -4.0, max_kl=0.5)
    res = rl.backtracking_line_search(evaluate, 1.0, max_kl=0.5, ratio=0.8, max_steps=15)
    assert res.accepted and res.tries == 8 and len(tried) == 8
    assert res.fraction == pytest.approx(0.8**7, rel=1e-12)
    assert res.kl <= 0.5 and res.loss < 1.0
    assert tried == pytest.approx([0.8**i for i in range(8)], rel=1e-12)
    # a looser bound accepts an earlier fraction: KL <= 2 needs fraction <= 0.5, and the loss
    # needs fraction < 0.5: 0.8**4 = 0.4096
    evaluate, _ = _toy_search(0.0, -4.0, max_kl=2.0)
    res = rl.backtracking_line_search(evaluate, 1.0, max_kl=2.0, ratio=0.8, max_steps=15)
    assert res.accepted and res.tries == 5


def test_line_search_rejects_when_nothing_improves_or_the_kl_is_too_large():
    evaluate, tried = _toy_search(0.0, 1.0, max_kl=10.0)  # uphill: x < 0 never improves
    res = rl.backtracking_line_search(evaluate, 1.0, max_kl=10.0, ratio=0.8, max_steps=15)
    assert not res.accepted and res.tries == 15 and len(tried) == 15
    evaluate, tried = _toy_search(0.0, -4.0, max_kl=1e-6)  # improving, but past the bound
    res = rl.backtracking_line_search(evaluate, 1.0, max_kl=1e-6, ratio=0.8, max_steps=10)
    assert not res.accepted and len(tried) == 10
    # equal loss is no improvement
    res = rl.backtracking_line_search(lambda f: (1.0, 0.0), 1.0, max_kl=1.0, max_steps=3)
    assert not res.accepted


def _policy_problem(g):
    """A linear Gaussian policy on random observations with fixed advantages: the
    importance-sampling loss and the KL from the sampling policy, as closures over the
    parameters and as functions of a flat parameter vector."""
    scales = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)  # an anisotropic Fisher matrix
    obs = torch.randn(4, 50, 3, generator=g, dtype=torch.float64) * scales
    w = (0.3 * torch.randn(3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    log_std = torch.full((2,), -0.5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        mean_old, log_std_old = obs @ w, log_std.clone()
        noise = torch.randn(mean_old.shape, generator=g, dtype=torch.float64)
        actions = mean_old + log_std_old.exp() * noise
        old_lp = rl.gaussian_log_prob(actions, mean_old, log_std_old)
    adv = torch.randn(4, 50, generator=g, dtype=torch.float64)

    def loss_at(w, log_std):
        lp = rl.gaussian_log_prob(actions, obs @ w, log_std)
        return rl.importance_sampling_loss(lp, old_lp, adv, None).mean()

    def kl_at(w, log_std):
        return rl.gaussian_kl(mean_old, log_std_old, obs @ w, log_std).mean()

    def flat_kl(v):
        return kl_at(v[:6].view(3, 2), v[6:])

    return [w, log_std], (lambda: loss_at(w, log_std)), (lambda: kl_at(w, log_std)), flat_kl


def test_trpo_step_keeps_the_kl_bound_improves_and_follows_the_natural_gradient():
    g = _gen()
    params, loss_fn, kl_fn, flat_kl = _policy_problem(g)
    old = rl.flat_concat([p.detach() for p in params]).clone()
    loss0 = loss_fn()
    assert float(kl_fn().detach()) == 0.0
    # the reference step: the exact natural gradient (8 parameters, so 10 conjugate-gradient
    # iterations are exact), scaled so that the quadratic model of the KL equals the bound
    grad = rl.flat_concat(torch.autograd.grad(loss0, params)).detach()
    damping, max_kl = 1e-5, 0.01
    hess = torch.autograd.functional.hessian(flat_kl, old) + damping * torch.eye(8).double()
    direction = torch.linalg.solve(hess, grad)
    step = direction * math.sqrt(2 * max_kl / float(direction @ hess @ direction))

    res = rl.trpo_step(params, loss_fn, kl_fn, max_kl=max_kl, damping=damping)
    new = rl.flat_concat([p.detach() for p in params])
    assert res.line_search.accepted
    assert res.expected_kl == pytest.approx(max_kl, rel=1e-6)
    assert float(kl_fn().detach()) <= max_kl and float(loss_fn().detach()) < float(loss0.detach())
    assert float(kl_fn().detach()) == pytest.approx(res.line_search.kl, rel=1e-12)
    assert float(loss_fn().detach()) == pytest.approx(res.line_search.loss, rel=1e-12)
    # conjugate gradient stops at a squared residual of 1e-10: agreement to ~1e-4 relative
    taken = (old - new) / res.line_search.fraction
    assert float((taken - step).norm()) < 1e-3 * float(step.norm())
    # and it is the natural gradient, not the plain one
    cos = float(taken @ grad) / float(taken.norm() * grad.norm())
    assert cos < 0.99


def test_trpo_step_restores_the_parameters_when_the_line_search_fails():
    g = _gen()
    params, loss_fn, kl_fn, _ = _policy_problem(g)
    old = rl.flat_concat([p.detach() for p in params]).clone()
    calls = []

    def worse_after_the_first_call():  # every tried step looks worse than the start
        calls.append(1)
        return loss_fn() + (0.0 if len(calls) == 1 else 1.0)

    res = rl.trpo_step(params, worse_after_the_first_call, kl_fn, max_backtracks=4)
    assert not res.line_search.accepted and res.line_search.tries == 4 and len(calls) == 5
    assert res.line_search.fraction == pytest.approx(0.8**3)
    torch.testing.assert_close(rl.flat_concat([p.detach() for p in params]), old, rtol=0, atol=0)
