"""Second-order MAML meta-step written directly with the fused ops, against the same
step as a Python loop over tasks with plain torch ops.

Workload: regression MLP 1-100-100-100-1 (ReLU) with FiLM (per-task gamma, beta, as a
modulation network would produce them) on the three hidden layers; T tasks (default
75), K=5 support and 10 query points, 5 inner SGD steps (lr 0.001, the paper's) on every weight and
bias, second order (``torch.autograd.grad(create_graph=True)``), meta-gradients of the
summed query losses w.r.t. the initial weights and biases and the FiLM vectors.

Implementations (dense per-task fast weights [T, OUT, IN]; every layer is one
``mumo_fast.ops.film_linear`` call over all tasks; backend cpp, eager, reference):
  ops-<backend>           the inner gradient in factored form: D = dL/dz per layer written
                          out through the chain (relu mask, gamma, D W), the update one
                          ``mumo_fast.ops.linear_sgd`` per layer (W - lr D^T A as one
                          batched GEMM into W: no weight-sized gradient is ever formed)
  ops-autograd-<backend>  the inner gradient by ``torch.autograd.grad`` w.r.t. the weights,
                          the update ``mumo_fast.ops.clamped_sgd``
  loop                    per task: functional params, F.linear + FiLM + relu, autograd.grad
                          (create_graph=True) inner steps, query losses summed, backward once

Timing: round-robin over implementations per repeat, median; speedups are ratios of
medians from the same run. Gradients of every implementation are checked against the
loop (max relative error per tensor).

    python bench/maml_ops_step.py       # writes bench/results/cpu_maml_ops_step.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import (  # noqa: E402
    add_allocator_argument,
    apply_allocator,
    cpu_environment,
    update_markdown,
    write_json,
)

from mumo_fast import ops  # noqa: E402

SIZES = (1, 100, 100, 100, 1)
K, Q, STEPS, LR = 5, 10, 5, 1e-3
SECTION_TITLE = "## CPU second-order MAML step with the ops (bench/maml_ops_step.py)"


def make_problem(t: int, seed: int = 0):
    """Initial params [W1, b1, ..., W4, b4] (shared), FiLM [g1, be1, g2, be2, g3, be3]
    ([T, 100] each), support/query data."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, o in zip(SIZES[:-1], SIZES[1:]):
        params.append((torch.randn(o, i, generator=g) * (2 / i) ** 0.5).requires_grad_())
        params.append((torch.randn(o, generator=g) * 0.1).requires_grad_())
    film = []
    for o in SIZES[1:-1]:
        film.append((1 + 0.2 * torch.randn(t, o, generator=g)).requires_grad_())
        film.append((0.1 * torch.randn(t, o, generator=g)).requires_grad_())
    x = torch.rand(t, K + Q, 1, generator=g) * 10 - 5
    amp = torch.rand(t, 1, 1, generator=g) * 4 + 1
    phase = torch.rand(t, 1, 1, generator=g) * 3
    y = amp * torch.sin(x + phase)
    return params, film, (x[:, :K], y[:, :K], x[:, K:], y[:, K:])


def ops_net(backend: str, x, fast, film) -> list[torch.Tensor]:
    """The MLP on [T, N, 1] inputs with (shared or per-task) fast weights; returns every
    layer's input and, last, the output."""
    hs = [x]
    for layer in range(4):
        w, b = fast[2 * layer], fast[2 * layer + 1]
        if layer < 3:
            g, be = film[2 * layer], film[2 * layer + 1]
            hs.append(ops.film_linear(hs[-1], w, b, g, be, "relu", backend=backend))
        else:
            hs.append(ops.film_linear(hs[-1], w, b, backend=backend))
    return hs


def ops_step(backend: str, params, film, data) -> list[torch.Tensor]:
    xs, ys, xq, yq = data
    fast = list(params)
    for _ in range(STEPS):
        hs = ops_net(backend, xs, fast, film)
        # D = dL/dz of each layer, last to first (L: sum over tasks of the mean loss)
        d = 2 * (hs[-1] - ys) / K
        new = [None] * len(fast)
        for layer in range(3, -1, -1):
            w, b = fast[2 * layer], fast[2 * layer + 1]
            new[2 * layer], new[2 * layer + 1] = ops.linear_sgd(
                w, b, d, hs[layer], LR, backend=backend
            )
            if layer > 0:
                gy = torch.bmm(d, w) if w.dim() == 3 else d @ w
                # relu'(.) from the output's sign; the mask's own derivative is zero
                d = gy * (hs[layer] > 0) * film[2 * (layer - 1)].unsqueeze(1)
        fast = new
    qloss = ((ops_net(backend, xq, fast, film)[-1] - yq) ** 2).mean(dim=(1, 2)).sum()
    return list(torch.autograd.grad(qloss, params + film))


