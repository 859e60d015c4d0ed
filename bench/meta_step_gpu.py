"""Full regression meta-step on the GPU: tasks per second, second order.

MLP 1-100-100-100-1 with FiLM (gamma, beta per task) on the 3 hidden layers, ReLU;
T tasks, K=5 support and 10 query points, 5 inner steps adapting every weight and bias;
the meta-gradient (second order) of the mean query loss w.r.t. the initial weights,
biases and the FiLM parameters.  Implementations, all in one run:

* ``loop``: a Python loop over tasks (the authors' style: functional params,
  ``autograd.grad(create_graph=True)`` per task);
* ``vmap``: ``torch.func.vmap`` over tasks of an inner loop written with ``torch.func.grad``;
* ``dense-reference`` / ``dense-triton``: mumo_fast.ops with per-task dense weights
  ``[T, OUT, IN]``, backend reference (batched torch ops) or triton (fused kernels), the
  update through ``ops.clamped_sgd``;
* ``lowrank-reference`` / ``lowrank-triton``: the exact low-rank form of the fast weights: the
  shared weight plus per-task rank-K corrections ``u, v`` grown by one block per inner
  step, through ``ops.film_linear_lowrank``; per-task weights are never built.

    python bench/meta_step_gpu.py --out OUTDIR [--tasks 75,1024] [--loop-max-tasks 75]
    python bench/meta_step_gpu.py --dry-run --out /tmp/x   # tiny; CPU via the interpreter

Every implementation's meta-gradients are checked against the loop's (max relative
error) before timing.  Writes OUTDIR/meta_step_gpu.json and .md after every measurement.
"""

import argparse
import json
import os
import sys
import time
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="bench/results/meta_step_gpu")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--tasks", default="75")
    p.add_argument("--loop-max-tasks", type=int, default=75)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--impls", default="loop,vmap,dense-reference,dense-triton,"
                   "lowrank-reference,lowrank-triton")  # fmt: skip
    return p.parse_args()


ARGS = _parse()
if ARGS.dry_run:
    import torch as _torch_probe  # noqa: E402

    if not _torch_probe.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mumo_fast import ops  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
T0 = time.time()
K, Q = 5, 10
ALPHA = 0.01
SIZES = [1, 8, 8, 8, 1] if ARGS.dry_run else [1, 100, 100, 100, 1]
NL = len(SIZES) - 1


def bench_ms(fn, rep_ms):
    if DEV.type == "cuda":
        from triton.testing import do_bench

        r = do_bench(fn, warmup=1, rep=rep_ms, quantiles=[0.5])
        return float(r[0] if isinstance(r, (list, tuple)) else r)
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[1]


def make_problem(t, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=dtype) * scale + shift).to(DEV)

    ws = [r(o, i, scale=(2.0 / i) ** 0.5).requires_grad_() for i, o in zip(SIZES, SIZES[1:])]
    bs = [r(o, scale=0.01).requires_grad_() for o in SIZES[1:]]
    gammas = [r(t, o, scale=0.1, shift=1.0).requires_grad_() for o in SIZES[1:-1]]
    betas = [r(t, o, scale=0.1).requires_grad_() for o in SIZES[1:-1]]
    amp, phase = r(t, 1, 1, scale=1.0, shift=2.0), r(t, 1, 1)
    xs, xq = r(t, K, 1, scale=2.5), r(t, Q, 1, scale=2.5)
    ys, yq = amp * torch.sin(xs + phase), amp * torch.sin(xq + phase)
    return {"ws": ws, "bs": bs, "gammas": gammas, "betas": betas,
            "xs": xs, "ys": ys, "xq": xq, "yq": yq, "t": t}  # fmt: skip


def meta_params(p):
    return [*p["ws"], *p["bs"], *p["gammas"], *p["betas"]]


# ------------------------------------------------------------------ implementations


