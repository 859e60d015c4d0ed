"""Navigation rollout throughput: the batched torch environment against gymnasium's
SyncVectorEnv, the same policy, in the same run (the paper's navigation setting).

Workload: a full meta-batch rollout, T tasks (default 20, goals from the bimodal mixture)
x B trajectories (20) x H steps (100) of the bimodal navigation task, actions from one
random Gaussian MLP policy (2-32-32-2, ReLU, learned-style log-std 0), evaluated once per
step on all T*B observations; environment steps counted as T*B*H for both.

  batched   mumo_fast.domains.navigation.rollout on a BatchedNavigationEnv: one tensor
            operation per step for all episodes; records observations, actions, log-probs,
            rewards and the mask (Trajectories)
  sync      gymnasium.vector.SyncVectorEnv over T*B BimodalNavigationEnv instances (one per
            task x trajectory, goal fixed): per step the policy on the [T*B, 2] observation
            array, then envs.step; records the same per-step arrays.  The vector env is built
            once, outside the timing; each timed rollout starts with envs.reset()

Timing: round-robin (batched, sync, batched, ...) so load drift hits both, one untimed
warm-up each, median of --repeats; the ratio is of the medians of this run.

    python bench/navigation.py --threads 1   # writes bench/results/cpu_navigation_1thread.json

``--mode meta``: whole meta-iterations per second instead, MuMoMAML and MAML
(``NavigationLearner.meta_train_step``, the paper's settings: T tasks x B trajectories x H
steps, one inner policy-gradient step, the TRPO update with 10 conjugate-gradient
iterations and its line search; MuMoMAML also samples and embeds the pre-modulation
trajectories).  Each method's learner is trained on for --repeats iterations after one
untimed warm-up (the weights change, as in training; the line search's number of tries
varies); median seconds per iteration, round-robin between the methods.

    python bench/navigation.py --mode meta --threads 1  # cpu_navigation_meta_1thread.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import partial
from statistics import median

import gymnasium
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import (  # noqa: E402
    add_allocator_argument,
    apply_allocator,
    cpu_environment,
    update_markdown,
    write_json,
)

from mumo_fast.domains.navigation import (  # noqa: E402
    BatchedNavigationEnv,
    BimodalNavigationEnv,
    gaussian_policy,
    rollout,
    sample_goals,
)
from mumo_fast.meta.rl import gaussian_log_prob  # noqa: E402


def make_policy(seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    return mlp, torch.zeros(2)


def run_batched(env: BatchedNavigationEnv, mlp, log_std, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    tr = rollout(env, gaussian_policy(mlp, log_std), generator=g)
    elapsed = time.perf_counter() - start
    assert tr.mask.shape[2] == env.horizon
    return elapsed


def run_sync(envs, mlp, log_std, horizon: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    std = log_std.exp()
    start = time.perf_counter()
    observations, actions, log_probs, rewards, dones = [], [], [], [], []
    obs, _ = envs.reset(seed=seed)
    with torch.no_grad():
        for _ in range(horizon):
            o = torch.from_numpy(obs)
            mean = mlp(o)
            a = mean + std * torch.randn(mean.shape, generator=g)
            lp = gaussian_log_prob(a, mean, log_std)
            next_obs, reward, terminated, truncated, _ = envs.step(a.numpy())
            observations.append(obs)
            actions.append(a)
            log_probs.append(lp)
            rewards.append(reward)
            dones.append(terminated | truncated)
            obs = next_obs
    batch = (np.stack(observations, 1), torch.stack(actions, 1), np.stack(rewards, 1),
             np.stack(dones, 1))  # fmt: skip
    assert batch[0].shape[1] == horizon
    return time.perf_counter() - start


def run_meta(args) -> None:
    from mumo_fast.domains.navigation.learner import NavigationBatch, NavigationLearner

    t, b, h = args.tasks, args.trajectories, args.horizon
    goal_gen = torch.Generator().manual_seed(args.seed)
    learners = {}
    for method in ("mumomaml", "maml"):
        torch.manual_seed(args.seed)
        learners[method] = NavigationLearner({"method": method, "trajectories": b, "horizon": h})
    times: dict[str, list[float]] = {k: [] for k in learners}
    for r in range(args.repeats + 1):
        for method, learner in learners.items():
            batch = NavigationBatch(sample_goals(t, goal_gen), args.seed + r)
            start = time.perf_counter()
            learner.meta_train_step(batch)
            if r:  # the first round is the warm-up
                times[method].append(time.perf_counter() - start)
    threads = torch.get_num_threads()
    env_info = cpu_environment(gymnasium=gymnasium.__version__, numpy=np.__version__)
    results = {
        m: {"median_s": median(ts), "times_s": ts, "meta_iterations_per_s": 1 / median(ts)}
        for m, ts in times.items()
    }
    out = {
        "benchmark": "navigation meta-iterations: sampling, inner PG step, TRPO update",
        "workload": {
            "tasks": t, "trajectories": b, "horizon": h, "inner_steps": 1,
            "cg_iterations": 10, "repeats": args.repeats,
        },
        "environment": env_info,
        "results": results,
    }  # fmt: skip
    rows = ["| method | s / meta-iteration (median) | meta-iterations / s |", "|---|---:|---:|"]
    for m, r in results.items():
        rows.append(f"| {m} | {r['median_s']:.2f} | {r['meta_iterations_per_s']:.3f} |")
    table = "\n".join(rows)
    print(f"{t} tasks x {b} trajectories x {h} steps, {threads} thread(s), {env_info['cpu']}")
    print(table)
    path = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"cpu_navigation_meta_{threads}thread{'s' if threads > 1 else ''}.json",
    )
    write_json(path, out)
    if args.markdown:
        section = (
            f"## Navigation meta-iterations (TRPO)\n\n{t} tasks x {b} trajectories x {h} "
            f"steps, {threads} thread(s), {env_info['cpu']}, torch {env_info['torch']}; median "
            f"of {args.repeats}.\n\n{table}\n\n"
            f"(`python bench/navigation.py --mode meta --threads {threads}`).\n"
        )
        update_markdown(args.markdown, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mode", choices=("rollout", "meta"), default="rollout",
        help="rollout: batched env vs SyncVectorEnv (default); meta: meta-iterations per second",
    )  # fmt: skip
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/...)")
    ap.add_argument("--markdown", default=None, help="also update this file's section")
    add_allocator_argument(ap)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator(args.allocator)
    if args.mode == "meta":
        run_meta(args)
        return
    t, b, h = args.tasks, args.trajectories, args.horizon
    steps = t * b * h

    goals = sample_goals(t, torch.Generator().manual_seed(args.seed))
    mlp, log_std = make_policy(args.seed)
    env = BatchedNavigationEnv(goals, b, horizon=h)
    goal_np = goals.numpy()
    envs = gymnasium.vector.SyncVectorEnv(
        [
            partial(BimodalNavigationEnv, goal=goal_np[i], horizon=h)
            for i in range(t)
            for _ in range(b)
        ]
    )
    impls = {
        "batched": lambda s: run_batched(env, mlp, log_std, s),
        "sync": lambda s: run_sync(envs, mlp, log_std, h, s),
    }
    times: dict[str, list[float]] = {k: [] for k in impls}
    with torch.no_grad():
        for fn in impls.values():  # warm-up
            fn(args.seed)
        for r in range(args.repeats):
            for name, fn in impls.items():
                times[name].append(fn(args.seed + 1 + r))
    envs.close()

    results = {}
    for name, ts in times.items():
        med = median(ts)
        results[name] = {
            "median_s": med,
            "times_s": ts,
            "env_steps_per_s": steps / med,
        }
    ratio = results["sync"]["median_s"] / results["batched"]["median_s"]
    threads = torch.get_num_threads()
    workload = {
        "tasks": t,
        "trajectories": b,
        "horizon": h,
        "env_steps_per_rollout": steps,
        "policy": "Gaussian MLP 2-32-32-2 ReLU, log-std 0, untrained",
        "repeats": args.repeats,
    }
    env_info = cpu_environment(gymnasium=gymnasium.__version__, numpy=np.__version__)
    assert env_info["allocator"] == allocator
    out = {
        "benchmark": "navigation rollout: batched torch env vs gymnasium SyncVectorEnv",
        "workload": workload,
        "environment": env_info,
        "results": results,
        "speedup_batched_over_sync": ratio,
    }
    rows = [
        "| implementation | rollout (ms, median) | env steps / s |",
        "|---|---:|---:|",
    ]
    for name, label in (("batched", "batched torch env"), ("sync", "SyncVectorEnv")):
        r = results[name]
        rows.append(f"| {label} | {1e3 * r['median_s']:.1f} | {r['env_steps_per_s']:,.0f} |")
    table = "\n".join(rows)
    print(f"{t} tasks x {b} trajectories x {h} steps, {threads} thread(s), {env_info['cpu']}")
    print(table)
    print(f"batched / SyncVectorEnv: {ratio:.1f}x")
    path = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"cpu_navigation_{threads}thread{'s' if threads > 1 else ''}.json",
    )
    write_json(path, out)
    if args.markdown:
        section = (
            f"## Navigation rollouts (batched env vs SyncVectorEnv)\n\n"
            f"{t} tasks x {b} trajectories x {h} steps, {threads} thread(s), "
            f"{env_info['cpu']}, torch {env_info['torch']}, gymnasium {gymnasium.__version__}; "
            f"median of {args.repeats}.\n\n{table}\n\nRatio: {ratio:.1f}x "
            f"(`python bench/navigation.py --threads {threads}`).\n"
        )
        update_markdown(args.markdown, section)
    assert math.isfinite(ratio)


if __name__ == "__main__":
    main()
