"""CPU throughput of the fused ops per backend (reference, eager, cpp).

Shapes: the regression net's hidden layer (film_linear, T=75 tasks, N=15 points,
100x100, per-task and shared weights) and the Omniglot net (T=32, N=80 images;
film_conv2d 3x3 stride 2 padding 1: 1->64 channels at 28x28, 64->64 at 14x14, 7x7
and 4x4 inputs, per-task and shared weights; film_batch_norm on the matching conv
outputs [T, N, 64, H, W]). Every op runs with bias, gamma, beta and ReLU.

Modes: ``fwd`` (no grad), ``fwd+bwd`` (gradients of <y, c> for a fixed random c with
respect to every input that requires grad; the image input of the first conv does
not), ``2nd`` (gradient of the squared norm of those gradients: the MAML pattern).

Timing: ``torch.utils.benchmark.Timer`` (all threads), round-robin over backends per
repeat so that load drift hits all alike; medians over the repeats; speedups are
reference time / backend time from the same run (> 1: faster than reference).

    python bench/ops_cpu.py                      # writes bench/results/cpu_ops.json
    nice python bench/ops_cpu.py --repeats 7 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from statistics import median

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import (  # noqa: E402
    add_allocator_argument,
    apply_allocator,
    cpu_name,
    update_markdown,
    write_json,
)

from mumo_fast import ops  # noqa: E402

BACKENDS = ("reference", "eager", "cpp")
MODES = ("fwd", "fwd+bwd", "2nd")
SECTION_TITLE = "## CPU ops (bench/ops_cpu.py)"


def _r(*shape, grad=True, scale=1.0, shift=0.0, gen):
    t = torch.randn(*shape, generator=gen) * scale + shift
    return t.requires_grad_(grad)


def linear_case(t, n, i, o, shared):
    def make(gen):
        w = _r(*((o, i) if shared else (t, o, i)), scale=i**-0.5, gen=gen)
        b = _r(*((o,) if shared else (t, o)), scale=0.1, gen=gen)
        args = [_r(t, n, i, gen=gen), w, b, _r(t, o, scale=0.3, shift=1.0, gen=gen)]
        args.append(_r(t, o, scale=0.1, gen=gen))

        def fn(backend, x, w, b, g, be):
            return ops.film_linear(x, w, b, g, be, "relu", backend=backend)

        return fn, args

    label = f"T={t} N={n} {i}->{o}"
    return ("film_linear", label, "shared" if shared else "per-task", make)


def conv_case(t, n, c, hw, o, shared):
    def make(gen):
        w = _r(*((o, c, 3, 3) if shared else (t, o, c, 3, 3)), scale=(9 * c) ** -0.5, gen=gen)
        b = _r(*((o,) if shared else (t, o)), scale=0.1, gen=gen)
        x = _r(t, n, c, hw, hw, grad=c > 1, gen=gen)  # the image layer's input is data
        args = [x, w, b, _r(t, o, scale=0.3, shift=1.0, gen=gen), _r(t, o, scale=0.1, gen=gen)]

        def fn(backend, x, w, b, g, be):
            return ops.film_conv2d(x, w, b, g, be, 2, 1, "relu", backend=backend)

        return fn, args

    label = f"T={t} N={n} {c}->{o} {hw}x{hw}"
    return ("film_conv2d", label, "shared" if shared else "per-task", make)


def bn_case(t, n, c, hw):
    def make(gen):
        args = [
            _r(t, n, c, hw, hw, scale=2.0, shift=0.5, gen=gen),
            _r(c, scale=0.3, shift=1.0, gen=gen),
            _r(c, scale=0.1, gen=gen),
            _r(t, c, scale=0.3, shift=1.0, gen=gen),
            _r(t, c, scale=0.1, gen=gen),
        ]

        def fn(backend, x, w, b, g, be):
            return ops.film_batch_norm(x, w, b, g, be, 1e-5, "relu", backend=backend)

        return fn, args

    label = f"[{t},{n},{c},{hw},{hw}]"
    return ("film_batch_norm", label, "shared affine", make)


def all_cases():
    cases = [linear_case(75, 15, 100, 100, shared) for shared in (False, True)]
    for c, hw in ((1, 28), (64, 14), (64, 7), (64, 4)):
        cases += [conv_case(32, 80, c, hw, 64, shared) for shared in (False, True)]
    for hw in (14, 7, 4, 2):
        cases.append(bn_case(32, 80, 64, hw))
    return cases


def runners(fn, args, cot):
    """Closures for the three modes for one backend."""
    leaves = [a for a in args if a.requires_grad]

    def fwd(backend):
        with torch.no_grad():
            return fn(backend, *args)

    def fwd_bwd(backend):
        y = fn(backend, *args)
        return torch.autograd.grad(y, leaves, cot)

    def second(backend):
        y = fn(backend, *args)
        grads = torch.autograd.grad(y, leaves, cot, create_graph=True)
        norm = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(norm, leaves, allow_unused=True, materialize_grads=True)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "2nd": second}


def max_rel_error(got, want) -> float:
    got = [got] if isinstance(got, torch.Tensor) else got
    want = [want] if isinstance(want, torch.Tensor) else want
    return max(
        float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)) for g, w in zip(got, want)
    )


def run_case(case, modes, backends, repeats: int, threads: int, min_time: float) -> list[dict]:
    op, label, weights, make = case
    gen = torch.Generator().manual_seed(0)
    fn, args = make(gen)
    with torch.no_grad():
        cot = torch.randn(fn("reference", *args).shape, generator=gen)
    rows = []
    for mode in modes:
        closures = runners(fn, args, cot)
        run = closures[mode]
        want = run("reference")
        errors = {b: max_rel_error(run(b), want) for b in backends}  # also warms up
        # calls per measurement: enough for ~min_time s, so that fast ops are not timer noise
        t0 = time.perf_counter()
        run("reference")
        number = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
        times: dict[str, list[float]] = {b: [] for b in backends}
        for rep in range(repeats):
            order = backends[rep % len(backends) :] + backends[: rep % len(backends)]
            for b in order:
                timer = Timer("run(b)", globals={"run": run, "b": b}, num_threads=threads)
                times[b].append(timer.timeit(number).median)
        ref = median(times["reference"])
        for b in backends:
            med = median(times[b])
            rows.append(
                {
                    "op": op,
                    "shape": label,
                    "weights": weights,
                    "mode": mode,
                    "backend": b,
                    "median_ms": med * 1e3,
                    "speedup_vs_reference": ref / med,
                    "max_rel_error_vs_reference": errors[b],
                }
            )
        summary = "  ".join(f"{b} {median(times[b]) * 1e3:8.2f}ms" for b in backends)
        print(f"{op:16s} {label:28s} {weights:13s} {mode:8s} {summary}", flush=True)
    return rows


def environment() -> dict:
    cpu = cpu_name()
    from mumo_fast.ops.backends import cpp

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "cpp_extension": cpp.origin() if cpp.available() else None,
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    backends = result["backends"]
    others = [b for b in backends if b != "reference"]
    lines = [
        SECTION_TITLE,
        "",
        "Fused ops on CPU per backend; every op with bias, gamma, beta and ReLU. `fwd`: no grad; "
        "`fwd+bwd`: gradients of <y, c> w.r.t. every input that requires grad (not the images); "
        "`2nd`: gradient of the squared norm of those gradients. Speedup = reference median / "
        f"backend median over {result['repeats']} round-robin repeats in the same run "
        f"(> 1: faster than reference). CPU: {env['cpu']}, {env['cores']} cores, "
        f"{env['threads']} threads, torch {env['torch']}, allocator: "
        f"{env.get('allocator', 'glibc default')}; load average at start "
        f"{env['loadavg_at_start'][0]:.1f} (a shared machine: absolute times are noisy, "
        f"ratios less so). Total run {result['wall_s'] / 60:.1f} min.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| op | shape | weights | mode | reference ms | "
        + " | ".join(f"{b} ms | {b} speedup" for b in others)
        + " |",
        "|---|---|---|---|---|" + "---|---|" * len(others),
    ]
    rows = result["results"]
    keys = []
    for r in rows:
        k = (r["op"], r["shape"], r["weights"], r["mode"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        by = {r["backend"]: r for r in rows if (r["op"], r["shape"], r["weights"], r["mode"]) == k}
        cells = [f"{by['reference']['median_ms']:.2f}"]
        for b in others:
            cells += [f"{by[b]['median_ms']:.2f}", f"{by[b]['speedup_vs_reference']:.2f}x"]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ops", nargs="*", default=None, help="only these ops (e.g. film_conv2d)")
    ap.add_argument("--weights", nargs="*", default=None, help="only these weight kinds")
    ap.add_argument(
        "--shapes", nargs="*", default=None, help="only shapes whose label contains one of these"
    )
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement")
    ap.add_argument(
        "--merge", action="store_true", help="keep the JSON's rows of cases not re-measured"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_allocator_argument(ap)
    ap.add_argument("--json", default="bench/results/cpu_ops.json")
    ap.add_argument("--markdown", default=None, help="update this file's CPU ops section")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "reference" not in args.backends:
        args.backends.insert(0, "reference")
    threads = torch.get_num_threads()
    allocator = apply_allocator(args.allocator)
    start = time.time()
    env = environment()
    env["allocator"] = allocator
    rows = []
    for case in all_cases():
        if args.ops and case[0] not in args.ops:
            continue
        if args.weights and case[2] not in args.weights:
            continue
        if args.shapes and not any(part in case[1] for part in args.shapes):
            continue
        rows += run_case(
            case, args.modes, tuple(args.backends), args.repeats, threads, args.min_time
        )
    command = "python " + " ".join(sys.argv)
    if args.merge and os.path.exists(args.json):
        with open(args.json) as f:
            old = json.load(f)
        done = {(r["op"], r["shape"], r["weights"], r["mode"]) for r in rows}
        kept = [
            r for r in old["results"] if (r["op"], r["shape"], r["weights"], r["mode"]) not in done
        ]
        order = [(c[0], c[1], c[2]) for c in all_cases()]
        rows = sorted(
            kept + rows,
            key=lambda r: (
                order.index((r["op"], r["shape"], r["weights"])),
                MODES.index(r["mode"]),
                BACKENDS.index(r["backend"]),
            ),
        )
        command = old["command"] + " && " + command
    result = {
        "environment": env,
        "command": command,
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "backends": list(args.backends),
        "wall_s": time.time() - start,
        "results": rows,
    }
    write_json(args.json, result)
    if args.markdown:
        update_markdown(args.markdown, markdown(result))
        print(f"updated {args.markdown}")


if __name__ == "__main__":
    main()
