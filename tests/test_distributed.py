"""Data-parallel meta-training over two gloo processes on the CPU (one thread each):
the 2-process meta-step equals the 1-process step on the whole meta-batch, the CLI under
torchrun, resuming a 2-process checkpoint in one process, and a hung peer ending the run
instead of blocking it."""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mumo_fast.domains.navigation.env import sample_goals
from mumo_fast.domains.navigation.learner import NavigationBatch, NavigationLearner
from mumo_fast.domains.navigation.run import make_sampler
from mumo_fast.meta import MetaLearner, TaskBatch, rl
from mumo_fast.train import Trainer, TrainSettings, distributed, load_file

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

WORLD = 2


def _init(rank: int, store: str, timeout: float = 60.0) -> None:
    torch.set_num_threads(1)
    distributed.init_group(
        "gloo", timeout, init_method=f"file://{store}", rank=rank, world_size=WORLD
    )


def _spawn(fn, *args) -> None:
    mp.spawn(fn, args=args, nprocs=WORLD, join=True)


# ------------------------------------------------------------------ one meta-step
# (kind, tasks, first order, dtype): uneven splits of the meta-batch, 4 + 3 and 3 + 2 tasks
CASES = [
    (kind, tasks, first_order, dtype)
    for kind, tasks in (("mlp", 7), ("conv4", 5))
    for first_order in (False, True)
    for dtype in (torch.float64, torch.float32)
]
ITERATIONS = 2


def _case_id(case) -> str:
    kind, tasks, first_order, dtype = case
    return f"{kind}-{'first' if first_order else 'second'}-{str(dtype)[6:]}"


def _config(kind: str, first_order: bool) -> dict:
    # (the plain-torch ops: no compiled extension to load in every fresh process)
    common = {"first_order": first_order, "backend": "reference"}
    if kind == "mlp":
        return {
            "base": "mlp", "hidden_sizes": [13, 11], "inner_steps": 2, "inner_lr": 0.05,
            "encoder_hidden": 7, "modulation_hidden": 9, **common,
        }  # fmt: skip
    return {
        "base": "conv4", "image_size": 12, "num_classes": 3, "conv_channels": 5,
        "num_blocks": 3, "encoder_channels": 4, "encoder_hidden": 6, "modulation_hidden": 7,
        "inner_steps": 1, "inner_lr": 0.4, **common,
    }  # fmt: skip


def _batch(kind: str, tasks: int, dtype: torch.dtype) -> TaskBatch:
    g = torch.Generator().manual_seed(11)
    if kind == "mlp":
        x = torch.rand(tasks, 9, 1, generator=g, dtype=dtype) * 10 - 5
        y = torch.sin(x * (1 + torch.rand(tasks, 1, 1, generator=g, dtype=dtype))) * 3
        y = y + 0.3 * torch.randn(y.shape, generator=g, dtype=dtype)
        return TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
    # 3-way episodes of random 12x12 images: 2 support and 3 query images per class
    x = torch.rand(tasks, 15, 1, 12, 12, generator=g, dtype=dtype)
    labels = torch.stack([torch.randperm(3, generator=g) for _ in range(tasks)]).repeat(1, 5)
    return TaskBatch(x[:, :6], labels[:, :6], x[:, 6:], labels[:, 6:])


def _learner(kind: str, first_order: bool, dtype: torch.dtype, seed: int) -> MetaLearner:
    torch.manual_seed(seed)
    return MetaLearner.from_config(_config(kind, first_order)).to(dtype)


def _train(learner, sample, run_dir: Path) -> dict:
    """ITERATIONS trainer steps; the parameters and (clipped) meta-gradients after them."""
    settings = TrainSettings(iterations=ITERATIONS, lr=0.01, checkpoint_every=1000, seed=3)
    trainer = Trainer(learner, sample, run_dir, settings, progress=False, tensorboard=False)
    trainer.fit()
    return {
        "params": {n: p.detach().clone() for n, p in learner.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in learner.named_parameters()},
    }


