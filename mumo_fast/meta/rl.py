"""Policy-gradient and TRPO math for meta-RL, batched over tasks and domain-free.

Conventions: a batch of rollouts is laid out ``[T, B, H, ...]`` (tasks, trajectories per
task, time steps); ``mask`` ``[T, B, H]`` is 1 (or True) for the steps an episode actually
took and 0 after it ended (episodes are padded to ``H``, never dropped: once 0 a mask stays
0).  Per-task reductions run over every axis after the first.  Functions that only need a
time axis accept any leading shape ``[..., H]``.

Pieces (rllab / MAML-RL conventions where they exist):

- ``discounted_returns``, ``gae``: reward-to-go and generalised advantage estimates
  (one matrix product with a discount matrix, no Python loop over time);
- ``linear_baseline_features``, ``fit_linear_baseline``, ``predict_linear_baseline``,
  ``linear_baseline_values``: rllab's LinearFeatureBaseline, fitted per task by batched
  ridge-regularised least squares; ``compute_advantages``: returns, baseline, GAE and
  normalisation in one call;
- ``normalize_advantages``, ``reinforce_loss``, ``importance_sampling_loss``: surrogate
  losses per task (to minimise);
- ``gaussian_log_prob``, ``gaussian_kl``: diagonal Gaussian policies;
- ``flat_concat``, ``assign_flat``, ``hessian_vector_product``, ``conjugate_gradient``,
  ``kl_step``, ``backtracking_line_search``, ``trpo_step``: the TRPO update on flat vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# ------------------------------------------------------------------------ returns, GAE


def _mask_like(mask: Tensor | None, x: Tensor) -> Tensor:
    return torch.ones_like(x) if mask is None else mask.to(x.dtype)


def discount_matrix(horizon: int, discount: float, *, dtype=torch.float32, device=None) -> Tensor:
    """``M`` ``[H, H]`` with ``M[k, t] = discount ** (k - t)`` for ``k >= t``, else 0, so
    that ``(x @ M)[..., t] = sum_{k >= t} discount ** (k - t) * x[..., k]``."""
    idx = torch.arange(horizon, device=device)
    power = (idx.unsqueeze(1) - idx.unsqueeze(0)).to(torch.float64)  # k - t
    m = torch.full_like(power, float(discount)) ** power.clamp_min(0)
    return torch.where(power >= 0, m, torch.zeros_like(m)).to(dtype)


def discounted_returns(rewards: Tensor, mask: Tensor | None, discount: float) -> Tensor:
    """Reward-to-go ``R_t = sum_{k >= t} discount**(k - t) * m_k * r_k``, times ``m_t``.

    ``rewards``, ``mask``: ``[..., H]``; returns ``[..., H]`` (0 where masked).  For masks
    that are 1 then 0 (ended episodes) this is ``R_t = m_t * (r_t + discount * R_{t+1})``
    with ``R_H = 0``: no bootstrapping at the horizon (rllab's convention).
    """
    m = _mask_like(mask, rewards)
    dm = discount_matrix(rewards.shape[-1], discount, dtype=rewards.dtype, device=rewards.device)
    return ((rewards * m) @ dm) * m


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor | None, discount: float, gae_lambda: float
) -> Tensor:
    """Generalised advantage estimates ``A_t = sum_{k >= t} (discount*gae_lambda)**(k-t)
    delta_k`` with ``delta_t = r_t + discount * V_{t+1} * m_{t+1} - V_t`` (``V`` after the
    last step of an episode, or after ``H``, is 0, as rllab pads ``baselines`` with 0).

    ``rewards``, ``values``, ``mask``: ``[..., H]``; returns ``[..., H]``, 0 where masked;
    ``values`` is treated as a constant (detached).  ``gae_lambda=1`` gives
    ``discounted_returns - values``; ``gae_lambda=0`` the one-step TD errors.
    """
    m = _mask_like(mask, rewards)
    v = values.detach() * m
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], dim=-1)
    delta = (rewards + discount * v_next - v) * m
    dm = discount_matrix(
        rewards.shape[-1], discount * gae_lambda, dtype=rewards.dtype, device=rewards.device
    )
    return (delta @ dm) * m


def _task_sum(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def masked_mean_per_task(x: Tensor, mask: Tensor | None) -> Tensor:
    """``[T, ...]`` -> ``[T]``: the mean of ``x`` over the unmasked entries of each task."""
    m = _mask_like(mask, x)
    return _task_sum(x * m) / _task_sum(m).clamp_min(1)


def normalize_advantages(advantages: Tensor, mask: Tensor | None, eps: float = 1e-8) -> Tensor:
    """Standardise ``advantages`` ``[T, ...]`` per task over its unmasked entries (mean 0,
    standard deviation 1; rllab's ``center_adv``); masked entries become 0."""
    m = _mask_like(mask, advantages)
    view = (-1,) + (1,) * (advantages.dim() - 1)
    n = _task_sum(m).clamp_min(1)
    mean = _task_sum(advantages * m) / n
    centred = (advantages - mean.view(view)) * m
    std = (_task_sum(centred * centred) / n).sqrt()
    return centred / (std.view(view) + eps)


# ---------------------------------------------------------------- linear feature baseline


def linear_baseline_features(
    observations: Tensor, *, time_scale: float = 100.0, clip: float = 10.0
) -> Tensor:
    """rllab's LinearFeatureBaseline features of ``observations`` ``[..., H, D]``:
    ``[o, o**2, t/100, (t/100)**2, (t/100)**3, 1]`` with ``o`` clipped to ``[-clip, clip]``
    and ``t = 0 .. H-1`` the time step; returns ``[..., H, 2 D + 4]``."""
    o = observations.clamp(-clip, clip)
    h = observations.shape[-2]
    t = torch.arange(h, dtype=o.dtype, device=o.device) / time_scale
    t = t.view(h, 1).expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    features: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    *,
    reg: float = 1e-5,
    max_tries: int = 5,
) -> Tensor:
    """Per-task ridge least squares: ``coeffs[i] = argmin_w sum_n m (x_n w - y_n)**2 +
    reg_i |w|**2`` for each task ``i``, i.e. ``(X^T X + reg I) w = X^T y`` over the task's
    unmasked rows, solved in float64 for all tasks at once (``torch.linalg.solve_ex``).

    ``features`` ``[T, ..., F]``, ``targets`` and ``mask`` ``[T, ...]``; returns ``[T, F]``
    (float64, no gradient).  As rllab, a task whose system fails (singular or non-finite)
    is retried with ``reg`` times 10, up to ``max_tries`` times; a task that still fails gets
    zero coefficients (a zero baseline).
    """
    with torch.no_grad():
        t, f = features.shape[0], features.shape[-1]
        m = _mask_like(mask, targets).to(torch.float64).reshape(t, -1)
        x = features.to(torch.float64).reshape(t, -1, f) * m.unsqueeze(-1)
        y = targets.to(torch.float64).reshape(t, -1) * m
        xtx = x.transpose(1, 2) @ x
        xty = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(f, dtype=torch.float64, device=x.device)
        regs = torch.full((t,), float(reg), dtype=torch.float64, device=x.device)
        for _ in range(max_tries):
            coeffs, info = torch.linalg.solve_ex(xtx + regs.view(t, 1, 1) * eye, xty)
            bad = (info != 0) | ~torch.isfinite(coeffs).all(-1)
            if not bool(bad.any()):
                return coeffs
            regs = torch.where(bad, regs * 10, regs)
        return torch.where(bad.unsqueeze(-1), torch.zeros_like(coeffs), coeffs)


def predict_linear_baseline(features: Tensor, coeffs: Tensor) -> Tensor:
    """``features`` ``[T, ..., F]``, ``coeffs`` ``[T, F]`` -> values ``[T, ...]`` (in the
    features' dtype)."""
    c = coeffs.to(features.dtype).view(coeffs.shape[0], *([1] * (features.dim() - 2)), -1)
    return (features * c).sum(-1)


def linear_baseline_values(
    observations: Tensor,
    returns: Tensor,
    mask: Tensor | None,
    *,
    reg: float = 1e-5,
    time_scale: float = 100.0,
) -> Tensor:
    """Fit the linear feature baseline to ``returns`` per task and evaluate it on the same
    steps (MAML-RL's use: fitted on the batch it serves).  ``observations`` ``[T, B, H, D]``,
    ``returns``, ``mask`` ``[T, B, H]``; returns values ``[T, B, H]``, 0 where masked, no
    gradient."""
    feats = linear_baseline_features(observations, time_scale=time_scale)
    coeffs = fit_linear_baseline(feats, returns, mask, reg=reg)
    return predict_linear_baseline(feats, coeffs).detach() * _mask_like(mask, returns)


def compute_advantages(
    observations: Tensor,
    rewards: Tensor,
    mask: Tensor | None,
    discount: float,
    *,
    gae_lambda: float = 1.0,
    normalize: bool = True,
    reg: float = 1e-5,
) -> Tensor:
    """MAML-RL's sample processing per task: discounted returns, the linear feature baseline
    fitted to them on the same batch, GAE with it (``gae_lambda=1``, the default: returns
    minus baseline), then (``normalize``) standardised per task.

    ``observations`` ``[T, B, H, D]``, ``rewards``, ``mask`` ``[T, B, H]``; returns advantages
    ``[T, B, H]``, 0 where masked, no gradient.
    """
    with torch.no_grad():
        returns = discounted_returns(rewards, mask, discount)
        values = linear_baseline_values(observations, returns, mask, reg=reg)
        adv = gae(rewards, values, mask, discount, gae_lambda)
        return normalize_advantages(adv, mask) if normalize else adv


# ---------------------------------------------------------------- policies and surrogates

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of ``actions`` ``[..., A]`` under a diagonal Gaussian (``log_std``
    broadcastable to ``mean``), summed over the last axis: ``[...]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last (action) axis: ``[...]``."""
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    diff = (mean_p - mean_q) * torch.exp(-log_std_q)
    return (0.5 * (var_ratio + diff * diff - 1) - (log_std_p - log_std_q)).sum(-1)


def reinforce_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor | None) -> Tensor:
    """The REINFORCE surrogate loss per task (minimise it): ``-mean(log_prob * A)`` over
    each task's unmasked steps (rllab's VPG: sum over steps divided by the number of steps).

    ``log_probs``, ``advantages``, ``mask``: ``[T, B, H]`` (any ``[T, ...]``); returns
    ``[T]``.  ``advantages`` is detached; gradients flow through ``log_probs`` only.
    """
    return -masked_mean_per_task(log_probs * advantages.detach(), mask)


def importance_sampling_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor | None
) -> Tensor:
    """TRPO's surrogate loss per task (minimise it): ``-mean(exp(log_prob - old_log_prob)
    * A)`` over unmasked steps; ``old_log_probs`` and ``advantages`` detached.  Shapes as
    ``reinforce_loss``; returns ``[T]``.  Its gradient at ``log_probs == old_log_probs``
    equals ``reinforce_loss``'s."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    return -masked_mean_per_task(ratio * advantages.detach(), mask)


