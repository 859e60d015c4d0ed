"""Meta-training step throughput: mumo_fast against the same model written three other ways.

Workload (the paper's three-mode regression setting): MuMoMAML with
FiLM, base MLP 1-100-100-100-1 (ReLU, FiLM on the three hidden layers), bi-GRU task
encoder (hidden 40), one-hidden-layer modulation heads; T tasks (default 75 = 25 per
mode), K=5 support and 10 query points, 5 inner steps (lr 0.001), full meta-gradient
(second order, and first order), optimizer step excluded.

Implementations (identical parameters; their gradients are checked against the loop):
  mumo_auto / mumo_lowrank / mumo_dense
          MetaLearner.meta_train_step with fast_weights "auto" (the default: low-rank for the
          100x100 layers, dense for the 1x100 and 100x1 ones), "lowrank" (every layer) or
          "dense" (without the post-modulation loss it can also report, which the
          baselines do not compute either)
  mumo_compiled, mumo_dense_compiled, mumo_lowrank_compiled
          mumo_auto (mumo_dense, mumo_lowrank) with learner.use_compiled_inner_loop(): the
          task encoder, modulation heads, inner loop and query forward through torch.compile
          (inductor); the compile happens before the timed steps; no peak memory (see main())
  loop    per task: functional params, torch.autograd.grad(create_graph=True) inner steps,
          query loss kept; the mean of the query losses backward once (the authors' style)
  vmap    torch.func.vmap over tasks of the inner loop written with torch.func.grad
  higher  per task: higher.innerloop_ctx (copy_initial_weights=False) with a
          differentiable SGD; first order via a grad_callback that detaches the grads
The baselines run the encoder and modulation heads once, batched over all tasks
(cheaper than per task; this only favours them).

Timing: round-robin over implementations (so load drift on a shared machine hits all
alike), median of the repeats; ratios are of medians measured in the same run. With
--block N each turn of the round-robin runs N consecutive steps of one implementation and
records their mean (the steady state of a training loop; with the default N=1 every step
follows another implementation's, whose memory traffic presumably evicts this one's from the
caches, which costs the millisecond-scale batched steps far more than the loop's). Peak
memory: one subprocess per implementation, the growth of resident memory during 2 steps
over the resident memory just before them (the first step's peak: freed memory mostly
stays with the process).

    python bench/meta_step.py                     # writes bench/results/cpu_meta_step.json
    python bench/meta_step.py --tasks 75 --repeats 15 --markdown BENCHMARKS.md

Omniglot mode (--domain omniglot): the conv meta-step. 5-way 1-shot, 15 queries per
class, T=32 (--tasks), the learner the Omniglot domain builds
(``mumo_fast.domains.omniglot.presets.run_config(method, "film", 5, 1)["learner"]``:
4 blocks of 3x3 conv stride 2 with 64 channels, per-task batch norm, FiLM, ReLU, a linear
head; MuMoMAML adds the conv image encoder with a bi-GRU and the modulation heads; 1
inner step, lr 0.4, MuMoMAML's inner-gradient clamp 20), fresh weights (seed 0), random
Omniglot-like episodes (make_omniglot_batch), second and first order. Implementations:
  mumo    MetaLearner.meta_train_step (the batched step through the fused ops)
  loop    per task: F.conv2d, F.batch_norm(training=True), functional params,
          torch.autograd.grad(create_graph=True) inner steps; mean query loss backward once
  higher  per task: higher.innerloop_ctx over the same net as an nn.Module (Conv4Module)
  vmap    torch.func.vmap over tasks of the inner loop written with torch.func.grad; its
          meta-gradient is reported, not asserted (through per-task batch norm it has been
          wrong at second order)
mumo and higher must match the loop's meta-gradient before anything is timed: within
OMNIGLOT_GRAD_TOL (relative, float32) on the timed batch and OMNIGLOT_F64_TOL in float64
on its first 2 tasks (vmap's errors are reported beside it, not asserted). Peak memory: per implementation a subprocess runs one
step on a single task (loading the C++ ops), then the growth of resident memory during one
step at T over the resident memory just before it (``memory`` in the JSON also has that
resident memory). --profile mumo[,loop,...]: afterwards, the
second-order step under torch.profiler, self CPU time by phase (encoder + modulation
forward, base forward, inner autograd.grad, meta backward) and kind of op (conv, batch
norm, ...), and the top ops.

    python bench/meta_step.py --domain omniglot --threads 2 --repeats 5 --warmup 1 \
        --profile mumo --out bench/results/cpu_meta_step_omniglot_2threads.json

Data-parallel mode (--world-size N, either domain): N processes (torch.multiprocessing
spawn, gloo, one thread each) split the meta-batch of T tasks as the trainer does under
torchrun (mumo_fast.train.distributed: T // N each, one more on the first T % N), and
each timed step is MetaLearner.meta_train_step on the process's share followed by the
all-reduce of the task-weighted meta-gradient (distributed.reduce_step), optimizer step
excluded; a step's time is the slowest process's. Baseline, in the same run: rank 0
alone on the whole meta-batch (one thread) while the others wait at a barrier; the
rounds alternate baseline and N-process step. Reported: tasks/s of both, the speed-up
(ratio of the medians, and median of the per-round ratios) and its efficiency (/ N).

    python bench/meta_step.py --world-size 2 --repeats 9 --markdown BENCHMARKS.md
    python bench/meta_step.py --domain omniglot --world-size 2 --repeats 9 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from statistics import median

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import (  # noqa: E402
    add_allocator_argument,
    apply_allocator,
    cpu_name,
    update_markdown,
    write_json,
)

from mumo_fast import runtime  # noqa: E402
from mumo_fast.meta import MetaLearner, TaskBatch  # noqa: E402

IMPLS = ("mumo_auto", "mumo_compiled", "mumo_lowrank", "mumo_dense", "loop", "vmap", "higher")
STEPS, LR, K, Q = 5, 1e-3, 5, 10
METHOD = "mumomaml"  # --method maml: the base network alone (no encoder, no FiLM)
CLAMP = None  # --clamp: element-wise inner-gradient clamp (the paper's MuMoMAML uses 10)
WEIGHTS = None  # --weights: start from a trained model's weights (model.pt of a run)
ALLOCATOR = "tuned"  # --allocator (passed on to the memory child)
DOMAIN = "regression"  # --domain omniglot: the conv meta-step (see OMNIGLOT_IMPLS)


def make_batch(t: int, seed: int = 0) -> TaskBatch:
    """Three modes (sinusoid, linear, quadratic), equal counts, noise 0.3."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s, lo, hi: torch.rand(*s, generator=g) * (hi - lo) + lo  # noqa: E731
    x = u(t, K + Q, 1, lo=-5.0, hi=5.0)
    mode = torch.arange(t) % 3
    a, b, c = u(t, 1, 1, lo=0.1, hi=5.0), u(t, 1, 1, lo=0.0, hi=6.283), u(t, 1, 1, lo=-3.0, hi=3.0)
    w = u(t, 1, 1, lo=0.5, hi=2.0)
    sin = a * torch.sin(w * x + b)
    lin = (a - 2.5) * x + c
    quad = 0.1 * (x - c) ** 2 + b
    y = torch.where(mode[:, None, None] == 0, sin, torch.where(mode[:, None, None] == 1, lin, quad))
    y = y + 0.3 * torch.randn(y.shape, generator=g)
    return TaskBatch(x[:, :K], y[:, :K], x[:, K:], y[:, K:], mode)


