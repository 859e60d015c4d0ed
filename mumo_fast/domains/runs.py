"""What every domain's commands share: run folders, argument checks, the training driver.

A run folder holds ``run.json`` (the whole configuration, ``"domain"`` included), the
trainer's ``log.jsonl``, ``checkpoint.ckpt`` and ``model.pt``, the domain's
``metrics.json`` and a ``figures`` folder.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..train import (
    CHECKPOINT_NAME,
    Trainer,
    TrainSettings,
    distributed,
    load_file,
    resolve_model_path,
    seed_everything,
)
from ..train.trainer import takes_reduce
from . import UsageError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {RUN_FILE})")
    return json.loads(path.read_text())


def device_from(name: str) -> torch.device:
    """``--device``, checked."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return distributed.resolve_device(device)


def rank_share(total: int, flag: str) -> int:
    """This process's share of ``total`` (the value of option ``flag``) when several
    processes split the meta-batch (torchrun); ``total`` itself in a single process."""
    try:
        return distributed.share(total, flag)
    except ValueError as e:
        raise UsageError(str(e)) from e


def check_train_args(args: argparse.Namespace) -> None:
    """The checks every domain's ``train`` makes before it reads anything."""
    out = Path(args.out)
    if args.resume and args.init_from:
        raise UsageError("--resume and --init-from exclude each other")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise UsageError(
            f"{out} already holds a run: pass --resume to continue it, or another --out"
        )
    if args.resume and not (out / CHECKPOINT_NAME).exists():
        raise UsageError(f"--resume: {out} holds no {CHECKPOINT_NAME} to resume from")
    if args.init_from and not Path(args.init_from).exists():
        raise UsageError(f"--init-from: no such file or folder: {args.init_from}")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("--iterations must be positive")
    if args.time_limit is not None and args.time_limit <= 0:
        raise UsageError("--time-limit must be positive")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UsageError("--checkpoint-every must be positive")


def check_unchanged(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """On ``--resume``: every option given again must equal what the run recorded."""
    for key, value in given.items():
        if value is not None and value != recorded[key]:
            raise UsageError(
                f"--resume: this run was started with {key}={recorded[key]!r}, not {value!r}"
            )


def apply_run_overrides(run: dict[str, Any], args: argparse.Namespace) -> None:
    """Options that may change between invocations of one run."""
    if args.resume and args.iterations is not None:
        run["train"]["iterations"] = args.iterations
    if args.checkpoint_every is not None:
        run["train"]["checkpoint_every"] = args.checkpoint_every


def train_run(
    args: argparse.Namespace,
    run: dict[str, Any],
    sample_batch: Callable[[torch.Generator], Any],
    device: torch.device,
    *,
    validate: Callable | None = None,
    finish: Callable[[torch.nn.Module], None] | None = None,
    build_learner: Callable[[dict[str, Any]], torch.nn.Module] | None = None,
) -> int:
    """Write run.json, build the learner (seeded; ``build_learner(run["learner"])``, by
    default ``MetaLearner.from_config``), train (resuming or starting from
    ``--init-from``), then ``finish(learner)`` (test evaluation and figures) unless
    ``--skip-eval``. Returns the command's exit status.

    Under torchrun every process runs this; ``sample_batch`` then draws the process's
    share of the meta-batch, and only rank 0 writes files, prints and runs ``finish``."""
    from ..meta import MetaLearner

    main = distributed.is_main()
    out = Path(args.out)
    distributed.barrier()  # every process has read the run's files before rank 0 writes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    seed_everything(run["seed"])
    learner = (build_learner or MetaLearner.from_config)(run["learner"])
    steps_itself = run["train"].get("learner_steps")
    if distributed.world_size() > 1 and steps_itself and not takes_reduce(learner):
        raise UsageError(
            f"the {run['domain']} domain trains in one process only (its learner takes its "
            f"own update step), not {distributed.world_size()}: launch it without torchrun"
        )
    if args.compile:
        learner.use_compiled_inner_loop()
    trainer = Trainer(
        learner,
        sample_batch,
        out,
        TrainSettings(**run["train"], time_limit=args.time_limit),
        device=device,
        validate=validate,
        extra={"domain": run["domain"], "run": run},
        progress=not args.quiet,
        tensorboard=not args.no_tensorboard,
    )
    if args.resume:
        trainer.resume()
    elif args.init_from:
        trainer.init_from(resolve_model_path(args.init_from))
    result = trainer.fit()
    if not main:
        return 1 if result.diverged else 0 if result.completed else 130
    if result.diverged:
        print(
            f"diverged at iteration {result.iteration}: the last checkpoint's weights are finite "
            "and can start a new run (--init-from RUN_DIR/checkpoint.ckpt, or another --seed)"
        )
        return 1
    if not result.completed:
        print(f"stopped at iteration {result.iteration}; continue with --resume")
        return 130
    if result.time_limited:
        print(f"time limit reached at iteration {result.iteration}; --resume continues")
    if finish is not None and not args.skip_eval:
        finish(trainer.learner)
    return 0


def model_record(run_dir: str | Path, run: dict[str, Any]) -> dict[str, Any]:
    """What a metrics file says about the model it measured."""
    model_file = resolve_model_path(run_dir)
    return {
        "iterations": run["train"]["iterations"],
        "trained_iterations": load_file(model_file).get("iteration"),
        "model_file": model_file.name,
    }


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    (Path(run_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_seconds(run_dir: str | Path) -> float | None:
    """Seconds spent in meta-training steps, summed over the log (every invocation of
    the run; validation and checkpoint writing excluded); None without a log."""
    from ..train import read_log

    total, last, seen = 0.0, 0, False
    for record in read_log(Path(run_dir) / "log.jsonl"):
        if "sec_per_iter" in record:
            total += record["sec_per_iter"] * (record["iteration"] - last)
            seen = True
        if "loss" in record:
            last = record["iteration"]
    return total if seen else None
