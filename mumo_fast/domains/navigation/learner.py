"""MuMoMAML and MAML for meta-RL on bimodal navigation, on the core's batched inner loop.

The policy is the core's FiLM MLP (``mumo_fast.models.MLP``, 2-32-32-2, ReLU, FiLM on both
hidden layers) with a state-independent log-std (a learned parameter ``[2]``), Gaussian
actions.  Its fast weights carry the task axis (``mumo_fast.meta.fast_weights``): every
task's policy is evaluated in one batched call, and ``mumo_fast.meta.inner_loop.inner_step``
adapts all tasks at once.  The inner loss is the REINFORCE surrogate with the linear feature
baseline (``reinforce_loss_fn``), which fits the core's per-task loss interface
``loss_fn(output, target) -> [T]``: the output is the policy's mean action at every visited
observation, the target packs the sampled actions, the advantages and the mask.

One meta-iteration (paper Alg. 1 with TRPO, MAML-RL's sample processing):

1. MuMoMAML: ``B`` trajectories per task with the unmodulated, unadapted policy; the
   ``TrajectoryEncoder`` (a GRU, hidden 8) embeds them, the core's ``ModulationHeads`` turn
   the embedding into FiLM vectors (gamma, beta) for both hidden layers.  MAML: no encoder,
   no FiLM.
2. The first adaptation batch with the modulated (MAML: initial) policy, then one inner
   policy-gradient step per training inner step (``inner_steps``, 1 in training); each later
   adaptation batch is sampled with the policy adapted so far.  The FiLM vectors are not
   updated in the inner loop; the inner loop adapts every weight and bias of the MLP, **not**
   the log-std (a meta-parameter, learned by the outer step only).
3. Validation trajectories with the adapted policy; the outer loss is TRPO's
   importance-sampling surrogate of the adapted policy on them, the constraint the mean KL
   between the sampling policy and the re-adapted one.  ``meta.rl.trpo_step`` differentiates
   both through the inner loop (second order; the KL's Hessian-vector products third
   order), over every meta-parameter: MLP, log-std and, for MuMoMAML, the encoder and the
   modulation heads.  The learner updates its own parameters (the trainer runs with
   ``TrainSettings(learner_steps=True)``); under torchrun each process samples its share
   of the tasks and ``meta_train_step(..., reduce=)`` averages the TRPO step's quantities
   over the processes.

The learner is also the agent a user drives (``mumo_fast.load`` returns it): ``adapt(goal
or gymnasium env, steps)`` then ``act(observation)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...meta import rl
from ...meta.config import METHODS_WITHOUT_MODES as METHODS
from ...meta.fast_weights import FastWeights, forward, init_fast_weights
from ...meta.inner_loop import inner_step
from ...meta.modulation import ModulationHeads
from ...models import MLP
from .env import HORIZON, MAX_ACTION, BatchedNavigationEnv
from .sampling import Trajectories, gaussian_policy, rollout

LEARNER_CLASS = "mumo_fast.domains.navigation.learner:NavigationLearner"

DEFAULTS: dict[str, Any] = {
    "learner_class": LEARNER_CLASS,  # what mumo_fast.load builds from a model file
    "method": "mumomaml",
    "hidden_sizes": [32, 32],
    "init_log_std": 0.0,
    "encoder_hidden": 8,
    "modulation_hidden": 32,  # None: one linear layer per modulated layer
    "inner_lr": 0.01,
    "inner_steps": 1,
    "modulated_objective": 0.0,
    "discount": 0.99,
    "gae_lambda": 1.0,
    "first_order": False,
    "trajectories": 20,
    "horizon": HORIZON,
    "squared_reward": False,
    "max_kl": 0.01,
    "cg_iterations": 10,
    "cg_damping": 1e-5,
    "backtrack_ratio": 0.8,
    "max_backtracks": 15,
    "backend": None,
}

# The paper's settings: the two methods' own inner learning rates and discounts; MuMoMAML
# also trains its modulated policy on its own batch (``modulated_objective``, see
# ``NavigationLearner.outer_objective``)
METHOD_DEFAULTS = {
    "mumomaml": {"inner_lr": 0.01, "discount": 0.99, "modulated_objective": 1.0},
    "maml": {"inner_lr": 0.03, "discount": 0.95, "modulated_objective": 0.0},
}


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Defaults (the method's own inner lr and discount) filled in, values checked."""
    cfg = dict(cfg)
    method = cfg.get("method", "mumomaml")
    if method not in METHODS:
        raise ValueError(f"config['method'] must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown navigation learner config keys {unknown}")
    out = {**DEFAULTS, **METHOD_DEFAULTS[method], **cfg}
    if out["learner_class"] != LEARNER_CLASS:
        raise ValueError(f"config['learner_class'] must be {LEARNER_CLASS!r}")
    for key in ("inner_steps", "trajectories", "horizon", "encoder_hidden", "cg_iterations"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "inner_steps" else 1):
            raise ValueError(f"config[{key!r}] must be a positive int, got {v!r}")
    for key in ("inner_lr", "discount", "gae_lambda", "max_kl", "backtrack_ratio"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"config[{key!r}] must be a positive number, got {v!r}")
    w = out["modulated_objective"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        raise ValueError(f"config['modulated_objective'] must be a number >= 0, got {w!r}")
    if method == "maml" and w != 0:
        raise ValueError(
            "config['modulated_objective'] must be 0 for method 'maml' (no modulation: the "
            f"term would train the unadapted policy instead), got {w!r}"
        )
    out["hidden_sizes"] = list(out["hidden_sizes"])
    return out


class TrajectoryEncoder(nn.Module):
    """Trajectories ``[T, B, H]`` -> task embeddings ``[T, hidden]``.

    Each step's input is (observation, clipped action / max_action, reward), 5 numbers; a
    GRU (``hidden`` units) reads each trajectory; its state after the trajectory's **last
    unmasked step** is the trajectory's embedding (steps after an episode ended never reach
    it: the GRU is causal, and their inputs are zeroed too); the mean over the ``B``
    trajectories of a task is the task's embedding.
    """

    def __init__(self, hidden: int = 8, max_action: float = MAX_ACTION) -> None:
        super().__init__()
        self.gru = nn.GRU(5, hidden, batch_first=True)
        self.embedding_size = hidden
        self.max_action = float(max_action)

    def forward(self, traj: Trajectories) -> Tensor:
        t, b, h = traj.mask.shape
        dtype = self.gru.weight_ih_l0.dtype
        actions = traj.actions.clamp(-self.max_action, self.max_action) / self.max_action
        x = torch.cat([traj.observations, actions, traj.rewards.unsqueeze(-1)], dim=-1)
        x = (x * traj.mask.unsqueeze(-1)).to(dtype)
        states, _ = self.gru(x.reshape(t * b, h, 5))  # [T*B, H, hidden]
        last = (traj.mask.reshape(t * b, h).sum(1).long() - 1).clamp_min(0)
        final = states[torch.arange(t * b, device=states.device), last]
        return final.reshape(t, b, -1).mean(1)


def reinforce_loss_fn(log_std: Tensor):
    """The inner loss in the core's interface: ``loss(mean [T, N, 2], target [T, N, 4]) ->
    [T]``, the REINFORCE surrogate ``-mean(log pi(a|s) * A)`` over each task's unmasked
    steps, with ``target = (actions, advantages, mask)`` (``pack_targets``) and the policy's
    log-std."""

    def loss(mean: Tensor, target: Tensor) -> Tensor:
        log_probs = rl.gaussian_log_prob(target[..., :2], mean, log_std)
        return rl.reinforce_loss(log_probs, target[..., 2], target[..., 3])

    return loss


def pack_targets(traj: Trajectories, advantages: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs ``[T, B*H, 2]`` and targets ``[T, B*H, 4]`` of the inner loss."""
    t = traj.mask.shape[0]
    x = traj.observations.reshape(t, -1, 2)
    y = torch.cat(
        [
            traj.actions.reshape(t, -1, 2),
            advantages.reshape(t, -1, 1),
            traj.mask.reshape(t, -1, 1),
        ],
        dim=-1,
    )
    return x, y


@dataclass
class NavigationBatch:
    """One meta-batch: the tasks' goals ``[T, 2]`` and the seed of its rollouts' noise."""

    goals: Tensor
    seed: int

    @property
    def num_tasks(self) -> int:
        return self.goals.shape[0]

    def to(self, *args, **kwargs) -> NavigationBatch:
        return NavigationBatch(self.goals.to(*args, **kwargs), self.seed)


@dataclass
class Adaptation:
    """What ``NavigationLearner.run_adaptation`` collected: ``pre`` (MuMoMAML: the
    unmodulated, unadapted policy's trajectories; None for MAML), ``batches[k]`` (sampled
    with the policy after ``k`` inner steps, ``batches[0]`` modulated), ``film`` (detached)
    and the adapted fast weights after each step (``fast_weights[k]``, detached)."""

    pre: Trajectories | None
    batches: list[Trajectories]
    film: Any
    fast_weights: list[FastWeights]


class NavigationLearner(nn.Module):
    """Gaussian FiLM-MLP policy, MuMoMAML's trajectory encoder and modulation heads (or MAML
    without them), the policy-gradient inner loop and the TRPO outer step."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        cfg = resolve_config(cfg)
        self._config = cfg
        self.method = cfg["method"]
        self.policy = MLP(2, 2, cfg["hidden_sizes"], backend=cfg["backend"])
        self.log_std = nn.Parameter(torch.full((2,), float(cfg["init_log_std"])))
        if self.method == "mumomaml":
            self.encoder = TrajectoryEncoder(cfg["encoder_hidden"])
            self.modulation = ModulationHeads(
                cfg["encoder_hidden"], self.policy.film_channels, "film", cfg["modulation_hidden"]
            )
        self._agent: tuple[Any, FastWeights] | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> NavigationLearner:
        return cls(cfg)

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"base": list(self.policy.parameters()) + [self.log_std]}
        if self.method == "mumomaml":
            groups["encoder"] = list(self.encoder.parameters())
            groups["modulation"] = list(self.modulation.parameters())
        return groups

    # ------------------------------------------------------------------ pieces
    def _lr(self, name: str) -> float:
        return self._config["inner_lr"]

    def make_env(self, goals: Tensor) -> BatchedNavigationEnv:
        cfg = self._config
        return BatchedNavigationEnv(
            goals, cfg["trajectories"], horizon=cfg["horizon"], squared_reward=cfg["squared_reward"]
        )

    def initial_weights(self, num_tasks: int, detach: bool = False) -> FastWeights:
        params = dict(self.policy.named_parameters())
        return init_fast_weights(self.policy, params, num_tasks, detach=detach)

    def mean_action(self, fw: FastWeights, observations: Tensor, film) -> Tensor:
        """The policy's mean action, ``observations`` ``[T, N, 2]`` -> ``[T, N, 2]``."""
        return forward(self.policy, fw, observations.to(self.log_std.dtype), film)

    def sample(
        self, env: BatchedNavigationEnv, fw: FastWeights, film, generator: torch.Generator
    ) -> Trajectories:
        """Trajectories of the policy with fast weights ``fw`` and FiLM ``film`` (no graph)."""
        with torch.no_grad():
            policy = gaussian_policy(lambda o: self.mean_action(fw, o, film), self.log_std)
            return rollout(env, policy, generator=generator)

    def film(self, pre: Trajectories | None):
        """MuMoMAML's FiLM vectors from the pre-adaptation trajectories (None for MAML)."""
        if self.method != "mumomaml":
            return None
        return self.modulation(self.encoder(pre))

    def advantages(self, traj: Trajectories) -> Tensor:
        cfg = self._config
        return rl.compute_advantages(
            traj.observations, traj.rewards, traj.mask, cfg["discount"],
            gae_lambda=cfg["gae_lambda"],
        )  # fmt: skip

    def adapt_step(
        self, fw: FastWeights, film, traj: Trajectories, advantages: Tensor, create_graph: bool
    ) -> FastWeights:
        """One inner policy-gradient step of every task on its trajectories (the core's
        batched ``inner_step`` with the REINFORCE loss)."""
        x, y = pack_targets(traj, advantages)
        x, y = x.to(self.log_std.dtype), y.to(self.log_std.dtype)
        return inner_step(
            self.policy, fw, film, x, y, reinforce_loss_fn(self.log_std), self._lr,
            create_graph=create_graph,
        )  # fmt: skip

    def run_adaptation(
        self, goals: Tensor, steps: int, generator: torch.Generator
    ) -> tuple[Adaptation, BatchedNavigationEnv]:
        """Sample and adapt without meta-gradient: ``pre`` (MuMoMAML), then ``steps + 1``
        batches, each with the policy adapted so far (see :class:`Adaptation`)."""
        env = self.make_env(goals)
        t = goals.shape[0]
        fw = self.initial_weights(t, detach=True)
        pre = None
        film = None
        if self.method == "mumomaml":
            pre = self.sample(env, fw, None, generator)
            with torch.no_grad():
                film = _detach_film(self.film(pre))
        batches, weights = [], [fw]
        for k in range(steps + 1):
            batches.append(self.sample(env, fw, film, generator))
            if k < steps:
                with torch.enable_grad():
                    fw = self.adapt_step(fw, film, batches[-1], self.advantages(batches[-1]), False)
                fw = fw.detached()
                weights.append(fw)
        return Adaptation(pre, batches, film, weights), env

    # ------------------------------------------------------------------ training
    def outer_objective(self, batch: NavigationBatch):
        """Sample a meta-batch (pre-modulation, adaptation and validation trajectories, no
        graph) and return ``(loss_and_kl, adaptation)``: ``loss_and_kl()`` recomputes, at the
        current parameters and with the graph, the modulation, the inner steps on the
        adaptation trajectories and the adapted policy on the validation trajectories, and
        returns TRPO's surrogate (mean over tasks of the importance-sampling loss) and the
        mean KL between the sampling policy and that adapted policy (0 before any update).

        With ``modulated_objective`` ``w > 0`` (MuMoMAML's default, 1), the surrogate also
        holds ``w`` times the modulated, unadapted policy's surrogate on the first adaptation
        batch (sampled with that very policy, so an on-policy estimate of its return's
        gradient), and the KL is averaged over both batches' states.  Without it only the
        adapted policy is trained, and the modulation learns to steer the inner gradient
        step (FiLM scales both the gradient and its effect) rather than to act well by
        itself: the modulated policy's return stays at the unmodulated one's."""
        cfg = self._config
        gen = torch.Generator(device=batch.goals.device).manual_seed(batch.seed)
        a, _ = self.run_adaptation(batch.goals, cfg["inner_steps"], gen)
        train_batches = a.batches[:-1]
        train_adv = [self.advantages(tr) for tr in train_batches]
        t = batch.goals.shape[0]
        dtype = self.log_std.dtype
        weight = cfg["modulated_objective"] if a.film is not None else 0.0

        def surrogate_terms(traj: Trajectories, adv: Tensor, fw: FastWeights):
            """The batch flattened per task, its advantages and the sampling policy's mean
            action and log-probabilities (constants of the surrogate)."""
            obs = traj.observations.reshape(t, -1, 2).to(dtype)
            actions = traj.actions.reshape(t, -1, 2).to(dtype)
            mask = traj.mask.reshape(t, -1).to(dtype)
            with torch.no_grad():
                old_mean = self.mean_action(fw, obs, a.film)
                old_log_probs = rl.gaussian_log_prob(actions, old_mean, self.log_std)
            return obs, actions, mask, adv.reshape(t, -1).to(dtype), old_mean, old_log_probs

        old_log_std = self.log_std.detach().clone()
        valid = surrogate_terms(a.batches[-1], self.advantages(a.batches[-1]), a.fast_weights[-1])
        modulated = (
            surrogate_terms(train_batches[0], train_adv[0], a.fast_weights[0]) if weight else None
        )

        def loss_and_kl_of(fw: FastWeights, film, terms) -> tuple[Tensor, Tensor]:
            obs, actions, mask, adv, old_mean, old_log_probs = terms
            mean = self.mean_action(fw, obs, film)
            log_probs = rl.gaussian_log_prob(actions, mean, self.log_std)
            loss = rl.importance_sampling_loss(log_probs, old_log_probs, adv, mask).mean()
            kl = rl.gaussian_kl(old_mean, old_log_std, mean, self.log_std)
            return loss, rl.masked_mean_per_task(kl, mask).mean()

        def loss_and_kl() -> tuple[Tensor, Tensor]:
            film = self.film(a.pre)
            fw = initial = self.initial_weights(t)
            for tr, ad in zip(train_batches, train_adv):
                fw = self.adapt_step(fw, film, tr, ad, not cfg["first_order"])
            loss, kl = loss_and_kl_of(fw, film, valid)
            if modulated is not None:
                mod_loss, mod_kl = loss_and_kl_of(initial, film, modulated)
                loss, kl = loss + weight * mod_loss, (kl + mod_kl) / 2
            return loss, kl

        return loss_and_kl, a

    def meta_train_step(
        self,
        batch: NavigationBatch,
        post_mod_loss: bool = True,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> dict:
        """One TRPO meta-update of every parameter (in place; ``post_mod_loss`` is unused:
        the returns below come with the sampling).  Returns the surrogate loss before the
        update and diagnostics: the mean undiscounted returns of the pre-modulation
        (MuMoMAML), modulated (MAML: initial) and adapted trajectories, the accepted step's
        KL and step fraction (both 0 when the line search accepted no step).

        ``reduce``: data-parallel training, where ``batch`` is this process's share of the
        meta-batch; ``reduce(x)`` turns a mean over this share into the whole meta-batch's
        (the trainer passes ``mumo_fast.train.distributed.task_mean(batch.num_tasks)``).
        ``rl.trpo_step`` then takes the whole batch's step on every process, and the
        returned values are the whole batch's."""
        cfg = self._config
        loss_and_kl, a = self.outer_objective(batch)
        params = [p for p in self.parameters() if p.requires_grad]
        result = rl.trpo_step(
            params, loss_and_kl, max_kl=cfg["max_kl"], damping=cfg["cg_damping"],
            cg_iterations=cfg["cg_iterations"], backtrack_ratio=cfg["backtrack_ratio"],
            max_backtracks=cfg["max_backtracks"], reduce=reduce,
        )  # fmt: skip
        ls = result.line_search
        returns = {"return_modulated": a.batches[0], "return_adapted": a.batches[-1]}
        if a.pre is not None:
            returns["return_pre"] = a.pre
        means = torch.stack([traj.returns().mean() for traj in returns.values()])
        if reduce is not None:
            means = reduce(means)
        stats = {
            "loss": result.loss_before,
            **{k: float(v) for k, v in zip(returns, means)},
            "kl": ls.kl if ls.accepted else 0.0,
            "step_fraction": ls.fraction if ls.accepted else 0.0,
        }
        return stats

    # ------------------------------------------------------------------ evaluation
    def evaluate_returns(
        self, goals: Tensor, steps: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Mean undiscounted return per task ``[T]`` (over the ``trajectories`` episodes of
        each) before modulation (``"pre"``, the unmodulated initial policy; MAML: the same
        policy as ``"modulated"``), after modulation (``"modulated"``, 0 gradient steps),
        and after 1..steps inner steps (``"per_step"`` ``[steps + 1, T]``, row 0 =
        modulated); the trajectories themselves under ``"adaptation"``."""
        a, _ = self.run_adaptation(goals, steps, generator)
        per_step = torch.stack([b.returns().mean(1) for b in a.batches])
        pre = a.pre.returns().mean(1) if a.pre is not None else per_step[0]
        return {"pre": pre, "modulated": per_step[0], "per_step": per_step, "adaptation": a}

    def embed(self, goals: Tensor, generator: torch.Generator) -> Tensor:
        """MuMoMAML's task embeddings ``[T, E]`` of the goals, from freshly sampled
        unmodulated trajectories."""
        if self.method != "mumomaml":
            raise ValueError("embed needs method 'mumomaml' (a task encoder)")
        env = self.make_env(goals)
        pre = self.sample(env, self.initial_weights(goals.shape[0], True), None, generator)
        with torch.no_grad():
            return self.encoder(pre)

    # ------------------------------------------------------------------ agent
    def adapt(self, env_or_goal, steps: int = 1, *, seed: int | None = None) -> NavigationLearner:
        """Adapt to one task, then ``act`` follows the adapted policy.

        ``env_or_goal``: a goal (two numbers: sampled in the batched environment) or a
        ``BimodalNavigationEnv`` (possibly wrapped, e.g. by ``gymnasium.make``): the
        trajectories are collected by stepping that environment itself, ``trajectories``
        episodes per batch, so the agent never reads the goal.  MuMoMAML first collects
        the unmodulated trajectories and modulates, then (both methods) ``steps`` times:
        collect with the current policy, one policy-gradient step.  Returns ``self``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, ())) if seed is None else seed
        )
        device = self.log_std.device
        if hasattr(env_or_goal, "step") and hasattr(env_or_goal, "reset"):
            env = env_or_goal

            def collect(fw, film):
                return _gym_rollout(env, self, fw, film, gen)
        else:
            goal = torch.as_tensor(np.asarray(env_or_goal, dtype=np.float32), device=device)
            if goal.shape != (2,):
                raise ValueError(f"a goal is two numbers, got shape {tuple(goal.shape)}")
            benv = self.make_env(goal.view(1, 2))

            def collect(fw, film):
                return self.sample(benv, fw, film, gen)

        fw = self.initial_weights(1, detach=True)
        film = None
        if self.method == "mumomaml":
            with torch.no_grad():
                film = _detach_film(self.film(collect(fw, None)))
        for _ in range(steps):
            traj = collect(fw, film)
            with torch.enable_grad():
                fw = self.adapt_step(fw, film, traj, self.advantages(traj), False).detached()
        self._agent = (film, fw)
        return self

    def act(self, observation, deterministic: bool = True) -> np.ndarray:
        """The action (float32 ``(2,)``, clipped to the action range) for one observation of
        the gymnasium environment, with the policy of the last ``adapt`` (before any: the
        unmodulated initial policy).  ``deterministic=False`` samples from the Gaussian."""
        film, fw = self._agent if self._agent is not None else (None, None)
        if fw is None:
            fw = self.initial_weights(1, detach=True)
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.log_std.device)
        with torch.no_grad():
            mean = self.mean_action(fw, obs.view(1, 1, 2), film)[0, 0]
            if not deterministic:
                mean = mean + torch.exp(self.log_std) * torch.randn_like(mean)
        a = mean.clamp(-MAX_ACTION, MAX_ACTION).cpu().numpy().astype(np.float32)
        return a