def make_learner(fast_weights: str, first_order: bool, backend: str | None = None) -> MetaLearner:
    torch.manual_seed(0)
    learner = MetaLearner.from_config(
        {
            "base": "mlp",
            "method": METHOD,
            "modulation": "film",
            "inner_steps": STEPS,
            "inner_lr": LR,
            "first_order": first_order,
            "fast_weights": fast_weights,
            "backend": backend,
            "inner_grad_clamp": CLAMP,
        }
    )
    if WEIGHTS:
        learner.load_state_dict(torch.load(WEIGHTS, map_location="cpu")["state_dict"])
    return learner


# ---------------------------------------------------------------- baselines
def film_of(learner: MetaLearner, batch: TaskBatch):
    if learner.method == "maml":
        return None
    return learner.modulation(learner.encoder(batch.support_x, batch.support_y))


def mlp(params: dict, x, film):
    """The base net in plain torch ops. params: hidden.{i}.weight/bias, out.weight/bias."""
    i = 0
    while f"hidden.{i}.weight" in params:
        x = F.linear(x, params[f"hidden.{i}.weight"], params[f"hidden.{i}.bias"])
        if film is not None:
            x = x * film[i][0] + film[i][1]
        x = torch.relu(x)
        i += 1
    return F.linear(x, params["out.weight"], params["out.bias"])


def per_task(film, t: int):
    return None if film is None else [(g[t], b[t]) for g, b in film]


def loop_step(learner: MetaLearner, batch: TaskBatch, first_order: bool) -> float:
    film = film_of(learner, batch)
    base = dict(learner.base.named_parameters())
    names = list(base)
    total = 0.0
    for t in range(batch.num_tasks):
        f = per_task(film, t)
        params = [base[n] for n in names]
        for _ in range(STEPS):
            loss = F.mse_loss(
                mlp(dict(zip(names, params)), batch.support_x[t], f), batch.support_y[t]
            )
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            if CLAMP is not None:
                grads = [g.clamp(-CLAMP, CLAMP) for g in grads]
            params = [p - LR * g for p, g in zip(params, grads)]
        total = total + F.mse_loss(
            mlp(dict(zip(names, params)), batch.query_x[t], f), batch.query_y[t]
        )
    loss = total / batch.num_tasks
    loss.backward()
    return float(loss)


def vmap_meta_step(
    learner: MetaLearner, batch: TaskBatch, first_order: bool, forward, loss_fn, steps, lr, clamp
) -> float:
    """torch.func.vmap over tasks of a functional inner loop: ``forward(params, x, film)``,
    ``loss_fn(out, y)``; the meta-loss's backward is called."""
    film = film_of(learner, batch)
    base = dict(learner.base.named_parameters())

    def task(params, f, sx, sy, qx, qy):
        def support_loss(p):
            return loss_fn(forward(p, sx, f), sy)

        for _ in range(steps):
            g = torch.func.grad(support_loss)(params)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            if clamp is not None:
                g = {k: v.clamp(-clamp, clamp) for k, v in g.items()}
            params = {k: params[k] - lr * g[k] for k in params}
        return loss_fn(forward(params, qx, f), qy)

    film_dim = None if film is None else 0
    losses = torch.func.vmap(task, in_dims=(None, film_dim, 0, 0, 0, 0))(
        base, film, batch.support_x, batch.support_y, batch.query_x, batch.query_y
    )
    loss = losses.mean()
    loss.backward()
    return float(loss.detach())


def vmap_step(learner: MetaLearner, batch: TaskBatch, first_order: bool) -> float:
    return vmap_meta_step(learner, batch, first_order, mlp, F.mse_loss, STEPS, LR, CLAMP)


class FiLMMLPModule(nn.Module):
    """The base net as an nn.Module (for higher), sharing the learner's parameters."""

    def __init__(self, learner: MetaLearner) -> None:
        super().__init__()
        src = learner.base
        self.hidden = nn.ModuleList(nn.Linear(1, 1) for _ in src.hidden)
        self.out = nn.Linear(1, 1)
        for mine, theirs in zip([*self.hidden, self.out], [*src.hidden, src.out]):
            mine.weight, mine.bias = theirs.weight, theirs.bias

    def forward(self, x, film):
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if film is not None:
                x = x * film[i][0] + film[i][1]
            x = torch.relu(x)
        return self.out(x)


def higher_step(learner: MetaLearner, batch: TaskBatch, first_order: bool, module=None) -> float:
    import higher

    film = film_of(learner, batch)
    model = module if module is not None else FiLMMLPModule(learner)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def callback(grads):
        grads = [g.detach() for g in grads] if first_order else list(grads)
        return grads if CLAMP is None else [g.clamp(-CLAMP, CLAMP) for g in grads]

    total = 0.0
    for t in range(batch.num_tasks):
        f = per_task(film, t)
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(
                    F.mse_loss(fmodel(batch.support_x[t], f), batch.support_y[t]),
                    grad_callback=callback,
                )
            total = total + F.mse_loss(fmodel(batch.query_x[t], f), batch.query_y[t])
    loss = total / batch.num_tasks
    loss.backward()
    return float(loss)