def _step_worker(rank, store, out):
    _init(rank, store)
    try:
        results = {}
        for case in CASES:
            kind, tasks, first_order, dtype = case
            batch = _batch(kind, tasks, dtype)
            # ranks start from different weights: the trainer broadcasts rank 0's
            learner = _learner(kind, first_order, dtype, seed=rank)
            start = sum(distributed.share(tasks, "--meta-batch", of=r) for r in range(rank))
            mine = batch.slice(start, start + distributed.share(tasks, "--meta-batch"))
            run_dir = Path(out) / _case_id(case)
            results[_case_id(case)] = _train(learner, lambda gen, b=mine: b, run_dir)
        results["resume"] = _resume_run(Path(out) / "resume")
        try:  # a learner that takes its own update step (navigation's TRPO)
            Trainer(_learner("mlp", False, torch.float32, 0), _sampled, Path(out) / "own",
                    TrainSettings(iterations=1, learner_steps=True))  # fmt: skip
            results["learner_steps"] = "accepted"
        except ValueError as e:
            results["learner_steps"] = str(e)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def _sampled(gen: torch.Generator) -> TaskBatch:
    """This process's 3 tasks, drawn from the trainer's generator."""
    x = torch.rand(3, 9, 1, generator=gen) * 10 - 5
    y = torch.sin(x * (1 + torch.rand(3, 1, 1, generator=gen)))
    return TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])


def _resume_run(run_dir: Path) -> dict:
    """4 iterations in one go, and 2 then a resumed 2: the parameters of both, and the
    first tasks this process drew."""
    drawn = []

    def sample(gen):
        batch = _sampled(gen)
        drawn.append(batch.support_x)
        return batch

    def fit(iterations: int, folder: Path, resume: bool = False) -> Trainer:
        learner = _learner("mlp", False, torch.float32, seed=0)
        settings = TrainSettings(iterations=iterations, checkpoint_every=2, seed=5)
        trainer = Trainer(learner, sample, folder, settings, progress=False, tensorboard=False)
        if resume:
            trainer.resume()
        trainer.fit()
        return trainer

    whole = fit(4, run_dir / "whole")
    first = drawn[0]
    fit(2, run_dir / "parts")
    distributed.barrier()  # rank 0 has written the checkpoint
    parts = fit(4, run_dir / "parts", resume=True)
    return {
        "whole": dict(whole.learner.state_dict()),
        "parts": dict(parts.learner.state_dict()),
        "first_tasks": first,
    }


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory):
    """Every case trained by 2 processes (one spawn for all): each rank's results."""
    out = tmp_path_factory.mktemp("steps")
    _spawn(_step_worker, str(out / "store"), str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], out


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_two_processes_step_like_one_on_the_whole_batch(two_process_steps, case):
    ranks, out = two_process_steps
    kind, tasks, first_order, dtype = case
    mine = [r[_case_id(case)] for r in ranks]
    # every rank holds the same gradient and parameters, bit for bit
    for name, p in mine[0]["params"].items():
        assert torch.equal(p, mine[1]["params"][name]), name
        assert torch.equal(mine[0]["grads"][name], mine[1]["grads"][name]), name

    torch.set_num_threads(1)
    batch = _batch(kind, tasks, dtype)
    learner = _learner(kind, first_order, dtype, seed=0)
    ref = _train(learner, lambda gen: batch, out / f"one-{_case_id(case)}")
    # float rounding of the meta-gradient, relative to its largest entry (some entries,
    # e.g. conv biases followed by batch norm, are rounding noise around 0)
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    for name, g in ref["grads"].items():
        torch.testing.assert_close(mine[0]["grads"][name], g, rtol=eps, atol=eps * scale)
    # two Adam steps of lr 0.01 from the same weights, each moving a parameter by about
    # lr * sign(gradient): a wrong meta-gradient moves some by ~lr. Adam divides each entry
    # by its own magnitude, so for entries near zero it magnifies the gradient's rounding:
    # float64 keeps that far below 1e-12, float32 below 1% of a step
    atol = 1e-12 if dtype == torch.float64 else 1e-4
    for name, p in ref["params"].items():
        torch.testing.assert_close(mine[0]["params"][name], p, rtol=0, atol=atol)
    init = dict(_learner(kind, first_order, dtype, seed=0).named_parameters())
    assert all(not torch.equal(p, init[n]) for n, p in ref["params"].items() if "weight" in n)