def ops_autograd_step(backend: str, params, film, data) -> list[torch.Tensor]:
    xs, ys, xq, yq = data
    t = xs.shape[0]

    def net(x, fast):
        return ops_net(backend, x, fast, film)[-1]

    # per-task copies of the initial weights: [T, OUT, IN] and [T, OUT]
    fast = [p.expand(t, *p.shape) for p in params]
    for _ in range(STEPS):
        # sum over tasks of each task's mean loss: per-task gradients equal the loop's
        loss = ((net(xs, fast) - ys) ** 2).mean(dim=(1, 2)).sum()
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        fast = ops.clamped_sgd(fast, grads, LR, backend=backend)
    qloss = ((net(xq, fast) - yq) ** 2).mean(dim=(1, 2)).sum()
    return list(torch.autograd.grad(qloss, params + film))


def loop_step(params, film, data) -> list[torch.Tensor]:
    xs, ys, xq, yq = data

    def net(x, fast, t):
        h = x
        for layer in range(4):
            h = F.linear(h, fast[2 * layer], fast[2 * layer + 1])
            if layer < 3:
                h = torch.relu(h * film[2 * layer][t] + film[2 * layer + 1][t])
        return h

    total = 0.0
    for t in range(xs.shape[0]):
        fast = list(params)
        for _ in range(STEPS):
            loss = ((net(xs[t], fast, t) - ys[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - LR * g for w, g in zip(fast, grads)]
        total = total + ((net(xq[t], fast, t) - yq[t]) ** 2).mean()
    return list(torch.autograd.grad(total, params + film))


def max_rel_error(got, want) -> float:
    return max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=75)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--impls",
        nargs="*",
        default=[
            "loop",
            "ops-cpp",
            "ops-eager",
            "ops-reference",
            "ops-autograd-cpp",
            "ops-autograd-reference",
        ],
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_allocator_argument(ap)
    ap.add_argument("--json", default="bench/results/cpu_maml_ops_step.json")
    ap.add_argument("--markdown", default=None, help="update this file's section")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_allocator(args.allocator)
    start = time.time()
    params, film, data = make_problem(args.tasks)
    runs = {"loop": lambda: loop_step(params, film, data)}
    for impl in args.impls:
        if impl.startswith("ops-autograd-"):
            runs[impl] = lambda b=impl[13:]: ops_autograd_step(b, params, film, data)
        elif impl.startswith("ops-"):
            runs[impl] = lambda b=impl[4:]: ops_step(b, params, film, data)
    impls = [i for i in args.impls if i in runs]
    want = runs["loop"]()
    errors = {i: max_rel_error(runs[i](), want) for i in impls}  # also warms up
    times: dict[str, list[float]] = {i: [] for i in impls}
    for rep in range(args.repeats):
        for i in impls[rep % len(impls) :] + impls[: rep % len(impls)]:
            t0 = time.perf_counter()
            runs[i]()
            times[i].append(time.perf_counter() - t0)
    loop_s = median(times["loop"]) if "loop" in times else float("nan")
    rows = {}
    for i in impls:
        med = median(times[i])
        rows[i] = {
            "median_s": med,
            "tasks_per_s": args.tasks / med,
            "speedup_vs_loop": loop_s / med,
            "max_rel_grad_error_vs_loop": errors[i],
        }
        print(
            f"{i:14s} {med * 1e3:9.1f} ms  {args.tasks / med:8.0f} tasks/s  "
            f"{loop_s / med:6.2f}x loop  grad err {errors[i]:.1e}",
            flush=True,
        )
    env = cpu_environment()
    result = {
        "environment": env,
        "command": "python " + " ".join(sys.argv),
        "tasks": args.tasks,
        "repeats": args.repeats,
        "wall_s": time.time() - start,
        "results": rows,
    }
    write_json(args.json, result)
    if args.markdown:
        update_markdown(args.markdown, _markdown(result))


def _markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        SECTION_TITLE,
        "",
        f"MLP 1-100-100-100-1 with FiLM on the hidden layers, T={result['tasks']}, K={K}, "
        f"{Q} query points, {STEPS} inner steps, second order, dense per-task weights; "
        f"median of {result['repeats']} round-robin repeats. CPU: {env['cpu']}, "
        f"{env['threads']} threads, torch {env['torch']}, load average at start "
        f"{env['loadavg_at_start'][0]:.1f}; allocator: {env.get('allocator', 'glibc default')}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| implementation | ms / meta-step | tasks/s | vs loop | max rel. grad error vs loop |",
        "|---|---|---|---|---|",
    ]
    for impl, row in result["results"].items():
        lines.append(
            f"| {impl} | {row['median_s'] * 1e3:.1f} | {row['tasks_per_s']:.0f} | "
            f"{row['speedup_vs_loop']:.1f}x | {row['max_rel_grad_error_vs_loop']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