# ---------------------------------------------------------------- data-parallel mode
def _world_worker(rank: int, world: int, store: str, out: str, cfg: dict) -> None:
    """One of ``world`` processes: per order, warm-up, then rounds of (rank 0 alone on
    the whole batch; every process on its share + the all-reduce). Rank 0 writes the times."""
    import torch.distributed as dist

    from mumo_fast.train import distributed

    global METHOD
    METHOD = cfg["method"]
    torch.set_num_threads(1)
    apply_allocator(cfg["allocator"])
    distributed.init_group(
        "gloo", distributed.DEFAULT_TIMEOUT, init_method=f"file://{store}", rank=rank,
        world_size=world,
    )  # fmt: skip
    omniglot = cfg["domain"] == "omniglot"
    t = cfg["tasks"]
    batch = make_omniglot_batch(t) if omniglot else make_batch(t)
    start = sum(distributed.share(t, "--tasks", of=r) for r in range(rank))
    mine = batch.slice(start, start + distributed.share(t, "--tasks"))
    results = {}
    for order in cfg["orders"]:
        first = order == "first"
        learner = (
            omniglot_learner(first, cfg["backend"])
            if omniglot
            else make_learner("auto", first, cfg["backend"])
        )
        params = list(learner.parameters())

        def whole() -> float:
            learner.zero_grad(set_to_none=True)
            tic = time.perf_counter()
            learner.meta_train_step(batch, post_mod_loss=False)
            return time.perf_counter() - tic

        def split() -> float:
            learner.zero_grad(set_to_none=True)
            tic = time.perf_counter()
            stats = learner.meta_train_step(mine, post_mod_loss=False)
            distributed.reduce_step(params, stats, mine.num_tasks)
            return time.perf_counter() - tic

        def round_() -> tuple[float | None, float]:
            one = whole() if rank == 0 else None
            dist.barrier()
            mine_t = torch.tensor([split()], dtype=torch.float64)
            dist.all_reduce(mine_t, op=dist.ReduceOp.MAX)  # the slowest process's time
            return one, float(mine_t)

        for _ in range(cfg["warmup"]):
            round_()
        rounds = [round_() for _ in range(cfg["repeats"])]
        results[order] = {"one": [r[0] for r in rounds], "world": [r[1] for r in rounds]}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    distributed.shutdown()


def main_world(args) -> None:
    """--world-size N: the N-process data-parallel meta-step against one process."""
    import tempfile

    import torch.multiprocessing as mp

    world = args.world_size
    if world < 2:
        raise SystemExit(f"--world-size must be at least 2, got {world}")
    if args.tasks < world:
        raise SystemExit(f"--tasks {args.tasks} cannot be split across {world} processes")
    if args.threads not in (None, 1):
        raise SystemExit("--world-size runs one thread per process (--threads 1)")
    torch.set_num_threads(1)
    orders = [o for o in args.orders.split(",") if o]
    cfg = {
        "domain": args.domain, "method": args.method, "tasks": args.tasks, "orders": orders,
        "repeats": args.repeats, "warmup": args.warmup, "backend": args.backend,
        "allocator": args.allocator,
    }  # fmt: skip
    env = environment(args.backend)
    env["threads_per_process"] = 1
    if args.domain == "omniglot":
        from mumo_fast.ops import backends

        env["ops_backend"] = {
            op: args.backend or backends.resolve("auto", torch.device("cpu"), op)
            for op in ("film_conv2d", "film_batch_norm", "film_linear")
        }
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        args_ = (world, os.path.join(tmp, "store"), out, cfg)
        mp.spawn(_world_worker, args=args_, nprocs=world, join=True)
        with open(out) as f:
            times = json.load(f)
    env["loadavg_at_end"] = os.getloadavg()
    from mumo_fast.train import distributed

    result = {
        "mode": "world_size",
        "domain": args.domain,
        "method": args.method,
        "world_size": world,
        "tasks": args.tasks,
        "shares": [
            distributed.share(args.tasks, "--tasks", world=world, of=r) for r in range(world)
        ],
        "repeats": args.repeats,
        "warmup": args.warmup,
        "environment": env,
        "results": {},
    }
    for order, ts in times.items():
        one, many = median(ts["one"]), median(ts["world"])
        per_round = median(a / b for a, b in zip(ts["one"], ts["world"]))
        result["results"][order] = {
            "one_process": {"median_s": one, "tasks_per_s": args.tasks / one, "times_s": ts["one"]},
            "world": {"median_s": many, "tasks_per_s": args.tasks / many, "times_s": ts["world"]},
            "speedup": one / many,
            "speedup_per_round": per_round,
            "efficiency": one / many / world,
        }
        print(
            f"{args.domain} {order:6s} 1 process {args.tasks / one:8.1f} tasks/s   "
            f"{world} processes {args.tasks / many:8.1f} tasks/s   speed-up {one / many:.2f}x "
            f"(per round {per_round:.2f}x)",
            flush=True,
        )
    argv = sys.argv[1:]
    if "--note" in argv:
        argv = argv[: argv.index("--note")] + argv[argv.index("--note") + 2 :]
    result["command"] = "python bench/meta_step.py " + " ".join(argv)
    write_json(args.out, result)
    if args.markdown:
        update_markdown(args.markdown, markdown_world(result, args.note))