def test_two_processes_draw_different_tasks_and_resume_exactly(two_process_steps):
    ranks, _ = two_process_steps
    runs = [r["resume"] for r in ranks]
    assert not torch.equal(runs[0]["first_tasks"], runs[1]["first_tasks"])
    for name, p in runs[0]["whole"].items():
        assert torch.equal(p, runs[1]["whole"][name]), name
        assert torch.equal(p, runs[0]["parts"][name]), name  # resumed == uninterrupted


def test_a_learner_taking_its_own_step_is_refused(two_process_steps):
    for r in two_process_steps[0]:
        assert "trains in one process only, not 2" in r["learner_steps"]


# ------------------------------------------------------------------ TRPO (navigation)
TRPO_TASKS = 5  # 3 + 2
OBS, ACT, SAMPLES = 3, 2, 7


def _gaussian_problem(dtype=torch.float64):
    """A synthetic TRPO problem that decomposes over tasks: a linear Gaussian policy
    (``W`` [ACT, OBS], ``log_std`` [ACT]) shared by the tasks, each task with its own fixed
    observations, actions and advantages; the old policy is the initial one."""
    g = torch.Generator().manual_seed(23)
    w = torch.randn(ACT, OBS, generator=g, dtype=dtype) * 0.5
    log_std = torch.randn(ACT, generator=g, dtype=dtype) * 0.2
    obs = torch.randn(TRPO_TASKS, SAMPLES, OBS, generator=g, dtype=dtype)
    actions = obs @ w.T + torch.randn(TRPO_TASKS, SAMPLES, ACT, generator=g, dtype=dtype)
    adv = torch.randn(TRPO_TASKS, SAMPLES, generator=g, dtype=dtype)
    mask = (torch.rand(TRPO_TASKS, SAMPLES, generator=g) > 0.2).to(dtype)
    return w, log_std, obs, actions, adv, mask


def _gaussian_trpo(tasks: slice, reduce=None):
    """``rl.trpo_step`` on the problem's ``tasks``: the parameters after it and its result."""
    w0, s0, *per_task = _gaussian_problem()
    obs, actions, adv, mask = (x[tasks] for x in per_task)
    w, log_std = w0.clone().requires_grad_(), s0.clone().requires_grad_()
    old_mean = obs @ w0.T
    old_log_probs = rl.gaussian_log_prob(actions, old_mean, s0)

    def loss_and_kl():
        mean = obs @ w.T
        log_probs = rl.gaussian_log_prob(actions, mean, log_std)
        loss = rl.importance_sampling_loss(log_probs, old_log_probs, adv, mask).mean()
        kl = rl.gaussian_kl(old_mean, s0, mean, log_std)
        return loss, rl.masked_mean_per_task(kl, mask).mean()

    result = rl.trpo_step([w, log_std], loss_and_kl, max_kl=0.05, cg_iterations=4, reduce=reduce)
    return {"w": w.detach(), "log_std": log_std.detach(), "result": result}


NAV_TASKS = 5  # 3 + 2
# 3 conjugate-gradient iterations: the KL's Hessian is ill-conditioned, and with the
# default 10 the step amplifies float64 rounding (e.g. that of writing the mean over tasks
# as (3 a + 2 b) / 5 or as 3/5 a + 2/5 b) to ~1e-8
NAV_CONFIG = {
    "method": "mumomaml", "hidden_sizes": [9, 7], "encoder_hidden": 5, "modulation_hidden": 6,
    "trajectories": 3, "horizon": 10, "cg_iterations": 3, "backend": "reference",
}  # fmt: skip


def _nav_learner() -> NavigationLearner:
    torch.manual_seed(4)
    return NavigationLearner(NAV_CONFIG).double()


