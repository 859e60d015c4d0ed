"""The regression domain's commands: train, eval and plot on run folders."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...train import CLIP_GROUPS, load_learner
from .. import UsageError
from ..runs import (
    METRICS_FILE,
    apply_run_overrides,
    check_train_args,
    check_unchanged,
    device_from,
    model_record,
    rank_share,
    read_run,
    train_run,
    write_metrics,
)
from . import figures
from .data import make_sampler, to_task_batch
from .metrics import evaluate_learner
from .presets import (
    BASE_INITS,
    ENCODERS,
    METHODS,
    MODULATION_HEADS,
    MODULATIONS,
    PRESETS,
    TEST_TASKS_PER_MODE,
    run_config,
    run_label,
)
from .tasks import (
    DEFAULT_TASK_FAMILY,
    TASK_FAMILIES,
    RegressionTasks,
    canonical_task_family,
    check_task_family,
    fixed_test_set,
    sample_tasks,
)

VALIDATION_SEED = 777
VALIDATION_TASKS_PER_MODE = 100


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, help="default: mumomaml")
    p.add_argument("--modulation", choices=MODULATIONS, help="mumomaml only; default: film")
    p.add_argument("--modes", type=int, choices=(2, 3, 5), help="number of modes; default: 2")
    p.add_argument(
        "--preset", choices=tuple(PRESETS),
        help="default: 3,000 iterations, 10 tasks per mode (a few minutes); "
        "paper: the paper's settings, 70,000 iterations, 25 tasks per mode",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, help="meta-iterations (overrides the preset)")
    p.add_argument("--tasks-per-mode", type=int, help="tasks of each mode per meta-batch")
    p.add_argument(
        "--test-tasks-per-mode", type=int,
        help=f"size of the fixed test set, per mode (default {TEST_TASKS_PER_MODE})",
    )  # fmt: skip
    p.add_argument(
        "--task-family", choices=tuple(TASK_FAMILIES), type=canonical_task_family,
        help="random-frequency (default; formerly spec): sinusoids with a random frequency "
        "in [0.5, 2]; authors-code: the authors' released code, sinusoids of frequency 1, "
        "phase in [0, pi]",
    )  # fmt: skip
    p.add_argument(
        "--encoder", choices=ENCODERS,
        help="MuMoMAML's bidirectional task encoder; default: gru (the authors' code: lstm)",
    )  # fmt: skip
    p.add_argument(
        "--encoder-layers", type=int,
        help="layers of the task encoder; default: 1 (the authors' code: 2)",
    )  # fmt: skip
    p.add_argument(
        "--modulation-head", choices=MODULATION_HEADS,
        help="per modulated layer: a one-hidden-layer MLP (default) "
        "or one linear layer (the authors' code)",
    )  # fmt: skip
    p.add_argument(
        "--base-init", choices=BASE_INITS,
        help="the base network's initial weights: torch (default: nn.Linear's own) or "
        "authors-code (the authors' code: weights N(0, 0.01^2), zero biases)",
    )  # fmt: skip
    p.add_argument(
        "--grad-clip-groups", choices=CLIP_GROUPS,
        help="what the gradient-norm clip (2.0) covers: per-network (default: base, "
        "encoder and modulation heads each on its own) or authors-code (encoder and heads "
        "together, as the authors' code)",
    )  # fmt: skip


# -- helpers -----------------------------------------------------------------------------
def _run_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    explicit = {
        "method": args.method, "modulation": args.modulation, "num_modes": args.modes,
        "preset": args.preset, "seed": args.seed,
    }  # fmt: skip
    if not args.resume:
        run = _new_run_config(args)
    else:
        run = read_run(out)
        run["data"]["task_family"] = task_family(run)  # runs made before the option
        check_unchanged(run, explicit)
        check_unchanged(
            run["data"],
            {k: getattr(args, k) for k in ("tasks_per_mode", "test_tasks_per_mode", "task_family")},
        )
        check_unchanged(
            _recorded_choices(run),
            {
                "encoder": args.encoder, "encoder_layers": args.encoder_layers,
                "modulation_head": args.modulation_head, "base_init": args.base_init,
                "clip_groups": args.grad_clip_groups,
            },
        )  # fmt: skip
    apply_run_overrides(run, args)
    return run


def _recorded_choices(run: dict[str, Any]) -> dict[str, Any]:
    """The run's model and training choices a resume may restate but not change."""
    learner = run["learner"]
    return {
        "encoder": learner["encoder"],
        "encoder_layers": learner["encoder_layers"],
        "modulation_head": "linear" if learner.get("modulation_hidden", "") is None else "mlp",
        "base_init": learner.get("base_init", "torch"),  # runs made before the option
        "clip_groups": run["train"].get("clip_groups", "per-network"),  # (same)
    }