def _gym_rollout(env, learner: NavigationLearner, fw, film, gen: torch.Generator) -> Trajectories:
    """``trajectories`` episodes of a gymnasium navigation environment, padded and masked
    like the batched rollout (``[1, B, H]``)."""
    b, h = learner._config["trajectories"], learner._config["horizon"]
    dtype = learner.log_std.dtype
    obs_all = torch.zeros(1, b, h, 2)
    act_all = torch.zeros(1, b, h, 2)
    rew = torch.zeros(1, b, h)
    mask = torch.zeros(1, b, h)
    std = torch.exp(learner.log_std.detach()).cpu()
    for i in range(b):
        obs, _ = env.reset()
        for k in range(h):
            o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
            with torch.no_grad():
                mean = learner.mean_action(fw, o.view(1, 1, 2).to(learner.log_std.device), film)
            a = mean.view(2).cpu() + std * torch.randn(2, generator=gen)
            obs_all[0, i, k] = o
            act_all[0, i, k] = a
            obs, r, terminated, truncated, _ = env.step(a.numpy())
            rew[0, i, k] = r
            mask[0, i, k] = 1.0
            if terminated or truncated:
                obs_all[0, i, k + 1 :] = torch.as_tensor(np.asarray(obs, dtype=np.float32))
                break
    device = learner.log_std.device
    log_probs = torch.zeros(1, b, h)
    return Trajectories(
        obs_all, act_all, log_probs, rew, mask, torch.full((1, 2), float("nan"))
    ).to(device=device, dtype=dtype)


def _detach_film(film):
    if film is None:
        return None
    return [tuple(None if v is None else v.detach() for v in pair) for pair in film]