def _nav_batches() -> list[NavigationBatch]:
    """The goals of the whole meta-batch, each rank's share with its own rollout seed."""
    goals = sample_goals(NAV_TASKS, torch.Generator().manual_seed(8))
    cuts = [0]
    for r in range(WORLD):
        cuts.append(cuts[-1] + distributed.share(NAV_TASKS, "--tasks", world=WORLD, of=r))
    return [NavigationBatch(goals[a:b], 100 + r) for r, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def _trpo_worker(rank, store, out):
    _init(rank, store)
    try:
        lo = sum(distributed.share(TRPO_TASKS, "--tasks", of=r) for r in range(rank))
        n = distributed.share(TRPO_TASKS, "--tasks")
        gaussian = _gaussian_trpo(slice(lo, lo + n), distributed.task_mean(n))
        learner = _nav_learner()
        batch = _nav_batches()[rank]
        stats = learner.meta_train_step(batch, reduce=distributed.task_mean(batch.num_tasks))
        params = {k: p.detach().clone() for k, p in learner.named_parameters()}
        # the trainer: ranks start from different weights (it broadcasts rank 0's), draw
        # their own goals and rollout seeds, and take the same TRPO steps
        torch.manual_seed(rank)
        trained = NavigationLearner(NAV_CONFIG)
        drawn = []
        draw = make_sampler(distributed.share(NAV_TASKS, "--tasks"))

        def sample(gen):
            drawn.append(draw(gen))
            return drawn[-1]

        settings = TrainSettings(iterations=2, checkpoint_every=1000, learner_steps=True)
        Trainer(
            trained, sample, Path(out) / "fit", settings, progress=False, tensorboard=False
        ).fit()
        fit = {
            "params": {k: p.detach().clone() for k, p in trained.named_parameters()},
            "goals": drawn[0].goals,
            "seed": drawn[0].seed,
        }
        torch.save(
            {"gaussian": gaussian, "nav": (params, stats), "fit": fit}, Path(out) / f"trpo{rank}.pt"
        )
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_process_trpo(tmp_path_factory):
    out = tmp_path_factory.mktemp("trpo")
    _spawn(_trpo_worker, str(out / "store"), str(out))
    return [torch.load(out / f"trpo{r}.pt", weights_only=False) for r in range(WORLD)]


def test_trpo_step_on_two_shards_equals_the_whole_problem(two_process_trpo):
    torch.set_num_threads(1)
    ref = _gaussian_trpo(slice(None))
    assert ref["result"].line_search.accepted and ref["result"].step_norm > 1e-3
    ranks = [r["gaussian"] for r in two_process_trpo]
    assert torch.equal(ranks[0]["w"], ranks[1]["w"])
    assert torch.equal(ranks[0]["log_std"], ranks[1]["log_std"])
    for mine in ranks:
        for k in ("w", "log_std"):
            torch.testing.assert_close(mine[k], ref[k], rtol=0, atol=1e-12)
        a, b = mine["result"], ref["result"]
        assert a.line_search.tries == b.line_search.tries
        for x, y in [(a.loss_before, b.loss_before), (a.step_norm, b.step_norm),
                     (a.expected_kl, b.expected_kl), (a.line_search.loss, b.line_search.loss),
                     (a.line_search.kl, b.line_search.kl)]:  # fmt: skip
            assert abs(x - y) <= 1e-12 * max(1.0, abs(y)), (x, y)
    # a shard alone takes another step: the reduction is what makes them equal
    alone = _gaussian_trpo(slice(0, 3))
    assert (alone["w"] - ref["w"]).abs().max() > 1e-6


def test_navigation_meta_step_on_two_processes_equals_one_on_all_tasks(two_process_trpo):
    """Each rank's tasks and rollout seed are fixed, so both sides sample the same
    trajectories; one process takes the TRPO step of the task-weighted mean of the two
    shards' surrogates and KLs (the mean over all tasks)."""
    torch.set_num_threads(1)
    (p0, s0), (p1, s1) = (r["nav"] for r in two_process_trpo)
    for k, p in p0.items():  # parameters start equal (same seed) and stay equal
        assert torch.equal(p, p1[k]), k
    assert s0 == s1

    learner = _nav_learner()
    init = {k: p.detach().clone() for k, p in learner.named_parameters()}
    batches = _nav_batches()
    parts = [learner.outer_objective(b) for b in batches]
    sizes = [b.num_tasks for b in batches]

    def loss_and_kl():
        values = [f() for f, _ in parts]
        loss = sum(n * v[0] for n, v in zip(sizes, values)) / NAV_TASKS
        return loss, sum(n * v[1] for n, v in zip(sizes, values)) / NAV_TASKS

    cfg = learner.config
    result = rl.trpo_step(
        [p for p in learner.parameters() if p.requires_grad], loss_and_kl,
        max_kl=cfg["max_kl"], damping=cfg["cg_damping"], cg_iterations=cfg["cg_iterations"],
        backtrack_ratio=cfg["backtrack_ratio"], max_backtracks=cfg["max_backtracks"],
    )  # fmt: skip
    assert result.line_search.accepted
    for k, p in learner.named_parameters():
        torch.testing.assert_close(p0[k], p.detach(), rtol=0, atol=1e-12)
    assert any((p0[k] - init[k]).abs().max() > 1e-6 for k in init)
    assert abs(s0["loss"] - result.loss_before) <= 1e-12
    assert s0["step_fraction"] == result.line_search.fraction
    assert abs(s0["kl"] - result.line_search.kl) <= 1e-12
    for key, name in (("return_pre", "pre"), ("return_adapted", "batches")):
        trajs = [getattr(a, name) for _, a in parts]
        trajs = [t[-1] if isinstance(t, list) else t for t in trajs]
        whole = float(torch.cat([t.returns() for t in trajs]).mean())  # (float32 rollouts)
        assert abs(s0[key] - whole) <= 1e-6 * abs(whole), key
        assert abs(s0[key] - float(trajs[0].returns().mean())) > 1e-3, key


def test_trainer_keeps_the_navigation_learners_identical_and_ranks_draw_their_own_tasks(
    two_process_trpo,
):
    fits = [r["fit"] for r in two_process_trpo]
    for k, p in fits[0]["params"].items():
        assert torch.equal(p, fits[1]["params"][k]), k
    torch.manual_seed(0)
    init = dict(NavigationLearner(NAV_CONFIG).named_parameters())
    assert any(not torch.equal(p, init[k]) for k, p in fits[0]["params"].items())
    assert fits[0]["goals"].shape == (3, 2) and fits[1]["goals"].shape == (2, 2)
    assert not torch.equal(fits[0]["goals"][:2], fits[1]["goals"])
    assert fits[0]["seed"] != fits[1]["seed"]


# ------------------------------------------------------------------ pieces
def test_share_splits_exactly_and_refuses_an_empty_rank():
    for total in (2, 5, 7, 64):
        for world in (1, 2, 3):
            if total < world:
                continue
            shares = [
                distributed.share(total, "--meta-batch", world=world, of=r) for r in range(world)
            ]
            assert sum(shares) == total and max(shares) - min(shares) <= 1
    with pytest.raises(ValueError, match=r"--meta-batch 1 cannot be split across 2 processes"):
        distributed.share(1, "--meta-batch", world=2, of=0)


def test_rank_seeds_differ_and_repeat():
    seeds = {distributed.rank_seed(s, r) for s in range(3) for r in range(4)}
    assert len(seeds) == 12
    assert distributed.rank_seed(5, 1) == distributed.rank_seed(5, 1)
    assert distributed.rank_seed(5, 1, 2, 100) != distributed.rank_seed(5, 1)


def _timeout_worker(rank, store, out):
    _init(rank, store, timeout=1.5)
    if rank == 1:  # this process hangs past the timeout instead of joining the all-reduce
        time.sleep(4)
        return
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    start = time.perf_counter()
    try:
        distributed.reduce_step([p], {"loss": 1.0}, 4)
        message = "the all-reduce returned without its peer"
    except distributed.DistributedError as e:
        message = str(e)
    Path(out).write_text(f"{time.perf_counter() - start:.2f}\n{message}")
    distributed.shutdown()


def test_a_hung_peer_ends_the_collective_with_an_error(tmp_path):
    _spawn(_timeout_worker, str(tmp_path / "store"), str(tmp_path / "out"))
    seconds, message = (tmp_path / "out").read_text().split("\n", 1)
    assert message.startswith("rank 0: the meta-gradient all-reduce failed"), message
    assert "--dist-timeout" in message
    assert float(seconds) < 3.5  # the 1.5 s timeout, not the peer's return after 4 s


def _gloo_threads() -> list[str]:
    """This process's threads that gloo started (Linux names them in /proc)."""
    names = (Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir())
    return sorted(n for n in names if "gloo" in n)


def _shutdown_worker(rank, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
        RANK=str(rank), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    imported_early = "torch.distributed.nn.functional" in sys.modules
    distributed.init_from_env("cpu", timeout=60)
    importlib.import_module("torch._dynamo")  # as training does, after the group exists

    distributed.gather_to_main({"rank": rank})
    running = _gloo_threads()
    distributed.shutdown()
    result = {"imported_early": imported_early, "running": running, "left": _gloo_threads()}
    Path(out, f"{rank}.json").write_text(json.dumps(result))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names in /proc")
def test_shutdown_frees_the_process_group_and_ends_gloos_threads(tmp_path):
    """A group that outlives shutdown keeps gloo's worker threads past the interpreter's
    end, where torch 2.14 aborts the process when one of them releases a tensor."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _spawn(_shutdown_worker, port, str(tmp_path))
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert not result["imported_early"]  # else the test would not exercise the fix
        assert result["running"], "no gloo threads seen while the group existed"
        assert result["left"] == [], f"rank {rank}: gloo threads after shutdown: {result['left']}"


# ------------------------------------------------------------------ the CLI under torchrun
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_torchrun_trains_and_one_process_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--skip-eval", "--quiet", "--no-tensorboard", "--threads", "1"]
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    train = ["-m", "mumo_fast.cli", "train", "regression", "--tasks-per-mode", "3"]
    done = _cli(
        *launch, *train, "--iterations", "4", "--checkpoint-every", "2", *common, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_file(out / "checkpoint.ckpt")
    assert ckpt["iteration"] == 4 and ckpt["world_size"] == 2
    states = [s["data"] for s in ckpt["rank_rng"]]
    assert len(states) == 2 and not torch.equal(states[0], states[1])
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.ckpt", "log.jsonl", "model.pt", "run.json",
    ]  # fmt: skip
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 1  # one writer: iteration 4 (the last), logged once

    more = _cli(*train, "--iterations", "6", "--resume", *common, cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming a checkpoint of 2 process(es) with 1" in more.stdout
    obj = load_file(out / "checkpoint.ckpt")
    assert obj["iteration"] == 6 and "world_size" not in obj
    for name, p in obj["state_dict"].items():
        assert torch.isfinite(p).all(), name
    assert any(not torch.equal(p, ckpt["state_dict"][n]) for n, p in obj["state_dict"].items())


def test_torchrun_trains_navigation_and_one_process_resumes(tmp_path):
    """The TRPO domain under torchrun: 3 goals per meta-batch split 2 + 1, rank 0 the only
    writer, each rank its own goals and rollouts; then one process continues the run."""
    out = tmp_path / "nav"
    common = ["--out", str(out), "--skip-eval", "--quiet", "--no-tensorboard", "--threads", "1"]
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    train = ["-m", "mumo_fast.cli", "train", "navigation", "--tasks", "3", "--trajectories", "3"]
    train += ["--horizon", "10"]
    done = _cli(*launch, *train, "--iterations", "2", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_file(out / "checkpoint.ckpt")
    assert ckpt["iteration"] == 2 and ckpt["world_size"] == 2
    states = [s["data"] for s in ckpt["rank_rng"]]
    assert len(states) == 2 and not torch.equal(states[0], states[1])
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.ckpt", "log.jsonl", "model.pt", "run.json",
    ]  # fmt: skip
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]  # one writer, every iteration once
    assert all(math.isfinite(r["loss"]) and 0 <= r["kl"] <= 0.01 for r in log)
    assert any(r["step_fraction"] > 0 for r in log)

    more = _cli(*train, "--iterations", "3", "--resume", *common, cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming a checkpoint of 2 process(es) with 1" in more.stdout
    obj = load_file(out / "checkpoint.ckpt")
    assert obj["iteration"] == 3 and "world_size" not in obj
    for name, p in obj["state_dict"].items():
        assert torch.isfinite(p).all(), name
    assert any(not torch.equal(p, ckpt["state_dict"][n]) for n, p in obj["state_dict"].items())