def _new_run_config(args: argparse.Namespace) -> dict[str, Any]:
    method = args.method or "mumomaml"
    if args.modulation is not None and method != "mumomaml":
        raise UsageError(f"--modulation applies to --method mumomaml only (got {method})")
    given = [
        f for f in ("encoder", "encoder_layers", "modulation_head") if getattr(args, f) is not None
    ]
    if given and method != "mumomaml":
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} applies to --method mumomaml only (got {method})")
    try:
        return run_config(
            method, args.modulation or "film", args.modes or 2, args.preset or "default",
            iterations=args.iterations, seed=0 if args.seed is None else args.seed,
            tasks_per_mode=args.tasks_per_mode, test_tasks_per_mode=args.test_tasks_per_mode,
            task_family=args.task_family or DEFAULT_TASK_FAMILY, encoder=args.encoder or "gru",
            encoder_layers=1 if args.encoder_layers is None else args.encoder_layers,
            modulation_head=args.modulation_head or "mlp",
            base_init=args.base_init or "torch",
            clip_groups=args.grad_clip_groups or "per-network",
        )  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from e


def _validation(run: dict[str, Any], device: torch.device):
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    tasks = sample_tasks(
        run["num_modes"], VALIDATION_TASKS_PER_MODE, gen, family=task_family(run)
    ).to(device)
    batch = to_task_batch(tasks)
    steps = run["eval"]["adapt_steps"]

    def validate(learner) -> dict[str, float]:
        losses = learner.evaluate(batch, steps)["per_step"]
        return {"post_mod_mse": losses[0].mean().item(), "post_adapt_mse": losses[-1].mean().item()}

    return validate


# -- train -------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> int:
    check_train_args(args)
    device = device_from(args.device)
    run = _run_config(args, Path(args.out))
    data = run["data"]
    # (under torchrun each process draws its share of every mode's tasks)
    sampler = make_sampler(
        run["num_modes"], rank_share(data["tasks_per_mode"], "--tasks-per-mode"),
        data["k_support"], data["l_query"], task_family(run),
    )  # fmt: skip

    def finish(learner) -> None:
        metrics = evaluate_run(args.out, device=device, learner=learner)
        print_table([(Path(args.out), run, metrics)])
        plot_run(args.out, device=device, learner=learner, metrics=metrics)

    return train_run(args, run, sampler, device, validate=_validation(run, device), finish=finish)


# -- eval --------------------------------------------------------------------------------
_TEST_SETS: dict[tuple[int, int, str], RegressionTasks] = {}


def task_family(run: dict[str, Any]) -> str:
    """The run's task family by its current name (runs made before the option: the
    random-frequency family)."""
    return check_task_family(run["data"].get("task_family", DEFAULT_TASK_FAMILY))


def get_test_set(run: dict[str, Any], tasks_per_mode: int | None = None) -> RegressionTasks:
    """The run's fixed test set, or one of ``tasks_per_mode`` tasks per mode (same seed)."""
    size = run["data"]["test_tasks_per_mode"] if tasks_per_mode is None else tasks_per_mode
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"test tasks per mode must be a positive int, got {size!r}")
    key = (run["num_modes"], size, task_family(run))
    if key not in _TEST_SETS:
        d = run["data"]
        _TEST_SETS[key] = fixed_test_set(key[0], key[1], d["k_support"], d["l_query"], key[2])
    return _TEST_SETS[key]


def evaluate_run(
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    learner=None,
    test_tasks_per_mode: int | None = None,
) -> dict:
    """Test metrics of a run (written to its metrics.json); ``test_tasks_per_mode``
    overrides the size of the run's fixed test set."""
    run = read_run(run_dir)
    tasks = get_test_set(run, test_tasks_per_mode)
    learner = learner if learner is not None else load_learner(run_dir, device)
    metrics = evaluate_learner(
        learner,
        tasks,
        run["mode_names"],
        run["eval"]["adapt_steps"],
        run["eval"]["max_steps"],
    )
    metrics["run"] = {k: run[k] for k in ("method", "modulation", "num_modes", "preset", "seed")}
    metrics["run"].update(model_record(run_dir, run))
    metrics["test_tasks_per_mode"] = len(tasks) // run["num_modes"]
    write_metrics(run_dir, metrics)
    return metrics