def markdown_world(result: dict, note: str | None = None) -> str:
    env = result["environment"]
    world = result["world_size"]
    domain = result["domain"]
    ops = env["ops_backend"]
    if isinstance(ops, dict):
        ops = ", ".join(f"{op} `{b}`" for op, b in ops.items())
    what = (
        "5-way 1-shot Omniglot meta-step (the learner of the Omniglot mode above, random "
        "Omniglot-like episodes)"
        if domain == "omniglot"
        else "three-mode regression meta-step (the workload of the first section, fast "
        "weights auto)"
    )
    lines = [
        f"## Data-parallel meta-step, {domain}: {world} processes (bench/meta_step.py --world-size)",
        "",
        f"{result['method']}, {what}, T={result['tasks']} tasks split "
        f"{' + '.join(map(str, result['shares']))} over {world} gloo processes with one thread "
        "each, as `torchrun` training splits them; a step is each process's meta_train_step "
        "on its share plus the all-reduce of the meta-gradient (the slowest process's time), "
        "optimizer step excluded. Baseline: one process with one thread on the whole "
        f"meta-batch, alternating with the {world}-process step in the same run; medians of "
        f"{result['repeats']} rounds. CPU: {env['cpu']} ({env['cores']} cores), torch "
        f"{env['versions']['torch']}, ops: {ops}, allocator: "
        f"{env['allocator']}; load average {env['loadavg_at_start'][0]:.1f} at start, "
        f"{env['loadavg_at_end'][0]:.1f} at end (a shared, loaded machine: the processes "
        "compete with other work for the cores).",
        "",
        f"Command: `{result['command']}`",
        "",
        f"| order | 1 process, tasks/s | {world} processes, tasks/s | speed-up | "
        "speed-up, per round | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for order, row in result["results"].items():
        lines.append(
            f"| {order} | {row['one_process']['tasks_per_s']:.1f} | "
            f"{row['world']['tasks_per_s']:.1f} | {row['speedup']:.2f}x | "
            f"{row['speedup_per_round']:.2f}x | {row['efficiency']:.0%} |"
        )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Omniglot mode
# 5-way 1-shot, 15 queries per class; the learner exactly as the Omniglot domain builds it.
WAYS, SHOTS, QUERIES = 5, 1, 15
OMNIGLOT_IMPLS = ("mumo", "loop", "higher", "vmap")
# mumo and higher must match the loop's meta-gradient (max |g - g_loop| over all parameters
# / max |g_loop|) before anything is timed: in float32 on the timed batch within
# OMNIGLOT_GRAD_TOL, and in float64 on its first OMNIGLOT_F64_TASKS tasks within
# OMNIGLOT_F64_TOL (the same computation, not only close). vmap's errors are only reported.
OMNIGLOT_GRAD_TOL = 1e-3
OMNIGLOT_F64_TOL = 1e-9
OMNIGLOT_F64_TASKS = 2


def make_omniglot_batch(t: int, seed: int = 0) -> TaskBatch:
    """Random but Omniglot-like episodes: per task and class a 28x28 "character" (ink 1 on
    background 0: thin soft strokes along the zero crossings of smoothed noise, about 15% of
    the pixels above 0.5), each example of it shifted by up to 2 pixels; support labels a
    permutation of 0..4 per task, query labels each class 15 times, shuffled."""
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool2d(torch.randn(t * WAYS, 1, 34, 34, generator=g), 7, 1)  # [., 1, 28, 28]
    field = field / field.flatten(1).std(1)[:, None, None, None]
    chars = torch.exp(-((field / 0.22) ** 2)).reshape(t, WAYS, 1, 28, 28)

    def examples(labels: Tensor) -> Tensor:
        out = torch.empty(*labels.shape, 1, 28, 28)
        shifts = torch.randint(-2, 3, (*labels.shape, 2), generator=g).tolist()
        for i in range(t):
            for j in range(labels.shape[1]):
                out[i, j] = chars[i, labels[i, j]].roll(tuple(shifts[i][j]), (1, 2))
        return out

    sy = torch.stack([torch.randperm(WAYS, generator=g) for _ in range(t)]).repeat(1, SHOTS)
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(t, 1)
    qy = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in qy])
    return TaskBatch(examples(sy), sy, examples(qy), qy)


def omniglot_learner(first_order: bool, backend: str | None = None) -> MetaLearner:
    """``run_config(METHOD, "film", 5, 1)["learner"]`` -> MetaLearner, fresh weights (seed 0)."""
    from mumo_fast.domains.omniglot.presets import run_config

    cfg = run_config(METHOD, "film", WAYS, SHOTS, first_order=first_order)["learner"]
    if backend:
        cfg["backend"] = backend
    torch.manual_seed(0)
    return MetaLearner.from_config(cfg)


def conv4(params: dict, x: Tensor, film, eps: float = 1e-5) -> Tensor:
    """One task's base net in plain torch ops: x [N, 1, 28, 28] -> logits [N, 5]; film a
    list of (gamma [C], beta [C]) per block or None."""
    i = 0
    while f"convs.{i}.weight" in params:
        x = F.conv2d(x, params[f"convs.{i}.weight"], None, stride=2, padding=1)
        x = F.batch_norm(
            x, None, None, params[f"norms.{i}.weight"], params[f"norms.{i}.bias"], True, 0.0, eps
        )
        if film is not None:
            x = x * film[i][0][:, None, None] + film[i][1][:, None, None]
        x = torch.relu(x)
        i += 1
    return F.linear(x.flatten(-3), params["head.weight"], params["head.bias"])


def _inner(learner: MetaLearner) -> tuple[int, float, float | None]:
    cfg = learner.config
    return cfg["inner_steps"], cfg["inner_lr"], cfg["inner_grad_clamp"]


def omniglot_loop_step(learner: MetaLearner, batch: TaskBatch, first_order: bool) -> float:
    steps, lr, clamp = _inner(learner)
    film = film_of(learner, batch)
    base = dict(learner.base.named_parameters())
    names = list(base)
    total = 0.0
    for t in range(batch.num_tasks):
        f = per_task(film, t)
        params = [base[n] for n in names]
        for _ in range(steps):
            logits = conv4(dict(zip(names, params)), batch.support_x[t], f)
            loss = F.cross_entropy(logits, batch.support_y[t])
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            if clamp is not None:
                grads = [g.clamp(-clamp, clamp) for g in grads]
            params = [p - lr * g for p, g in zip(params, grads)]
        logits = conv4(dict(zip(names, params)), batch.query_x[t], f)
        total = total + F.cross_entropy(logits, batch.query_y[t])
    loss = total / batch.num_tasks
    loss.backward()
    return float(loss.detach())


def omniglot_vmap_step(learner: MetaLearner, batch: TaskBatch, first_order: bool) -> float:
    steps, lr, clamp = _inner(learner)
    return vmap_meta_step(learner, batch, first_order, conv4, F.cross_entropy, steps, lr, clamp)


class Conv4Module(nn.Module):
    """The base net as an nn.Module (for higher): nn.Conv2d without bias, nn.BatchNorm2d
    with batch statistics only, FiLM, ReLU; sharing the learner's parameters."""

    def __init__(self, learner: MetaLearner) -> None:
        super().__init__()
        src = learner.base
        self.convs = nn.ModuleList(
            nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in src.convs
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm2d(n.num_features, eps=n.eps, track_running_stats=False) for n in src.norms
        )
        self.head = nn.Linear(1, 1)
        for mine, theirs in zip(self.convs, src.convs):
            mine.weight = theirs.weight
        for mine, theirs in zip([*self.norms, self.head], [*src.norms, src.head]):
            mine.weight, mine.bias = theirs.weight, theirs.bias

    def forward(self, x, film):
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if film is not None:
                x = x * film[i][0][:, None, None] + film[i][1][:, None, None]
            x = torch.relu(x)
        return self.head(x.flatten(1))


