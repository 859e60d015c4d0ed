"""A generic meta-training loop: any learner with `meta_train_step(batch, post_mod_loss)`
(returning a dict of floats), any task sampler.

The run folder holds `log.jsonl`, `checkpoint.ckpt` (everything needed to continue the
run exactly: weights, optimizer, iteration, every RNG state including the data
generator's) and, once training ends, `model.pt` (weights and config only).
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    atomic_save,
    load_file,
    rng_state,
    set_rng_state,
)
from .logging import MetricsLogger, truncate_log

# How the gradient-norm clip groups the learner's parameters: "per-network" clips the base
# network, the task encoder, the modulation heads (and learnable inner lrs) each on its own
# (the paper's description); "authors-code" clips the encoder and the modulation heads as one group, as the
# authors' released regression code does.
CLIP_GROUPS = ("per-network", "authors-code")


def check_clip_groups(how: str) -> None:
    if how not in CLIP_GROUPS:
        raise ValueError(f"clip_groups must be one of {CLIP_GROUPS}, got {how!r}")


def clip_group_lists(groups: dict[str, list], how: str) -> list[list]:
    """The parameter lists that are clipped together, from ``learner.parameter_groups()``."""
    check_clip_groups(how)
    groups = dict(groups)
    if how == "authors-code" and "encoder" in groups:
        groups["encoder"] = groups["encoder"] + groups.pop("modulation", [])
    return list(groups.values())


@dataclass
class TrainSettings:
    iterations: int
    lr: float = 1e-3
    grad_clip: float | None = 2.0  # max gradient norm, applied to each group (clip_groups)
    clip_groups: str = "per-network"  # see CLIP_GROUPS
    checkpoint_every: int = 500
    log_every: int = 10
    validate_every: int = 0  # 0: never during training
    seed: int = 0
    time_limit: float | None = None  # seconds of this invocation; then finish as if done
    # True: `meta_train_step` updates the learner's parameters itself (e.g. a TRPO step);
    # the trainer then neither clips gradients nor steps its optimizer (lr, grad_clip and
    # clip_groups are unused), and a non-finite "loss" only counts as a skipped iteration
    learner_steps: bool = False

    def __post_init__(self) -> None:
        check_clip_groups(self.clip_groups)


def takes_reduce(learner: torch.nn.Module) -> bool:
    """Whether ``learner.meta_train_step`` accepts ``reduce=`` (a learner that takes its
    own update step, e.g. navigation's TRPO, reduces over the processes with it)."""
    try:
        return "reduce" in inspect.signature(learner.meta_train_step).parameters
    except (AttributeError, TypeError, ValueError):
        return False


# Consecutive iterations with a non-finite loss or gradient (each skipped) after which a
# run stops as diverged.
MAX_NONFINITE_STREAK = 50


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """A stored learner config with the defaults of keys added since it was written."""
    from ..meta.config import resolve_config

    try:
        return resolve_config(config)
    except (TypeError, ValueError):
        return config


@dataclass
class TrainResult:
    iteration: int
    completed: bool
    signal: int | None = None  # the signal that stopped the run early
    time_limited: bool = False  # finished by `time_limit` before `iterations`
    diverged: bool = False  # stopped after MAX_NONFINITE_STREAK non-finite iterations


class Trainer:
    """Meta-trains `learner` on batches drawn by `sample_batch(generator)`.

    Seed the global RNGs (`seed_everything`) before building the learner so that its
    initial weights depend on the seed; the trainer seeds its own data generator.
    `validate(learner) -> dict` is called every `validate_every` iterations and at the end;
    it must not draw from the global RNGs. `extra` is stored in the checkpoint and model file.

    An iteration whose loss or gradients are not finite is skipped (no optimizer step, so
    the weights and every checkpoint stay finite) and counted in the logged
    ``nonfinite_skipped``; after ``MAX_NONFINITE_STREAK`` in a row the run stops as diverged.

    In a process group of several processes (``torchrun``, see
    :mod:`mumo_fast.train.distributed`) each process draws its own share of the
    meta-batch (``sample_batch`` returns that share, its ``num_tasks`` the share's size)
    from a generator seeded from (seed, rank); the meta-gradient is all-reduced before
    clipping and the optimizer step. A learner that takes its own update step
    (``learner_steps``) gets ``reduce=distributed.task_mean(batch.num_tasks)`` in
    ``meta_train_step`` instead and reduces what its step needs itself. Only rank 0 logs,
    shows progress, validates and writes files; the checkpoint holds every rank's
    generator state.
    """

    def __init__(
        self,
        learner: torch.nn.Module,
        sample_batch: Callable[[torch.Generator], Any],
        run_dir: str | os.PathLike,
        settings: TrainSettings,
        *,
        device: str | torch.device = "cpu",
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        extra: dict[str, Any] | None = None,
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.device = torch.device(device)
        self.learner = learner.to(self.device)
        self.sample_batch = sample_batch
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.validate = validate
        self.extra = extra or {}
        self.progress = progress
        self.tensorboard = tensorboard
        self.world = distributed.world_size()
        self.rank = distributed.rank()
        if self.world > 1 and settings.learner_steps and not takes_reduce(learner):
            raise ValueError(
                "a learner that updates its own parameters (learner_steps) without a `reduce` "
                f"argument to meta_train_step trains in one process only, not {self.world}: "
                "launch it without torchrun (or with --nproc-per-node 1)"
            )
        self.main = self.rank == 0
        self.progress = progress and self.main
        seed = settings.seed if self.world == 1 else distributed.rank_seed(settings.seed, self.rank)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.optimizer = torch.optim.Adam(learner.parameters(), lr=settings.lr)
        self.iteration = 0
        self.nonfinite_skipped = 0  # in the whole run (restored by resume)
        self._nonfinite_streak = 0
        self._stop: int | None = None
        # several processes: the stop and time-limit decisions all of them agreed on
        self._agreed_stop: int | None = None
        self._agreed_time_up = False
        self._deadline = math.inf

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    # -- state ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the checkpoint (several processes: every one must call this; rank 0
        writes, with every rank's RNG states)."""
        ranks = {}
        if self.world > 1:
            states = distributed.gather_to_main(rng_state(self.generator))
            if not self.main:
                return
            ranks = {"world_size": self.world, "rank_rng": states}
        atomic_save(
            {
                "config": self.learner.config,
                "state_dict": self.learner.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration,
                "rng": rng_state(self.generator),
                "nonfinite_skipped": self.nonfinite_skipped,
                "nonfinite_streak": self._nonfinite_streak,
                "settings": asdict(self.settings),
                "extra": self.extra,
                **ranks,
            },
            self.checkpoint_path,
        )

    def save_model(self) -> None:
        if not self.main:
            return
        state = {k: v.detach().cpu() for k, v in self.learner.state_dict().items()}
        atomic_save(
            {
                "config": self.learner.config,
                "state_dict": state,
                "iteration": self.iteration,
                "extra": self.extra,
            },
            self.run_dir / MODEL_NAME,
        )

    def _load_weights(self, obj: dict[str, Any], source: Path) -> None:
        try:
            self.learner.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise ValueError(
                f"{source} was made for a different model than this run's "
                f"(its config: {obj['config']}; this run's: {self.learner.config}): {e}"
            ) from e

    def resume(self) -> None:
        path = self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist")
        obj = load_file(path)
        if _resolved(obj["config"]) != self.learner.config:
            raise ValueError(
                f"cannot resume: {path} was written with config {obj['config']}, "
                f"this run has {self.learner.config}"
            )
        self._load_weights(obj, path)
        self.optimizer.load_state_dict(obj["optimizer"])
        self.iteration = int(obj["iteration"])
        saved_world = int(obj.get("world_size", 1))
        if saved_world == self.world:
            set_rng_state(
                obj["rng"] if self.world == 1 else obj["rank_rng"][self.rank], self.generator
            )
        else:
            # another split of the meta-batch: no stream can continue as it was
            set_rng_state(obj["rng"])
            self.generator.manual_seed(
                distributed.rank_seed(self.settings.seed, self.rank, self.world, self.iteration)
            )
            if self.main:
                print(
                    f"resuming a checkpoint of {saved_world} process(es) with {self.world}: "
                    "task generators reseeded from (seed, rank, world size, iteration "
                    f"{self.iteration})"
                )
        # (checkpoints written before these were stored count from 0)
        self.nonfinite_skipped = int(obj.get("nonfinite_skipped", 0))
        self._nonfinite_streak = int(obj.get("nonfinite_streak", 0))
        if self.main:
            truncate_log(self.run_dir / "log.jsonl", self.iteration)

    def init_from(self, path: str | os.PathLike) -> None:
        """Start from the weights of a checkpoint or model file (fresh optimizer, iteration 0)."""
        self._load_weights(load_file(path), Path(path))

    # -- loop ----------------------------------------------------------------------------
    def _logs(self, iteration: int) -> bool:
        """Whether the stats of this iteration (counted from 1) go to the log."""
        return iteration % self.settings.log_every == 0 or iteration == self.settings.iterations

    def step(self) -> dict[str, float]:
        self.learner.train()
        self.optimizer.zero_grad(set_to_none=True)
        # the post-modulation loss (an extra forward pass) only where it is logged
        batch = self.sample_batch(self.generator)
        own = {}
        if self.world > 1 and self.settings.learner_steps:
            # the learner's own update step reduces what it needs over the processes
            own = {"reduce": distributed.task_mean(batch.num_tasks)}
        stats = self.learner.meta_train_step(
            batch, post_mod_loss=self._logs(self.iteration + 1), **own
        )
        if self.world > 1:
            stats = self._reduce(stats, batch.num_tasks)
        finite = math.isfinite(stats["loss"])
        clip = self.settings.grad_clip
        groups = {} if self.settings.learner_steps else self.learner.parameter_groups()
        for params in clip_group_lists(groups, self.settings.clip_groups):
            params = [p for p in params if p.grad is not None]
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip)
                finite = finite and bool(torch.isfinite(norm))
        if finite:
            if not self.settings.learner_steps:
                self.optimizer.step()
            self._nonfinite_streak = 0
        else:
            self.nonfinite_skipped += 1
            self._nonfinite_streak += 1
        if self.nonfinite_skipped:
            stats = {**stats, "nonfinite_skipped": float(self.nonfinite_skipped)}
        self.iteration += 1
        return stats

    def _reduce(self, stats: dict[str, float], num_tasks: int) -> dict[str, float]:
        """The whole meta-batch's gradient and stats from every process's share, and
        the stop and time-limit decisions (any process's signal or deadline)."""
        local = [float(self._stop is not None), float(time.perf_counter() >= self._deadline)]
        stats, (stop, time_up) = distributed.reduce_step(
            self.learner.parameters(), stats, num_tasks, local
        )
        if stop and self._agreed_stop is None:
            self._agreed_stop = self._stop if self._stop is not None else signal.SIGTERM
        self._agreed_time_up = self._agreed_time_up or time_up > 0
        return stats

    def _stopping(self) -> int | None:
        return self._stop if self.world == 1 else self._agreed_stop

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop = signum
        if self.main:
            tqdm.write(
                f"{signal.Signals(signum).name}: finishing iteration {self.iteration + 1}, "
                "then saving a checkpoint (signal again to abort without saving)"
            )

    def fit(self) -> TrainResult:
        """Run until `settings.iterations` or a SIGINT/SIGTERM (which saves and returns)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: no signal handling
            pass
        distributed.broadcast_state(self.learner)
        logger = MetricsLogger(self.run_dir, tensorboard=self.tensorboard) if self.main else None
        bar = tqdm(
            total=s.iterations, initial=self.iteration, disable=not self.progress,
            dynamic_ncols=True, desc=self.run_dir.name,
        )  # fmt: skip
        try:
            start = tic = time.perf_counter()
            tic_iteration = self.iteration
            if s.time_limit is not None:
                self._deadline = start + s.time_limit
            out_of_time = False
            while self.iteration < s.iterations and self._stopping() is None and not out_of_time:
                stats = self.step()
                if self._nonfinite_streak >= MAX_NONFINITE_STREAK:
                    if self.main:
                        logger.log(self.iteration, **stats)
                        tqdm.write(
                            f"iteration {self.iteration}: the loss or gradients were not finite "
                            f"for {self._nonfinite_streak} iterations in a row (all skipped); "
                            f"stopping. The weights and {self.checkpoint_path} are finite."
                        )
                    return TrainResult(self.iteration, False, diverged=True)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)
                it = self.iteration
                if self.main and self._logs(it):
                    now = time.perf_counter()
                    logger.log(it, **stats, sec_per_iter=(now - tic) / (it - tic_iteration))
                    tic, tic_iteration = now, it
                if self.main and self.validate and s.validate_every and it % s.validate_every == 0:
                    logger.log(
                        it, **{f"val/{k}": v for k, v in self.validate(self.learner).items()}
                    )
                if it % s.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.world > 1:
                    out_of_time = self._agreed_time_up
                else:
                    out_of_time = (
                        s.time_limit is not None and time.perf_counter() - start >= s.time_limit
                    )
            if self._stopping() is not None:
                self.save_checkpoint()
                if self.main:
                    tqdm.write(
                        f"checkpoint saved at iteration {self.iteration}: {self.checkpoint_path}"
                    )
                return TrainResult(self.iteration, False, self._stopping())
            self.save_checkpoint()
            self.save_model()
            return TrainResult(self.iteration, True, time_limited=self.iteration < s.iterations)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