def print_table(rows: Sequence[tuple[Path, dict, dict]]) -> None:
    fmt = "{:<28} {:<20} {:>5} {:>7}  {:>20}  {:>20}"
    print(fmt.format("run", "method", "modes", "iters", "post-mod MSE", "post-adapt MSE"))
    for path, run, m in rows:
        pm, pa = m["post_modulation"], m["post_adaptation"]
        print(
            fmt.format(
                Path(path).name[:28], run_label(run), run["num_modes"],
                m["run"].get("trained_iterations") or run["train"]["iterations"],
                f"{pm['mean']:.4f} ± {pm['ci95']:.4f}",
                f"{pa['mean']:.4f} ± {pa['ci95']:.4f} ({m['adapt_steps']})",
            )
        )  # fmt: skip
    steps = len(rows[0][2]["per_step"]["mean"])
    print(f"\ntest MSE after 0..{steps - 1} inner steps (0 = post-modulation)")
    print(f"{'run':<28} " + " ".join(f"{s:>7}" for s in range(steps)))
    for path, _, m in rows:
        print(f"{Path(path).name[:28]:<28} " + " ".join(f"{v:7.4f}" for v in m["per_step"]["mean"]))


def evaluate(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    rows = []
    for run_dir in args.runs:
        run = read_run(run_dir)
        metrics = evaluate_run(run_dir, device, test_tasks_per_mode=args.test_tasks_per_mode)
        rows.append((Path(run_dir), run, metrics))
    print_table(rows)
    return 0


# -- plot --------------------------------------------------------------------------------
def _example_tasks(run: dict[str, Any]) -> RegressionTasks:
    tasks = get_test_set(run)
    first = [int((tasks.modes == m).nonzero()[0]) for m in range(run["num_modes"])]
    return tasks.select(torch.tensor(first))


def _metrics(run_dir: Path, device, learner=None) -> dict:
    path = run_dir / METRICS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return evaluate_run(run_dir, device, learner)


def plot_run(run_dir: str | Path, device="cpu", learner=None, metrics=None) -> list[Path]:
    """The run's own figures, in RUN_DIR/figures."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    learner = learner if learner is not None else load_learner(run_dir, device)
    metrics = metrics if metrics is not None else _metrics(run_dir, device, learner)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    label = run_label(run)
    paths = [out / "functions.png", out / "mse_vs_steps.png"]
    figures.plot_functions(
        [(label, learner)],
        _example_tasks(run),
        run["mode_names"],
        run["eval"]["adapt_steps"],
        paths[0],
    )
    figures.plot_steps([(label, metrics)], paths[1])
    if run["method"] == "mumomaml":
        tasks = get_test_set(run).to(next(learner.parameters()).device)
        per_mode = 200
        idx = torch.cat(
            [(tasks.modes == m).nonzero()[:per_mode, 0] for m in range(run["num_modes"])]
        )
        sub = tasks.select(idx)
        with torch.no_grad():
            emb = learner.embed(sub.support_x, sub.support_y)
        paths.append(out / "tsne.png")
        figures.plot_tsne(emb, sub.modes, run["mode_names"], paths[-1], seed=run["seed"])
    return paths


def plot(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    runs = [(Path(r), read_run(r)) for r in args.runs]
    learners = {}
    for path, _ in runs:
        learners[path] = load_learner(path, device)
        for p in plot_run(path, device, learners[path]):
            print(p)
    if len(runs) > 1:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        curves = [(f"{run_label(r)} [{p.name}]", _metrics(p, device, learners[p])) for p, r in runs]
        figures.plot_steps(curves, out / "mse_vs_steps.png")
        print(out / "mse_vs_steps.png")
        by_modes: dict[int, list] = {}
        for p, r in runs:
            by_modes.setdefault(r["num_modes"], []).append((p, r))
        for n, group in by_modes.items():
            if len(group) < 2:
                continue
            r0 = group[0][1]
            models = [(f"{run_label(r)} [{p.name}]", learners[p]) for p, r in group]
            path = out / f"functions_{n}modes.png"
            figures.plot_functions(
                models, _example_tasks(r0), r0["mode_names"], r0["eval"]["adapt_steps"], path
            )
            print(path)
    return 0