def step_loop(p, steps):
    ws, bs, gam, bet = p["ws"], p["bs"], p["gammas"], p["betas"]

    def net(x, fw, fb, t):
        h = x
        for li in range(NL):
            h = F.linear(h, fw[li], fb[li])
            if li < NL - 1:
                h = torch.relu(h * gam[li][t] + bet[li][t])
        return h

    total = 0.0
    for t in range(p["t"]):
        fw, fb = list(ws), list(bs)
        for _ in range(steps):
            loss = F.mse_loss(net(p["xs"][t], fw, fb, t), p["ys"][t])
            grads = torch.autograd.grad(loss, fw + fb, create_graph=True)
            fw = [w - ALPHA * g for w, g in zip(fw, grads[:NL])]
            fb = [b - ALPHA * g for b, g in zip(fb, grads[NL:])]
        total = total + F.mse_loss(net(p["xq"][t], fw, fb, t), p["yq"][t])
    meta = total / p["t"]
    return torch.autograd.grad(meta, meta_params(p))


def step_vmap(p, steps):
    ws, bs = p["ws"], p["bs"]

    def net(x, fw, fb, g, b):
        h = x
        for li in range(NL):
            h = F.linear(h, fw[li], fb[li])
            if li < NL - 1:
                h = torch.relu(h * g[li] + b[li])
        return h

    def task_loss(fw, fb, g, b, xs, ys, xq, yq):
        def inner(fw_, fb_):
            return F.mse_loss(net(xs, fw_, fb_, g, b), ys)

        for _ in range(steps):
            gw, gb = torch.func.grad(inner, argnums=(0, 1))(fw, fb)
            fw = [w - ALPHA * d for w, d in zip(fw, gw)]
            fb = [c - ALPHA * d for c, d in zip(fb, gb)]
        return F.mse_loss(net(xq, fw, fb, g, b), yq)

    losses = torch.func.vmap(task_loss, in_dims=(None, None, 0, 0, 0, 0, 0, 0))(
        list(ws), list(bs), list(p["gammas"]), list(p["betas"]),
        p["xs"], p["ys"], p["xq"], p["yq"],
    )  # fmt: skip
    return torch.autograd.grad(losses.mean(), meta_params(p))


def _task_mse(pred, y):
    """Sum over tasks of each task's mean squared error: each task's gradient is its own."""
    return ((pred - y) ** 2).mean(dim=(1, 2)).sum()


def step_dense(p, steps, backend):
    t = p["t"]
    gam, bet = p["gammas"], p["betas"]

    def net(x, fw, fb):
        h = x
        for li in range(NL):
            last = li == NL - 1
            h = ops.film_linear(
                h, fw[li], fb[li], None if last else gam[li], None if last else bet[li],
                "none" if last else "relu", backend=backend,
            )  # fmt: skip
        return h

    fast = [w.expand(t, *w.shape) for w in p["ws"]] + [b.expand(t, *b.shape) for b in p["bs"]]
    for _ in range(steps):
        loss = _task_mse(net(p["xs"], fast[:NL], fast[NL:]), p["ys"])
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        fast = ops.clamped_sgd(fast, grads, ALPHA, None, backend=backend)
    meta = _task_mse(net(p["xq"], fast[:NL], fast[NL:]), p["yq"]) / t
    return torch.autograd.grad(meta, meta_params(p))


def step_lowrank(p, steps, backend):
    """W_t = W + v_t^T u_t with u = stacked layer inputs A_j, v = -alpha * D_j (D: grads of
    the loss w.r.t. the pre-FiLM output z, from the grads w.r.t. the layer outputs)."""
    t = p["t"]
    ws, gam, bet = p["ws"], p["gammas"], p["betas"]
    us, vs = [None] * NL, [None] * NL
    bs = [b.expand(t, *b.shape) for b in p["bs"]]

    def net(x):
        hs = [x]
        for li in range(NL):
            last = li == NL - 1
            g, b_ = (None, None) if last else (gam[li], bet[li])
            act = "none" if last else "relu"
            if us[li] is None:
                h = ops.film_linear(hs[-1], ws[li], bs[li], g, b_, act, backend=backend)
            else:
                h = ops.film_linear_lowrank(
                    hs[-1], ws[li], us[li], vs[li], bs[li], g, b_, act, backend=backend
                )
            hs.append(h)
        return hs

    for _ in range(steps):
        hs = net(p["xs"])
        loss = _task_mse(hs[-1], p["ys"])
        ghs = torch.autograd.grad(loss, hs[1:], create_graph=True)
        for li in range(NL):
            d = ghs[li]
            if li < NL - 1:
                d = d * (hs[li + 1] > 0).to(d.dtype) * gam[li].unsqueeze(1)
            a, dv = hs[li], -ALPHA * d
            us[li] = a if us[li] is None else torch.cat([us[li], a], dim=1)
            vs[li] = dv if vs[li] is None else torch.cat([vs[li], dv], dim=1)
            bs[li] = bs[li] - ALPHA * d.sum(1)
    meta = _task_mse(net(p["xq"])[-1], p["yq"]) / t
    return torch.autograd.grad(meta, meta_params(p))


