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
from torch import nn

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


def vmap_step(learner: MetaLearner, batch: TaskBatch, first_order: bool) -> float:
    film = film_of(learner, batch)
    base = dict(learner.base.named_parameters())

    def task(params, f, sx, sy, qx, qy):
        def support_loss(p):
            return F.mse_loss(mlp(p, sx, f), sy)

        for _ in range(STEPS):
            g = torch.func.grad(support_loss)(params)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            if CLAMP is not None:
                g = {k: v.clamp(-CLAMP, CLAMP) for k, v in g.items()}
            params = {k: params[k] - LR * g[k] for k in params}
        return F.mse_loss(mlp(params, qx, f), qy)

    film_dim = None if film is None else 0
    losses = torch.func.vmap(task, in_dims=(None, film_dim, 0, 0, 0, 0))(
        base, film, batch.support_x, batch.support_y, batch.query_x, batch.query_y
    )
    loss = losses.mean()
    loss.backward()
    return float(loss)


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


def runner(impl: str, first_order: bool, backend: str | None = None):
    """A learner and a function performing one meta-step (zero_grad + forward + backward)."""
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
    for _ in range(2):
        step(batch)
    done.set()
    thread.join()
    print(json.dumps({"peak_mb": (peak[0] - base) / 2**20}))


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
        "|---|---|---|---|---|---|---|",
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=75)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--block", type=int, default=1, help="consecutive steps per round-robin turn (>= 1)"
    )
    ap.add_argument("--orders", default="second,first")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--method", default="mumomaml", choices=("mumomaml", "maml"))
    ap.add_argument("--clamp", type=float, default=None, help="inner-gradient clamp")
    ap.add_argument("--weights", default=None, help="a trained model.pt with the same config")
    ap.add_argument(
        "--backend", default=None, help="ops backend of mumo_fast's layers (default: auto)"
    )
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="bench/results/cpu_meta_step.json")
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
    global METHOD, CLAMP, WEIGHTS, ALLOCATOR
    METHOD, CLAMP, WEIGHTS, ALLOCATOR = args.method, args.clamp, args.weights, args.allocator
    apply_allocator(args.allocator)
    if args.memory_child:
        memory_child(args.memory_child, args.first_order_child, args.tasks, args.backend)
        return
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        update_markdown(args.markdown, markdown(result, result["command"], args.note))
        return
    if args.block < 1:
        raise SystemExit(f"--block must be >= 1, got {args.block}")
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
