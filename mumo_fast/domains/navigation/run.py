"""The navigation domain's commands: train, eval and plot on run folders.

    mumo-fast train navigation --method mumomaml --out runs/nav_mumo
    mumo-fast train navigation --method maml --out runs/nav_maml
    mumo-fast eval runs/nav_mumo runs/nav_maml
    mumo-fast plot runs/nav_mumo runs/nav_maml --out runs/nav_compare

Training is TRPO on the post-adaptation surrogate (``learner.NavigationLearner``); the
trainer runs with ``learner_steps=True`` (the learner updates its own parameters), with the
other domains' progress bar, JSON-lines and TensorBoard logs, atomic checkpoints,
``--resume`` and ``--time-limit``.  ``eval`` reports the mean undiscounted return before
modulation, after modulation and after 1..3 gradient steps on a fixed, seeded set of goals
(the same goals and the same rollout seed for every run), with 95% confidence intervals over
goals.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...train import load_learner, mean_ci95
from .. import UsageError
from ..runs import (
    apply_run_overrides,
    check_train_args,
    check_unchanged,
    device_from,
    model_record,
    rank_share,
    read_metrics,
    read_run,
    train_run,
    write_metrics,
)
from . import figures
from .env import GOAL_MEANS, sample_goals
from .learner import METHOD_DEFAULTS, METHODS, NavigationBatch, NavigationLearner

EVAL_SEED = 2024  # the fixed test goals
ROLLOUT_SEED = 7  # the noise of the evaluation rollouts
TEST_GOALS = 100
EVAL_STEPS = 3


LEARNER_OPTIONS = ("trajectories", "horizon", "inner_lr", "discount", "modulated_objective")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, help="default: mumomaml")
    p.add_argument("--iterations", type=int, help="meta-iterations (default 500)")
    p.add_argument("--tasks", type=int, help="tasks (goals) per meta-batch (default 20)")
    p.add_argument("--trajectories", type=int, help="trajectories per task and batch (default 20)")
    p.add_argument("--horizon", type=int, help="episode length (default 100)")
    p.add_argument(
        "--inner-lr", type=float,
        help="inner policy-gradient step size (default: MuMoMAML 0.01, MAML 0.03)",
    )  # fmt: skip
    p.add_argument("--discount", type=float, help="default: MuMoMAML 0.99, MAML 0.95")
    p.add_argument(
        "--modulated-objective", type=float, metavar="W",
        help="MuMoMAML: weight of the modulated, unadapted policy's own surrogate in the "
        "TRPO objective (default 1; 0: the adapted policy's alone, as the paper's Alg. 1)",
    )  # fmt: skip
    p.add_argument(
        "--squared-reward", action="store_true",
        help="reward minus the squared distance (the paper's appendix) instead of the distance",
    )  # fmt: skip
    p.add_argument(
        "--test-goals", type=int, help=f"size of the fixed test set of goals (default {TEST_GOALS})"
    )


def _learner_config(args: argparse.Namespace, method: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"method": method, **METHOD_DEFAULTS[method]}
    for key in LEARNER_OPTIONS:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.squared_reward:
        cfg["squared_reward"] = True
    return NavigationLearner(cfg).config


def _run_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if args.resume:
        run = read_run(out)
        check_unchanged(run, {"method": args.method, "seed": args.seed})
        check_unchanged(run["data"], {"tasks": args.tasks})
        check_unchanged(
            run["learner"],
            {k: getattr(args, k) for k in LEARNER_OPTIONS},
        )
        check_unchanged(run["eval"], {"test_goals": args.test_goals})
    else:
        method = args.method or "mumomaml"
        for key in ("tasks", "trajectories", "horizon", "test_goals"):
            v = getattr(args, key)
            if v is not None and v < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be positive")
        try:
            learner = _learner_config(args, method)
        except ValueError as e:
            raise UsageError(str(e)) from e
        seed = 0 if args.seed is None else args.seed
        run = {
            "domain": "navigation",
            "method": method,
            "seed": seed,
            "learner": learner,
            "data": {"tasks": args.tasks or 20},
            "train": {
                "iterations": args.iterations or 500,
                "checkpoint_every": 10,
                "log_every": 1,
                "seed": seed,
                "grad_clip": None,
                "learner_steps": True,
            },
            "eval": {
                "test_goals": args.test_goals or TEST_GOALS,
                "steps": EVAL_STEPS,
                "goal_seed": EVAL_SEED,
                "rollout_seed": ROLLOUT_SEED,
            },
        }
    apply_run_overrides(run, args)
    return run


def make_sampler(num_tasks: int):
    """``sample_batch(generator)``: goals from the bimodal mixture and the seed of the
    meta-batch's rollouts, both drawn from the trainer's generator (so resume is exact).
    Under torchrun each process draws its share of the ``num_tasks`` goals and its own
    rollout seed from its own generator (seeded from the seed and its rank)."""

    def sample_batch(generator: torch.Generator) -> NavigationBatch:
        goals = sample_goals(num_tasks, generator, device=generator.device)
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        return NavigationBatch(goals, seed)

    return sample_batch


# -- train -------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> int:
    check_train_args(args)
    if args.compile:
        raise UsageError("--compile does not apply to navigation (its inner loop is eager)")
    device = device_from(args.device)
    run = _run_config(args, Path(args.out))

    def finish(learner) -> None:
        metrics = evaluate_run(args.out, device=device, learner=learner)
        print_table([(Path(args.out), run, metrics)])
        plot_run(args.out, device=device, learner=learner, metrics=metrics)

    return train_run(
        args, run, make_sampler(rank_share(run["data"]["tasks"], "--tasks")), device,
        finish=finish,
        build_learner=NavigationLearner.from_config,
    )  # fmt: skip


# -- eval --------------------------------------------------------------------------------
def test_goals(run: dict[str, Any], device="cpu") -> torch.Tensor:
    """The run's fixed test goals (seeded: every run with the same size sees the same)."""
    gen = torch.Generator().manual_seed(run["eval"]["goal_seed"])
    return sample_goals(run["eval"]["test_goals"], gen).to(device)