def omniglot_higher_step(
    learner: MetaLearner, batch: TaskBatch, first_order: bool, module: nn.Module
) -> float:
    import higher

    steps, lr, clamp = _inner(learner)
    film = film_of(learner, batch)
    opt = torch.optim.SGD(module.parameters(), lr=lr)

    def callback(grads):
        grads = [g.detach() for g in grads] if first_order else list(grads)
        return grads if clamp is None else [g.clamp(-clamp, clamp) for g in grads]

    total = 0.0
    for t in range(batch.num_tasks):
        f = per_task(film, t)
        with higher.innerloop_ctx(module, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                loss = F.cross_entropy(fmodel(batch.support_x[t], f), batch.support_y[t])
                diffopt.step(loss, grad_callback=callback)
            total = total + F.cross_entropy(fmodel(batch.query_x[t], f), batch.query_y[t])
    loss = total / batch.num_tasks
    loss.backward()
    return float(loss.detach())


def omniglot_runner(impl: str, first_order: bool, backend: str | None = None):
    learner = omniglot_learner(first_order, backend)
    module = Conv4Module(learner) if impl == "higher" else None

    def step(batch: TaskBatch) -> float:
        learner.zero_grad(set_to_none=True)
        if impl == "mumo":
            return learner.meta_train_step(batch, post_mod_loss=False)["loss"]
        if impl == "loop":
            return omniglot_loop_step(learner, batch, first_order)
        if impl == "vmap":
            return omniglot_vmap_step(learner, batch, first_order)
        return omniglot_higher_step(learner, batch, first_order, module)

    return learner, step


def runner(impl: str, first_order: bool, backend: str | None = None):
    """A learner and a function performing one meta-step (zero_grad + forward + backward)."""
    if DOMAIN == "omniglot":
        return omniglot_runner(impl, first_order, backend)
    compiled = impl.endswith("_compiled")
    fast = {"mumo_dense": "dense", "mumo_lowrank": "lowrank"}.get(
        impl.removesuffix("_compiled"), "auto"
    )
    learner = make_learner(fast, first_order, backend)
    if compiled:
        learner.use_compiled_inner_loop()
    module = FiLMMLPModule(learner) if impl == "higher" else None

    def step(batch: TaskBatch) -> float:
        learner.zero_grad(set_to_none=True)
        if impl.startswith("mumo"):
            return learner.meta_train_step(batch, post_mod_loss=False)["loss"]
        if impl == "loop":
            return loop_step(learner, batch, first_order)
        if impl == "vmap":
            return vmap_step(learner, batch, first_order)
        return higher_step(learner, batch, first_order, module)

    return learner, step


def check_gradients(impls, first_order: bool, batch: TaskBatch, backend: str | None) -> dict:
    """Max |grad - loop grad| / max |loop grad| over all parameters, per implementation."""
    grads = {}
    for impl in impls:
        learner, step = runner(impl, first_order, backend)
        step(batch)
        grads[impl] = {
            n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None
        }
    ref = grads["loop"]
    scale = max(g.abs().max().item() for g in ref.values())
    out = {}
    for impl, g in grads.items():
        assert g.keys() == ref.keys(), (impl, set(g) ^ set(ref))
        out[impl] = max((g[n] - ref[n]).abs().max().item() for n in ref) / scale
    return out


def time_impls(
    impls,
    first_order: bool,
    batch: TaskBatch,
    repeats: int,
    warmup: int,
    backend: str | None,
    block: int = 1,
) -> dict:
    """Per implementation: the timed repeats (each the mean time per step of ``block``
    consecutive steps), and (key "warmup") the warm-up steps' times (a *_compiled
    implementation has compiled already, in check_gradients)."""
    runners = {impl: runner(impl, first_order, backend)[1] for impl in impls}
    warm = {impl: [] for impl in impls}
    for _ in range(warmup):
        for impl in impls:
            t0 = time.perf_counter()
            runners[impl](batch)
            warm[impl].append(time.perf_counter() - t0)
    times = {impl: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for impl in order:
            t0 = time.perf_counter()
            for _ in range(block):
                runners[impl](batch)
            times[impl].append((time.perf_counter() - t0) / block)
    return {"timed": times, "warmup": warm}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(impl: str, first_order: bool, tasks: int, backend: str | None) -> None:
    """Peak resident-memory growth during 2 meta-steps over the RSS just before the
    first (sampled every 0.2 ms by a thread; torch releases the GIL in its kernels).
    Freed memory mostly stays with the process, so only the first step's peak counts."""
    import gc
    import threading

    if DOMAIN == "omniglot":
        # one step on a single task first: loads the C++ ops and imports higher, whose
        # resident memory is no part of a step's (and costs 1/T of a step's own); then
        # one measured step
        batch = make_omniglot_batch(tasks)
        _, step = runner(impl, first_order, backend)
        step(batch.slice(0, 1))
    else:
        batch = make_batch(tasks)
        _, step = runner(impl, first_order, backend)
    gc.collect()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(1 if DOMAIN == "omniglot" else 2):
        step(batch)
    done.set()
    thread.join()
    out = {"peak_mb": (peak[0] - base) / 2**20}
    if DOMAIN == "omniglot":
        # (not ru_maxrss: Linux keeps the parent's peak across fork and exec, so a child
        # reports the benchmark process's peak whenever that is larger)
        out["base_rss_mb"] = base / 2**20
    print(json.dumps(out))


def peak_memory(
    impl: str, first_order: bool, tasks: int, backend: str | None, threads: int | None
) -> float:
    cmd = [sys.executable, __file__, "--memory-child", impl, "--tasks", str(tasks)]
    cmd += ["--method", METHOD]
    if CLAMP is not None:
        cmd += ["--clamp", str(CLAMP)]
    if WEIGHTS:
        cmd += ["--weights", WEIGHTS]
    if backend:
        cmd += ["--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    if first_order:
        cmd.append("--first-order-child")
    cmd += ["--allocator", ALLOCATOR]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def peak_memory_detail(
    impl: str, first_order: bool, tasks: int, backend: str | None, threads: int | None
) -> dict:
    """Omniglot mode: the memory child's whole report (peak growth, RSS before the step)."""
    cmd = [sys.executable, __file__, "--memory-child", impl, "--tasks", str(tasks)]
    cmd += ["--method", METHOD, "--allocator", ALLOCATOR, "--domain", DOMAIN]
    if backend:
        cmd += ["--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    if first_order:
        cmd.append("--first-order-child")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_omniglot_gradients(
    impls, first_order: bool, batch: TaskBatch, backend, dtype=torch.float32
) -> dict:
    """Per implementation: the meta-loss and the max rel. meta-gradient error against the
    loop (max over all parameters of |g - g_loop|, over max |g_loop|) in ``dtype``, or the
    exception it raised. Raises AssertionError where mumo or higher is off by more than
    the tolerance of ``dtype`` (vmap is only reported)."""
    tol = OMNIGLOT_F64_TOL if dtype == torch.float64 else OMNIGLOT_GRAD_TOL
    if dtype != torch.float32:
        batch = TaskBatch(
            batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y
        )
    grads, out = {}, {}
    for impl in impls:
        learner, step = runner(impl, first_order, backend)
        learner.to(dtype)  # (in place: higher's module shares the parameters)
        try:
            loss = step(batch)
        except Exception as e:  # noqa: BLE001 (vmap: reported, not timed)
            if impl in ("mumo", "loop", "higher"):
                raise
            out[impl] = {"failed": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            continue
        out[impl] = {"loss": loss}
        grads[impl] = {
            n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None
        }
    ref = grads["loop"]
    scale = max(g.abs().max().item() for g in ref.values())
    for impl, g in grads.items():
        assert g.keys() == ref.keys(), (impl, set(g) ^ set(ref))
        err = max((g[n] - ref[n]).abs().max().item() for n in ref) / scale
        out[impl]["grad_error"] = err
        if impl != "vmap":
            assert err <= tol, (
                f"{impl}: {dtype} meta-gradient differs from the loop's by {err:.2e} "
                f"(relative), more than {tol:g}; not timing a wrong computation"
            )
    return out


# Profile of one implementation's step: its self CPU time by phase (record_function
# labels put around the calls below while profiling) and by the kind of operation the
# time was spent under (the outermost op or autograd node inside the phase).
PHASE_ENCODER = "encoder + modulation forward"
PHASE_INNER = "inner autograd.grad"
PHASE_BACKWARD = "meta backward"
PHASE_REST = "base forward (support, query) + loss"
KINDS = (
    ("batch norm", ("batchnorm", "batch_norm", "bn_")),
    ("conv", ("conv",)),
    ("FiLM + ReLU epilogue", ("epilogue", "relu", "threshold")),
    ("GRU", ("gru", "rnn")),
    ("linear", ("linear", "addmm", "mm", "matmul")),
    ("loss", ("softmax", "nll", "cross_entropy")),
)


def _kind(name: str) -> str:
    low = name.removeprefix("autograd::engine::evaluate_function: ").lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other (elementwise, copies, sums, ...)"


def _labelled(label: str, fn):
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def profile_step(impl: str, first_order: bool, batch: TaskBatch, backend, steps: int = 3):
    """torch.profiler over ``steps`` meta-steps (after one unprofiled): self CPU time per
    step (ms) by phase and kind, and the top ops by self CPU time (text)."""
    learner, step = runner(impl, first_order, backend)
    step(batch)
    patched = [(torch.autograd, "grad"), (torch.autograd, "backward")]
    saved = [getattr(obj, name) for obj, name in patched]
    torch.autograd.grad = _labelled(PHASE_INNER, saved[0])
    torch.autograd.backward = _labelled(PHASE_BACKWARD, saved[1])
    for part in ("encoder", "modulation"):
        if hasattr(learner, part):
            getattr(learner, part).forward = _labelled(
                PHASE_ENCODER, getattr(learner, part).forward
            )
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step(batch)
    finally:
        for (obj, name), fn in zip(patched, saved):
            setattr(obj, name, fn)
    labels = {PHASE_ENCODER, PHASE_INNER, PHASE_BACKWARD}
    split: dict[str, dict[str, float]] = {}
    for event in prof.events():
        if event.name in labels:
            continue
        phase, top, e = PHASE_REST, event, event
        while e is not None:
            if e.name in labels:
                phase = e.name
                break
            top, e = e, e.cpu_parent
        kinds = split.setdefault(phase, {})
        kind = _kind(top.name)
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / steps
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return table, split


def environment(backend: str | None) -> dict:
    cpu = cpu_name()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import higher

        versions["higher"] = getattr(higher, "__version__", "0.2.1")
    except ImportError:
        pass
    from mumo_fast.ops import backends

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(),
        "versions": versions,
        "ops_backend": backend or backends.resolve("auto", torch.device("cpu"), "film_linear"),
        "allocator": runtime.allocator_description(),
    }


def _block_text(block: int) -> str:
    if block == 1:
        return " of one step each"
    return f" of {block} consecutive steps each (steady state)"


def markdown(result: dict, command: str, note: str | None = None) -> str:
    env = result["environment"]
    if result.get("method", "mumomaml") == "maml":
        title = "## Meta-training step (regression, MAML: the base network alone)"
        model = "MLP 1-100-100-100-1, no encoder, no modulation"
    else:
        title = "## Meta-training step (regression, MuMoMAML)"
        model = "MLP 1-100-100-100-1 with FiLM, bi-GRU encoder, MLP modulation heads"
    if result.get("clamp") is not None:
        title += f", inner-gradient clamp {result['clamp']:g}"
        model += f"; every implementation clamps the inner gradients at ±{result['clamp']:g}"
    if result.get("weights"):
        title += ", trained weights"
        model += f"; weights of the trained model `{result['weights']}`"
    if env["threads"] != 1:
        title += f", {env['threads']} threads"
    if result.get("block", 1) != 1:
        title += ", steady state"
    lines = [
        title,
        "",
        f"Three-mode regression data ({model}), "
        f"T={result['tasks']}, K={K}, {Q} query points, {STEPS} inner steps, full meta-gradient, "
        "optimizer step excluded. Tasks/s from the median of "
        f"{result['repeats']} round-robin repeats{_block_text(result.get('block', 1))}; speedups are ratios measured in the same run. "
        f"CPU: {env['cpu']}, {env['threads']} threads, torch {env['versions']['torch']}, "
        f"ops backend `{env['ops_backend']}`; allocator: {env.get('allocator', 'glibc default')}; "
        f"load average at start {env['loadavg_at_start'][0]:.1f} "
        "(a shared machine: absolute numbers are noisy, ratios less so).",
        "",
        f"Command: `{command}`",
        "",
        "| order | implementation | tasks/s | vs loop | vs vmap | peak memory (MB) | max rel. grad error vs loop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for order, rows in result["results"].items():
        for impl, row in rows.items():
            mem = row.get("peak_mb")
            lines.append(
                f"| {order} | {impl} | {row['tasks_per_s']:.0f} | {row['vs_loop']:.1f}x | "
                f"{row['vs_vmap']:.2f}x | {'-' if mem is None else f'{mem:.0f}'} | {row['grad_error']:.1e} |"
            )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _command() -> str:
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is not part of the command to rerun
        argv = argv[: argv.index("--note")] + argv[argv.index("--note") + 2 :]
    return "python bench/meta_step.py " + " ".join(argv)


def main_omniglot(args) -> None:
    impls = [i for i in args.impls.split(",") if i]
    if set(impls) - set(OMNIGLOT_IMPLS):
        raise SystemExit(
            f"--impls: unknown {sorted(set(impls) - set(OMNIGLOT_IMPLS))}; known: {OMNIGLOT_IMPLS}"
        )
    if "loop" not in impls:
        raise SystemExit("--impls must include loop (the reference for ratios and gradients)")
    skipped = {}
    if "higher" in impls:
        try:
            import higher  # noqa: F401
        except ImportError:
            impls.remove("higher")
            skipped["higher"] = "not installed"
    batch = make_omniglot_batch(args.tasks)
    probe = omniglot_learner(False, args.backend)
    steps, lr, clamp = _inner(probe)
    env = environment(args.backend)
    from mumo_fast.ops import backends

    env["ops_backend"] = {
        op: args.backend or backends.resolve("auto", torch.device("cpu"), op)
        for op in ("film_conv2d", "film_batch_norm", "film_linear")
    }
    result = {
        "domain": "omniglot",
        "method": args.method,
        "ways": WAYS,
        "shots": SHOTS,
        "queries_per_class": QUERIES,
        "tasks": args.tasks,
        "inner_steps": steps,
        "inner_lr": lr,
        "inner_grad_clamp": clamp,
        "learner_config": probe.config,
        "parameters": sum(p.numel() for p in probe.parameters()),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "block": args.block,
        "grad_tolerance": OMNIGLOT_GRAD_TOL,
        "grad_tolerance_f64": OMNIGLOT_F64_TOL,
        "f64_check_tasks": OMNIGLOT_F64_TASKS,
        "skipped": skipped,
        "environment": env,
        "results": {},
    }
    del probe
    for order in args.orders.split(","):
        first = order == "first"
        checks64 = check_omniglot_gradients(
            impls, first, batch.slice(0, OMNIGLOT_F64_TASKS), args.backend, torch.float64
        )
        checks = check_omniglot_gradients(impls, first, batch, args.backend)
        for impl, c in checks64.items():
            if "failed" in c and "failed" not in checks[impl]:
                checks[impl]["failed_float64"] = c["failed"]
            elif "grad_error" in c:
                checks[impl]["grad_error_f64"] = c["grad_error"]
        timed = [i for i in impls if "failed" not in checks[i]]
        timing = time_impls(
            timed, first, batch, args.repeats, args.warmup, args.backend, args.block
        )
        med = {impl: median(ts) for impl, ts in timing["timed"].items()}
        rows = {}
        for impl in impls:
            row = dict(checks[impl])
            if impl in med:
                row.update(
                    median_s=med[impl],
                    tasks_per_s=args.tasks / med[impl],
                    vs_loop=med["loop"] / med[impl],
                    vs_loop_paired=paired_ratio(timing["timed"]["loop"], timing["timed"][impl]),
                    times_s=timing["timed"][impl],
                    warmup_s=timing["warmup"][impl],
                )
                if not args.no_memory:
                    row["memory"] = peak_memory_detail(
                        impl, first, args.tasks, args.backend, args.threads
                    )
                    row["peak_mb"] = row["memory"]["peak_mb"]
            rows[impl] = row
            if "failed" in row:
                print(f"{order:6s} {impl:7s} failed: {row['failed']}", flush=True)
                continue
            print(
                f"{order:6s} {impl:7s} {row['tasks_per_s']:7.1f} tasks/s  "
                f"{row['vs_loop']:5.2f}x loop  grad err {row['grad_error']:.1e} (f32), "
                f"{row.get('grad_error_f64', float('nan')):.1e} (f64)  "
                f"mem {row.get('peak_mb', float('nan')):.0f} MB",
                flush=True,
            )
        result["results"][order] = rows
    if args.profile:
        result["profile"] = {}
        for impl in [i for i in args.profile.split(",") if i]:
            table, split = profile_step(impl, False, batch, args.backend)
            result["profile"][impl] = {"self_cpu_ms_per_step": split, "top_ops": table}
            total = sum(sum(k.values()) for k in split.values())
            print(f"\nsecond order, {impl}: self CPU time per step, {total:.0f} ms in all")
            for phase, kinds in split.items():
                print(f"  {phase}: {sum(kinds.values()):.0f} ms")
                for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
                    print(f"      {kind:40s} {ms:8.1f}")
            print(table, flush=True)
    result["environment"]["loadavg_at_end"] = os.getloadavg()
    result["command"] = _command()
    write_json(args.out, result)
    if args.markdown:
        update_markdown(args.markdown, markdown_omniglot(result, result["command"], args.note))


def paired_ratio(loop_times: list, times: list) -> float:
    """Median over round-robin rounds of loop time / this time, both from the same round
    (load that drifts between rounds cancels)."""
    return median(a / b for a, b in zip(loop_times, times))


def markdown_omniglot(result: dict, command: str, note: str | None = None) -> str:
    env = result["environment"]
    method = "MuMoMAML (FiLM)" if result["method"] == "mumomaml" else "MAML"
    clamp = result.get("inner_grad_clamp")
    backends_used = ", ".join(f"{op} `{b}`" for op, b in env["ops_backend"].items())
    lines = [
        "## Omniglot meta-step" + ("" if result["method"] == "mumomaml" else " (MAML)"),
        "",
        f"{method}, {result['ways']}-way {result['shots']}-shot, "
        f"{result['queries_per_class']} queries per class, T={result['tasks']}, "
        f"{result['inner_steps']} inner step (lr {result['inner_lr']:g}"
        + (f", inner-gradient clamp {clamp:g}" if clamp is not None else "")
        + f"), the model the Omniglot domain trains (`run_config({result['method']!r}, 'film', "
        f"{result['ways']}, {result['shots']})['learner']`: 4 blocks of 3x3 conv stride 2 "
        "with 64 channels, per-task batch norm, FiLM, ReLU, a linear head"
        + (
            "; the conv image encoder with a bi-GRU and the modulation heads"
            if result["method"] == "mumomaml"
            else ""
        )
        + f"; {result.get('parameters', 0):,} parameters), fresh weights; whole meta-steps "
        f"(forward and backward of the meta-loss), optimizer step excluded. Tasks/s from the "
        f"median of {result['repeats']} round-robin repeats{_block_text(result['block'])}; "
        "vs loop: the ratio of the medians, and the median of the per-round ratios. "
        f"CPU: {env['cpu']}, {env['threads']} threads, torch {env['versions']['torch']}, "
        f"higher {env['versions'].get('higher', '-')}; ops: {backends_used}; "
        f"allocator: {env['allocator']}; load average "
        f"{env['loadavg_at_start'][0]:.1f} at start, {env['loadavg_at_end'][0]:.1f} at end.",
        "",
        f"Command: `{command}`",
        "",
        "| order | implementation | tasks/s | vs loop | vs loop, per round | peak memory (MB) | "
        f"max rel. grad error vs loop, float32 (T={result['tasks']}) | "
        f"float64 (T={result.get('f64_check_tasks', '-')}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for order, rows in result["results"].items():
        for impl, row in rows.items():
            if "failed" in row:
                lines.append(f"| {order} | {impl} | failed: {row['failed']} | | | | | |")
                continue
            mem = row.get("peak_mb")
            f64 = row.get("grad_error_f64")
            paired = paired_ratio(rows["loop"]["times_s"], row["times_s"])
            lines.append(
                f"| {order} | {impl} | {row['tasks_per_s']:.1f} | {row['vs_loop']:.2f}x | "
                f"{paired:.2f}x | "
                f"{'-' if mem is None else f'{mem:.0f}'} | {row['grad_error']:.1e} | "
                f"{'-' if f64 is None else f'{f64:.1e}'} |"
            )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--domain", default="regression", choices=("regression", "omniglot"),
        help="omniglot: the 5-way 1-shot conv meta-step (T defaults to 32)",
    )  # fmt: skip
    ap.add_argument("--tasks", type=int, default=None, help="T (default 75; omniglot 32)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--block", type=int, default=1, help="consecutive steps per round-robin turn (>= 1)"
    )
    ap.add_argument("--orders", default="second,first")
    ap.add_argument(
        "--impls",
        default=None,
        help=f"default {','.join(IMPLS)}; omniglot {','.join(OMNIGLOT_IMPLS)}",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--method", default="mumomaml", choices=("mumomaml", "maml"))
    ap.add_argument("--clamp", type=float, default=None, help="inner-gradient clamp")
    ap.add_argument("--weights", default=None, help="a trained model.pt with the same config")
    ap.add_argument(
        "--backend", default=None, help="ops backend of mumo_fast's layers (default: auto)"
    )
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--out", default=None, help="default bench/results/cpu_meta_step[_omniglot].json"
    )
    ap.add_argument(
        "--profile", default=None, metavar="IMPLS",
        help="omniglot: after timing, torch.profiler over these implementations' second-order "
        "step (top ops by self CPU time)",
    )  # fmt: skip
    ap.add_argument(
        "--world-size", type=int, default=None, metavar="N",
        help="data-parallel mode: N gloo processes (one thread each) against one process",
    )  # fmt: skip
    ap.add_argument("--markdown", default=None, help="update this file's meta-step section")
    ap.add_argument("--note", default=None, help="a paragraph appended to the markdown section")
    ap.add_argument(
        "--render", default=None, metavar="JSON", help="only write --markdown from a results file"
    )
    add_allocator_argument(ap)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--first-order-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global METHOD, CLAMP, WEIGHTS, ALLOCATOR, DOMAIN
    METHOD, CLAMP, WEIGHTS, ALLOCATOR = args.method, args.clamp, args.weights, args.allocator
    DOMAIN = args.domain
    omniglot = args.domain == "omniglot"
    if args.tasks is None:
        args.tasks = 32 if omniglot else 75
    if args.impls is None:
        args.impls = ",".join(OMNIGLOT_IMPLS if omniglot else IMPLS)
    if args.out is None:
        world = f"_world{args.world_size}" if args.world_size else ""
        args.out = f"bench/results/cpu_meta_step{world}{'_omniglot' if omniglot else ''}.json"
    if omniglot and (args.clamp is not None or args.weights):
        raise SystemExit("--clamp and --weights are for the regression mode")
    apply_allocator(args.allocator)
    if args.memory_child:
        memory_child(args.memory_child, args.first_order_child, args.tasks, args.backend)
        return
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        if result.get("mode") == "world_size":
            update_markdown(args.markdown, markdown_world(result, args.note))
            return
        render = markdown_omniglot if result.get("domain") == "omniglot" else markdown
        update_markdown(args.markdown, render(result, result["command"], args.note))
        return
    if args.world_size:
        main_world(args)
        return
    if args.block < 1:
        raise SystemExit(f"--block must be >= 1, got {args.block}")
    if omniglot:
        main_omniglot(args)
        return
    impls = [i for i in args.impls.split(",") if i]
    known = {*IMPLS, "mumo_dense_compiled", "mumo_lowrank_compiled"}
    if set(impls) - known:
        raise SystemExit(f"--impls: unknown {sorted(set(impls) - known)}; known: {sorted(known)}")
    if "loop" not in impls:
        raise SystemExit("--impls must include loop (the reference for ratios and gradients)")
    batch = make_batch(args.tasks)
    result = {
        "method": args.method,
        "clamp": args.clamp,
        "weights": args.weights,
        "tasks": args.tasks,
        "repeats": args.repeats,
        "block": args.block,
        "environment": environment(args.backend),
        "results": {},
    }
    for order in args.orders.split(","):
        first = order == "first"
        errors = check_gradients(impls, first, batch, args.backend)
        timing = time_impls(
            impls, first, batch, args.repeats, args.warmup, args.backend, args.block
        )
        times = timing["timed"]
        med = {impl: median(ts) for impl, ts in times.items()}
        rows = {}
        for impl in impls:
            rows[impl] = {
                "median_s": med[impl],
                "tasks_per_s": args.tasks / med[impl],
                "vs_loop": med["loop"] / med[impl],
                "vs_vmap": med["vmap"] / med[impl] if "vmap" in med else float("nan"),
                "grad_error": errors[impl],
                "times_s": times[impl],
                "warmup_s": timing["warmup"][impl],
            }
            # (not for mumo_compiled: its first step's peak is the compiler's, and after a
            # warm-up step freed memory stays with the process, so neither is the step's)
            if not args.no_memory and not impl.endswith("_compiled"):
                rows[impl]["peak_mb"] = peak_memory(
                    impl, first, args.tasks, args.backend, args.threads
                )
            print(
                f"{order:6s} {impl:13s} {rows[impl]['tasks_per_s']:8.1f} tasks/s  "
                f"{rows[impl]['vs_loop']:5.1f}x loop  {rows[impl]['vs_vmap']:5.2f}x vmap  "
                f"grad err {errors[impl]:.1e}  mem {rows[impl].get('peak_mb', float('nan')):.0f} MB",
                flush=True,
            )
        result["results"][order] = rows
    result["environment"]["loadavg_at_end"] = os.getloadavg()
    argv = sys.argv[1:]
    if "--note" in argv:  # the note is not part of the command to rerun
        argv = argv[: argv.index("--note")] + argv[argv.index("--note") + 2 :]
    result["command"] = "python bench/meta_step.py " + " ".join(argv)
    write_json(args.out, result)
    if args.markdown:
        update_markdown(args.markdown, markdown(result, result["command"], args.note))


if __name__ == "__main__":
    main()