# ------------------------------------------------------------------ TRPO on flat vectors


def flat_concat(tensors: Sequence[Tensor | None], like: Sequence[Tensor] | None = None) -> Tensor:
    """Concatenate flattened tensors into one vector; a None entry (an unused parameter's
    gradient) counts as zeros shaped like the matching tensor of ``like``."""
    parts = []
    for i, x in enumerate(tensors):
        if x is None:
            if like is None:
                raise ValueError("a None entry needs `like`")
            x = torch.zeros_like(like[i])
        parts.append(x.reshape(-1))
    return torch.cat(parts)


def assign_flat(params: Sequence[Tensor], vector: Tensor) -> None:
    """Copy consecutive slices of ``vector`` into ``params`` in place (no autograd record)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, parameters {offset}")


def hessian_vector_product(
    scalar: Tensor, params: Sequence[Tensor], *, damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """``v -> (d^2 scalar / d params^2) v + damping * v`` on flat vectors, by double
    backward (the first gradient is built once with ``create_graph=True``; each call
    differentiates ``grad . v`` again, keeping the graph for the next call).  For TRPO
    ``scalar`` is the mean KL between the old (detached) and the current policy."""
    params = list(params)
    grads = torch.autograd.grad(scalar, params, create_graph=True, allow_unused=True)
    flat = flat_concat([g if g is not None else torch.zeros_like(p)
                        for g, p in zip(grads, params)])  # fmt: skip

    def hvp(v: Tensor) -> Tensor:
        if not flat.requires_grad:  # the scalar is linear in params: zero curvature
            return damping * v
        hv = torch.autograd.grad(flat @ v.detach(), params, retain_graph=True, allow_unused=True)
        return flat_concat(hv, like=params).detach() + damping * v

    return hvp


def conjugate_gradient(
    hvp: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int = 10,
    *,
    residual_tol: float = 1e-10,
) -> Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive definite ``A`` given only
    ``hvp(v) = A v`` (flat vectors ``[N]``), starting from ``x = 0``; at most ``iterations``
    steps, stopping once the squared residual norm is below ``residual_tol`` (rllab's
    ``krylov.cg``).  Exact (up to rounding) after ``N`` steps."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = r @ r
    for _ in range(iterations):
        if float(rdotr) < residual_tol:
            break
        z = hvp(p)
        alpha = rdotr / (p @ z)
        x = x + alpha * p
        r = r - alpha * z
        new_rdotr = r @ r
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def kl_step(
    direction: Tensor, hvp: Callable[[Tensor], Tensor], max_kl: float, *, with_kl: bool = False
) -> Tensor | tuple[Tensor, float]:
    """Scale ``direction`` so that the quadratic model of the KL, ``0.5 s^T H s``, equals
    ``max_kl``: ``s = direction * sqrt(2 max_kl / (direction^T H direction))``.  With
    ``with_kl`` also that model's value at ``s`` (``max_kl`` up to rounding and the guard
    against zero curvature), from the same Hessian-vector product."""
    shs = direction @ hvp(direction)
    scale = torch.sqrt(2 * max_kl / (shs.clamp_min(0) + 1e-12))
    if with_kl:
        return direction * scale, 0.5 * float(scale * scale * shs)
    return direction * scale


@dataclass
class LineSearchResult:
    """``accepted``: whether a step fraction passed; ``fraction``: the accepted one (the last
    tried if none); ``loss``, ``kl``: at that fraction; ``tries``: evaluations made."""

    accepted: bool
    fraction: float
    loss: float
    kl: float
    tries: int


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_before: float,
    *,
    max_kl: float,
    ratio: float = 0.8,
    max_steps: int = 15,
) -> LineSearchResult:
    """KL-constrained backtracking: try the fractions ``1, ratio, ratio**2, ...`` (at most
    ``max_steps``) of a full step and accept the first whose loss is strictly below
    ``loss_before`` and whose KL is at most ``max_kl`` (rllab's ConjugateGradientOptimizer).

    ``evaluate(fraction)`` applies that fraction of the step (e.g. sets the parameters to
    ``old - fraction * step``) and returns ``(loss, kl)`` there.  The helper changes nothing
    itself: when ``accepted`` is False the caller restores the old parameters.
    """
    fraction, loss, kl = 1.0, math.nan, math.nan
    for i in range(max_steps):
        fraction = ratio**i
        loss, kl = (float(v) for v in evaluate(fraction))
        if loss < loss_before and kl <= max_kl:
            return LineSearchResult(True, fraction, loss, kl, i + 1)
    return LineSearchResult(False, fraction, loss, kl, max_steps)


@dataclass
class TRPOResult:
    """One ``trpo_step``: the loss before, the line search's outcome, the full step's
    quadratic-model KL check (``expected_kl`` = 0.5 s^T H s, about ``max_kl``)."""

    loss_before: float
    line_search: LineSearchResult
    step_norm: float
    expected_kl: float


def trpo_step(
    params: Sequence[Tensor],
    loss_fn: Callable[[], Tensor] | Callable[[], tuple[Tensor, Tensor]],
    kl_fn: Callable[[], Tensor] | None = None,
    *,
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_iterations: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> TRPOResult:
    """One TRPO update of ``params`` in place (the paper's defaults).

    ``loss_fn()``: the scalar surrogate loss at the current parameters (for MAML-TRPO the
    post-adaptation importance-sampling loss, recomputing the inner loop); ``kl_fn()``: the
    scalar mean ``KL(old || current)`` with the old policy's distribution held fixed (0 at
    the start, its Hessian the Fisher matrix).  Steps: gradient ``g`` of the loss, natural
    direction ``H^-1 g`` by ``cg_iterations`` of conjugate gradient on the damped KL Hessian
    (double backward), scaled to the KL bound, then the backtracking line search; if no
    fraction is accepted the parameters are restored.  ``loss_fn``/``kl_fn`` run with
    gradients enabled (an inner loop inside them may need autograd).

    With ``kl_fn=None``, ``loss_fn()`` returns ``(loss, kl)`` computed together (one inner
    loop and one forward for both, as MAML-TRPO's surrogate does; the loss's gradient then
    keeps the shared graph for the KL's Hessian-vector products).

    ``reduce``: for data-parallel training, where ``loss_fn`` and ``kl_fn`` are means over
    this process's share of the tasks; ``reduce(x)`` turns such a local value (a tensor)
    into the whole batch's (e.g. ``mumo_fast.train.distributed.task_mean``). It is applied
    to the flat surrogate gradient, to every Hessian-vector product of the KL (the damping
    added after it) and to the losses and KLs the line search compares, so every process
    computes the same direction and the same accepted fraction, and parameters that start
    equal stay equal. None (the default): the local values are the batch's.
    """
    params = list(params)
    if kl_fn is None:
        loss, kl = loss_fn()  # type: ignore[misc]

        def losses() -> tuple[Tensor, Tensor]:
            return loss_fn()  # type: ignore[return-value]
    else:
        loss, kl = loss_fn(), None

        def losses() -> tuple[Tensor, Tensor]:
            return loss_fn(), kl_fn()  # type: ignore[return-value,misc]

    g = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=kl is not None)
    g = flat_concat(g, like=params).detach()
    kl_at_start = kl if kl is not None else kl_fn()  # type: ignore[misc]
    if reduce is None:
        hvp = hessian_vector_product(kl_at_start, params, damping=damping)
        loss_before = float(loss.detach())
    else:
        g = reduce(g)
        local_hvp = hessian_vector_product(kl_at_start, params)

        def hvp(v: Tensor) -> Tensor:
            return reduce(local_hvp(v)) + damping * v

        loss_before = float(reduce(loss.detach()))
    direction = conjugate_gradient(hvp, g, cg_iterations)
    step, expected_kl = kl_step(direction, hvp, max_kl, with_kl=True)
    old = flat_concat([p.detach() for p in params]).clone()

    def evaluate(fraction: float) -> tuple[float, float]:
        assign_flat(params, old - fraction * step)
        new_loss, new_kl = losses()
        if reduce is not None:
            both = reduce(torch.stack([new_loss.detach(), new_kl.detach()]))
            return float(both[0]), float(both[1])
        return float(new_loss.detach()), float(new_kl.detach())

    result = backtracking_line_search(
        evaluate, loss_before, max_kl=max_kl, ratio=backtrack_ratio, max_steps=max_backtracks
    )
    if not result.accepted:
        assign_flat(params, old)
    return TRPOResult(loss_before, result, float(step.norm()), expected_kl)