IMPLS = {
    "loop": step_loop,
    "vmap": step_vmap,
    "dense-reference": lambda p, s: step_dense(p, s, "reference"),
    "dense-triton": lambda p, s: step_dense(p, s, "triton"),
    "lowrank-reference": lambda p, s: step_lowrank(p, s, "reference"),
    "lowrank-triton": lambda p, s: step_lowrank(p, s, "triton"),
}


def rel_err(got, want):
    m = 0.0
    for a, b in zip(got, want):
        m = max(m, ((a - b).abs().max() / (b.abs().max() + 1e-12)).item())
    return m


def write(meta, rows):
    os.makedirs(ARGS.out, exist_ok=True)
    with open(os.path.join(ARGS.out, "meta_step_gpu.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    lines = [
        f"# Regression meta-step ({meta['device']}), second order, {ARGS.steps} inner steps",
        "",
        "MLP " + "-".join(map(str, SIZES)) + f" with FiLM, K={K}, {Q} query points. "
        "Median ms per meta-step (triton.testing.do_bench); err = max relative error of "
        "the meta-gradients against the loop (against vmap where the loop is not run).",
        "",
        "| T | impl | ms/step | tasks/s | x loop | x vmap | err vs loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r_ in rows:
        lines.append(
            f"| {r_['T']} | {r_['impl']} | {r_.get('ms', float('nan')):.2f} | "
            f"{r_.get('tasks_per_s', float('nan')):.0f} | {r_.get('x_loop', '')} | "
            f"{r_.get('x_vmap', '')} | {r_.get('err', '')} |"
        )
    if meta["errors"]:
        lines += ["", "## errors", ""] + [f"- {e}" for e in meta["errors"]]
    with open(os.path.join(ARGS.out, "meta_step_gpu.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main():
    meta = {
        "device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "errors": [],
    }
    rows = []
    impls = [i for i in ARGS.impls.split(",") if i]
    for t in [int(v) for v in ARGS.tasks.split(",")]:
        p = make_problem(t)
        want = None
        ms_by = {}
        for name in impls:
            if name == "loop" and t > ARGS.loop_max_tasks:
                continue
            if time.time() - T0 > ARGS.budget:
                meta["errors"].append(f"budget reached before T={t} {name}")
                break
            row = {"T": t, "impl": name}
            try:
                fn = IMPLS[name]
                got = fn(p, ARGS.steps)
                if DEV.type == "cuda":
                    torch.cuda.synchronize()
                if want is None and name in ("loop", "vmap"):
                    want = got
                if want is not None:
                    row["err"] = f"{rel_err(got, want):.1e}"
                rep = 1000 if name == "loop" else 500
                if ARGS.dry_run:
                    rep = 1
                ms = bench_ms(lambda fn=fn: fn(p, ARGS.steps), rep)
                ms_by[name] = ms
                row["ms"] = ms
                row["tasks_per_s"] = t / (ms * 1e-3)
                if "loop" in ms_by:
                    row["x_loop"] = f"{ms_by['loop'] / ms:.2f}"
                if "vmap" in ms_by:
                    row["x_vmap"] = f"{ms_by['vmap'] / ms:.2f}"
            except Exception as err:
                meta["errors"].append(f"T={t} {name}: {type(err).__name__}: {err}"[:800])
                traceback.print_exc()
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(meta, rows)
            if DEV.type == "cuda":
                torch.cuda.empty_cache()
    meta["wall_s"] = time.time() - T0
    write(meta, rows)
    print(f"wrote {ARGS.out}/meta_step_gpu.json and .md in {meta['wall_s']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