def stage_names(steps: int) -> list[str]:
    return ["pre-modulation", "post-modulation"] + [f"{k} step{'s' if k > 1 else ''}"
                                                    for k in range(1, steps + 1)]  # fmt: skip


def evaluate_learner(learner: NavigationLearner, goals: torch.Tensor, steps: int, seed: int):
    """Returns per stage (mean and 95% CI over goals) and the raw per-goal returns."""
    gen = torch.Generator(device=goals.device).manual_seed(seed)
    learner.eval()
    r = learner.evaluate_returns(goals, steps, gen)
    rows = [r["pre"]] + list(r["per_step"])
    names = stage_names(steps)
    metrics: dict[str, Any] = {"stages": names, "returns": {}}
    for name, row in zip(names, rows):
        mean, ci = mean_ci95(row)
        metrics["returns"][name] = {"mean": mean, "ci95": ci}
    metrics["per_step"] = {
        "mean": [metrics["returns"][n]["mean"] for n in names[1:]],
        "ci95": [metrics["returns"][n]["ci95"] for n in names[1:]],
    }
    metrics["per_goal"] = [[float(v) for v in row] for row in rows]
    return metrics


def evaluate_run(run_dir: str | Path, device="cpu", learner=None) -> dict:
    """Test returns of a run (written to its metrics.json)."""
    run = read_run(run_dir)
    learner = learner if learner is not None else load_learner(run_dir, device)
    dev = learner.log_std.device
    metrics = evaluate_learner(
        learner, test_goals(run, dev), run["eval"]["steps"], run["eval"]["rollout_seed"]
    )
    metrics["run"] = {"method": run["method"], "seed": run["seed"], **model_record(run_dir, run)}
    metrics["test_goals"] = run["eval"]["test_goals"]
    write_metrics(run_dir, metrics)
    return metrics


def print_table(rows: Sequence[tuple[Path, dict, dict]]) -> None:
    names = rows[0][2]["stages"]
    print("average return (mean ± 95% CI over test goals)")
    print(f"{'run':<24} {'method':<9} {'iters':>5}  " + "  ".join(f"{n:>17}" for n in names))
    for path, run, m in rows:
        cells = [f"{m['returns'][n]['mean']:8.2f} ± {m['returns'][n]['ci95']:5.2f}" for n in names]
        iters = m["run"].get("trained_iterations") or run["train"]["iterations"]
        print(f"{Path(path).name[:24]:<24} {run['method']:<9} {iters:>5}  " + "  ".join(cells))


def evaluate(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    rows = [(Path(r), read_run(r), evaluate_run(r, device)) for r in args.runs]
    print_table(rows)
    return 0


# -- plot --------------------------------------------------------------------------------
def interpolated_goals(n: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` goals on the segment between the two mode centres, and their position in
    [0, 1] (0: (0.5, 0.5), 1: (-0.5, -0.5))."""
    a = torch.tensor(GOAL_MEANS[0]), torch.tensor(GOAL_MEANS[1])
    alpha = torch.linspace(0, 1, n)
    return (a[0] + alpha.unsqueeze(1) * (a[1] - a[0])).to(device), alpha


def plot_run(run_dir: str | Path, device="cpu", learner=None, metrics=None) -> list[Path]:
    """The run's figures in RUN_DIR/figures: sample trajectories (Fig. 6), returns against
    gradient steps (Fig. 5a), t-SNE of embeddings of interpolated goals (Fig. 5b)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    learner = learner if learner is not None else load_learner(run_dir, device)
    learner.eval()
    metrics = metrics or read_metrics(run_dir) or evaluate_run(run_dir, device, learner)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    dev = learner.log_std.device
    paths = [out / "trajectories.png", out / "returns_vs_steps.png"]
    goals = torch.tensor(GOAL_MEANS, dtype=torch.float32, device=dev) * 1.2
    gen = torch.Generator(device=dev).manual_seed(run["eval"]["rollout_seed"])
    r = learner.evaluate_returns(goals, run["eval"]["steps"], gen)
    figures.plot_trajectories(r["adaptation"], run["method"], paths[0])
    figures.plot_returns([(f"{run['method']} [{run_dir.name}]", metrics)], paths[1])
    if run["method"] == "mumomaml":
        goals, alpha = interpolated_goals(200, dev)
        emb = learner.embed(goals, torch.Generator(device=dev).manual_seed(run["seed"]))
        groups = (alpha * 4.999).long()
        names = [f"{a:.1f}-{a + 0.2:.1f}" for a in (0.0, 0.2, 0.4, 0.6, 0.8)]
        names[0] += " (0.5, 0.5)"
        names[-1] += " (-0.5, -0.5)"
        paths.append(out / "tsne.png")
        figures.plot_tsne(
            emb, groups, names, paths[-1], seed=run["seed"],
            title="t-SNE of embeddings, goals between the mode centres",
        )  # fmt: skip
    return paths


def plot(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    curves = []
    for r in args.runs:
        path = Path(r)
        learner = load_learner(path, device)
        for p in plot_run(path, device, learner):
            print(p)
        run = read_run(path)
        curves.append((f"{run['method']} [{path.name}]", read_metrics(path)))
    if len(curves) > 1:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figures.plot_returns(curves, out / "returns_vs_steps.png")
        print(out / "returns_vs_steps.png")
    return 0
