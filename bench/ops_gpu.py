"""Per-op GPU benchmark of mumo_fast.ops: reference (eager PyTorch) vs triton vs
torch.compile of the reference (first order only), forward / forward+backward / second order.

    python bench/ops_gpu.py --out OUTDIR [--budget SECONDS] [--no-compile]
    python bench/ops_gpu.py --dry-run --out /tmp/x     # tiny shapes; CPU via Triton's interpreter

Timing: ``triton.testing.do_bench`` medians (ms) on CUDA; a perf_counter median on CPU
(dry runs only: do_bench needs CUDA).  Achieved GB/s (forward) and TFLOP/s come from
minimal-traffic and GEMM-flop models of each op; ``floor_x`` is forward time over the
copy-bandwidth floor (minimal bytes / measured device-to-device copy bandwidth).
Results go to OUTDIR/ops_gpu.json and OUTDIR/ops_gpu.md, rewritten after every case so
that a run cut off early still reports what it measured.
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
    p.add_argument("--out", default="bench/results/ops_gpu")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes; runs on CPU too")
    p.add_argument("--budget", type=float, default=150.0, help="seconds; later cases skipped")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--only", default="", help="comma-separated case-name prefixes")
    return p.parse_args()


ARGS = _parse()
if ARGS.dry_run:
    import torch as _torch_probe  # noqa: E402

    if not _torch_probe.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, _ROOT)

import torch  # noqa: E402

from mumo_fast import ops  # noqa: E402
from mumo_fast.ops import reference  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F32 = torch.float32
T0 = time.time()


# ------------------------------------------------------------------------------ timing


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, rep_ms=60):
    """Median milliseconds of fn()."""
    if DEV.type == "cuda":
        from triton.testing import do_bench

        r = do_bench(fn, warmup=15, rep=rep_ms, quantiles=[0.5])
        return float(r[0] if isinstance(r, (list, tuple)) else r)
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[1]


def _copy_ms(n):
    src = torch.empty(n, device=DEV, dtype=F32).normal_()
    dst = torch.empty_like(src)
    return bench_ms(lambda: dst.copy_(src))


def machine_peaks():
    """Measured D2D copy bandwidth (GB/s) and fp32 (non-TF32) matmul rate (TFLOP/s)."""
    if ARGS.dry_run:
        n, m = 1 << 20, 256
    else:
        n, m = 1 << 28, 8192
    copy_gbs = 2 * n * 4 / (_copy_ms(n) * 1e-3) / 1e9
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(m, m, device=DEV)
    b = torch.randn(m, m, device=DEV)
    ms = bench_ms(lambda: a @ b)
    torch.backends.cuda.matmul.allow_tf32 = old
    mm_tflops = 2 * m**3 / (ms * 1e-3) / 1e12
    return {"copy_GBps": copy_gbs, "fp32_matmul_TFLOPs": mm_tflops}


# ------------------------------------------------------------------------------- cases


def r(*shape, grad=True, scale=1.0, shift=0.0):
    t = torch.randn(*shape, device=DEV, dtype=F32) * scale + shift
    return t.requires_grad_(grad)


def _numel(*shapes):
    tot = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        tot += k
    return tot


def linear_case(name, t, n, i, o, shared=False, act="relu"):
    def make():
        w = r(o, i, scale=i**-0.5) if shared else r(t, o, i, scale=i**-0.5)
        return [r(t, n, i), w, r(t, o), r(t, o, scale=0.1, shift=1.0), r(t, o)]

    wshape = (o, i) if shared else (t, o, i)
    fwd_bytes = 4 * _numel((t, n, i), wshape, (3 * t, o), (2 * t, n, o))
    return {
        "name": name,
        "shape": f"T={t} N={n} {i}->{o}" + (" shared W" if shared else ""),
        "make": make,
        "kw": {"activation": act},
        "op": ops.film_linear,
        "ref": reference.film_linear,
        "bytes": fwd_bytes,
        "flops": 2 * t * n * i * o,
    }


def lowrank_case(name, t, n, i, o, rank, act="relu"):
    def make():
        return [
            r(t, n, i),
            r(o, i, scale=i**-0.5),
            r(t, rank, i, scale=0.1),
            r(t, rank, o, scale=0.1),
            r(t, o),
            r(t, o, scale=0.1, shift=1.0),
            r(t, o),
        ]

    fwd_bytes = 4 * _numel((t, n, i), (o, i), (t, rank, i + o), (3 * t, o), (2 * t, n, o))
    return {
        "name": name,
        "shape": f"T={t} N={n} {i}->{o} R={rank}",
        "make": make,
        "kw": {"activation": act},
        "op": ops.film_linear_lowrank,
        "ref": reference.film_linear_lowrank,
        "bytes": fwd_bytes,
        "flops": 2 * t * n * (i * o + rank * (i + o)),
    }


def conv_case(name, t, n, c, hw, o, k, stride, padding, shared=False, act="none"):
    ho = (hw + 2 * padding - k) // stride + 1

    def make():
        w = r(o, c, k, k, scale=(c * k * k) ** -0.5)
        if not shared:
            w = r(t, o, c, k, k, scale=(c * k * k) ** -0.5)
        return [r(t, n, c, hw, hw), w, r(t, o), r(t, o, scale=0.1, shift=1.0), r(t, o)]

    wn = o * c * k * k * (1 if shared else t)
    fwd_bytes = 4 * (_numel((t, n, c, hw, hw), (2 * t, n, o, ho, ho), (3 * t, o)) + wn)
    return {
        "name": name,
        "shape": f"T={t} N={n} {c}->{o} {hw}x{hw} k{k} s{stride}" + (" shared" if shared else ""),
        "make": make,
        "kw": {"stride": stride, "padding": padding, "activation": act},
        "op": ops.film_conv2d,
        "ref": reference.film_conv2d,
        "bytes": fwd_bytes,
        "flops": 2 * t * n * o * ho * ho * c * k * k,
    }


def bn_case(name, shape, act="relu"):
    t, c = shape[0], shape[2]

    def make():
        return [
            r(*shape, scale=2.0, shift=0.5),
            r(t, c, scale=0.1, shift=1.0),
            r(t, c),
            r(t, c, scale=0.1, shift=1.0),
            r(t, c),
        ]

    return {
        "name": name,
        "shape": "x" + str(list(shape)),
        "make": make,
        "kw": {"activation": act},
        "op": ops.film_batch_norm,
        "ref": reference.film_batch_norm,
        "bytes": 4 * (2 * _numel(shape) + 4 * t * c),
        "flops": 0,
    }


def sgd_case(name, t):
    shapes = [(t, 100, 1), (t, 100), (t, 100, 100), (t, 100), (t, 100, 100), (t, 100),
              (t, 1, 100), (t, 1)]  # fmt: skip

    def make():
        return [r(*s, grad=False) for s in shapes] + [r(*s, grad=False) for s in shapes]

    n = len(shapes)

    def op(*a, backend):
        return ops.clamped_sgd(list(a[:n]), list(a[n:]), 0.01, 10.0, backend=backend)

    def ref(*a):
        return reference.clamped_sgd(list(a[:n]), list(a[n:]), 0.01, 10.0)

    return {
        "name": name,
        "shape": f"{n} per-task tensors, T={t}",
        "make": make,
        "kw": {},
        "op": op,
        "ref": ref,
        "bytes": 4 * 3 * _numel(*shapes),
        "flops": 0,
        "fwd_only": True,
    }


def all_cases():
    if ARGS.dry_run:
        return [
            linear_case("linear_reg", 3, 5, 7, 6),
            linear_case("linear_shared", 3, 5, 7, 6, shared=True),
            lowrank_case("lowrank_reg", 3, 5, 7, 6, 4),
            bn_case("bn_omni", (2, 3, 4, 5, 5)),
            conv_case("conv_omni_l1", 2, 3, 1, 9, 4, 3, 2, 1),
            conv_case("conv_omni_l1_shared", 2, 3, 1, 9, 4, 3, 2, 1, shared=True),
            bn_case("bn_linear", (2, 5, 6)),
            sgd_case("sgd_reg", 3),
        ]
    return [
        # regression (priority order: a cut-off run still has the headline cases)
        linear_case("linear_reg_T75", 75, 15, 100, 100),
        bn_case("bn_omni_14", (32, 80, 64, 14, 14)),
        linear_case("linear_reg_T1024", 1024, 15, 100, 100),
        conv_case("conv_omni_l2_14", 32, 80, 64, 14, 64, 3, 2, 1),
        lowrank_case("lowrank_reg_T75_R25", 75, 15, 100, 100, 25),
        lowrank_case("lowrank_reg_T1024_R25", 1024, 15, 100, 100, 25),
        linear_case("linear_reg_T1024_shared", 1024, 15, 100, 100, shared=True),
        conv_case("conv_omni_l1_28", 32, 80, 1, 28, 64, 3, 2, 1),
        conv_case("conv_omni_l3_7", 32, 80, 64, 7, 64, 3, 2, 1),
        conv_case("conv_omni_l4_4", 32, 80, 64, 4, 64, 3, 2, 1),
        conv_case("conv_omni_l2_14_shared", 32, 80, 64, 14, 64, 3, 2, 1, shared=True),
        bn_case("bn_omni_7", (32, 80, 64, 7, 7)),
        bn_case("bn_omni_4", (32, 80, 64, 4, 4)),
        bn_case("bn_omni_2", (32, 80, 64, 2, 2)),
        bn_case("bn_reg_T75", (75, 15, 100)),
        sgd_case("sgd_reg_T75", 75),
        sgd_case("sgd_reg_T1024", 1024),
    ]


# ------------------------------------------------------------------------------- modes


def make_fns(case, impl, args, cot):
    """{mode: zero-arg callable} for one implementation of one case (inputs args, output
    cotangent cot, shared by every implementation)."""
    kw = case["kw"]
    if impl == "compile":
        ref = case["ref"]
        f = torch.compile(lambda *a: ref(*a, **kw), dynamic=False)
    else:
        op = case["op"]

        def f(*a):
            return op(*a, **kw, backend=impl)

    diff = [a for a in args if a.requires_grad]
    fns = {}

    def fwd():
        with torch.no_grad():
            return f(*args)

    fns["fwd"] = fwd
    if case.get("fwd_only"):
        return fns

    def fwd_bwd():
        out = f(*args)
        return torch.autograd.grad(out, diff, cot)

    fns["fwd_bwd"] = fwd_bwd
    if impl != "compile":

        def second():
            out = f(*args)
            gs = torch.autograd.grad((out * cot).sum(), diff, create_graph=True)
            s = sum((g * g).sum() for g in gs)
            return torch.autograd.grad(s, diff, allow_unused=True)

        fns["second"] = second
    return fns


def max_err(a, b):
    if isinstance(a, torch.Tensor):
        a, b = [a], [b]
    m = 0.0
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        m = max(m, ((x - y).abs().max() / (1 + y.abs().max())).item())
    return m


# ------------------------------------------------------------------------------ output


def write(out_dir, meta, rows):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ops_gpu.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    lines = [
        f"# mumo_fast ops benchmark ({meta.get('device')})",
        "",
        "Medians (ms) from triton.testing.do_bench; speedup = reference ms / impl ms; "
        "GB/s and floor_x (time / copy-bandwidth floor) for the forward pass; TFLOP/s "
        "from the op's GEMM flops (x3 for forward+backward).",
        "",
        "```",
        json.dumps({k: v for k, v in meta.items() if k != "errors"}, indent=1),
        "```",
        "",
        "| case | shape | mode | impl | ms | speedup | GB/s | floor_x | TFLOP/s | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, nd=3):
        return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    for row in rows:
        lines.append(
            "| " + " | ".join(
                [row["case"], row["shape"], row["mode"], row["impl"], f(row.get("ms"), 4),
                 f(row.get("speedup"), 2), f(row.get("GBps"), 0), f(row.get("floor_x"), 2),
                 f(row.get("TFLOPs"), 2), f(row.get("err"), 1) if row.get("err") is None
                 else f"{row['err']:.1e}"]
            ) + " |"
        )  # fmt: skip
    if meta.get("errors"):
        lines += ["", "## errors", ""] + [f"- {e}" for e in meta["errors"]]
    with open(os.path.join(out_dir, "ops_gpu.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


HEADLINE = ("linear_reg_T75", "bn_omni_14", "linear_reg", "bn_omni")


def run_compile(item, meta, rows):
    """Measure torch.compile of the reference (forward, forward+backward) for one case."""
    case, ref_ms, args, cot = item
    try:
        fns = make_fns(case, "compile", args, cot)
        for mode, fn in fns.items():
            fn()
            sync()
            ms = bench_ms(fn)
            row = {"case": case["name"], "shape": case["shape"], "mode": mode,
                   "impl": "compile", "ms": ms}  # fmt: skip
            if mode in ref_ms:
                row["speedup"] = ref_ms[mode] / ms
            if mode == "fwd":
                row["GBps"] = case["bytes"] / (ms * 1e-3) / 1e9
                row["floor_x"] = (ms * 1e-3) / (case["bytes"] / (meta["copy_GBps"] * 1e9))
            rows.append(row)
            print(json.dumps(row), flush=True)
    except Exception as err:
        meta["errors"].append(f"{case['name']} compile: {type(err).__name__}: {err}"[:800])
        traceback.print_exc()
    write(ARGS.out, meta, rows)


def main():
    meta = {
        "device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "dry_run": ARGS.dry_run,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "errors": [],
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    meta.update(machine_peaks())
    print(json.dumps(meta), flush=True)
    rows = []
    write(ARGS.out, meta, rows)
    impls = ["reference", "triton"]
    compile_ok = not ARGS.no_compile
    cases = all_cases()
    if ARGS.only:
        pref = tuple(ARGS.only.split(","))
        cases = [c for c in cases if c["name"].startswith(pref)]
    pending_compile = []
    for case in cases:
        if time.time() - T0 > ARGS.budget:
            meta["errors"].append(f"budget reached: skipped {case['name']} and later cases")
            break
        ref_ms, ref_out = {}, {}
        args = case["make"]()
        with torch.no_grad():
            cot = (
                None if case.get("fwd_only") else torch.randn_like(case["ref"](*args, **case["kw"]))
            )
        for impl in impls:
            try:
                fns = make_fns(case, impl, args, cot)
                for mode, fn in fns.items():
                    out = fn()
                    sync()
                    ms = bench_ms(fn)
                    row = {"case": case["name"], "shape": case["shape"], "mode": mode,
                           "impl": impl, "ms": ms}  # fmt: skip
                    if impl == "reference":
                        ref_ms[mode], ref_out[mode] = ms, out
                    else:
                        row["err"] = max_err(out, ref_out.get(mode)) if mode in ref_out else None
                    if mode in ref_ms:
                        row["speedup"] = ref_ms[mode] / ms
                    if mode == "fwd":
                        row["GBps"] = case["bytes"] / (ms * 1e-3) / 1e9
                        row["floor_x"] = (ms * 1e-3) / (case["bytes"] / (meta["copy_GBps"] * 1e9))
                    if case["flops"] and mode in ("fwd", "fwd_bwd"):
                        mult = 1 if mode == "fwd" else 3
                        row["TFLOPs"] = mult * case["flops"] / (ms * 1e-3) / 1e12
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del fns
            except Exception as err:  # keep going: one broken case must not lose the rest
                msg = f"{case['name']} {impl}: {type(err).__name__}: {err}"
                meta["errors"].append(msg[:800])
                traceback.print_exc()
            write(ARGS.out, meta, rows)
        if compile_ok:
            pending_compile.append((case, dict(ref_ms), args, cot))
            if case["name"] in HEADLINE:
                run_compile(pending_compile.pop(), meta, rows)
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
    # torch.compile of the remaining cases last: compiling is slow, it uses what budget is left
    for item in pending_compile:
        if time.time() - T0 > ARGS.budget:
            meta["errors"].append(f"budget reached: torch.compile skipped from {item[0]['name']}")
            break
        run_compile(item, meta, rows)
    meta["wall_s"] = time.time() - T0
    write(ARGS.out, meta, rows)
    print(f"wrote {ARGS.out}/ops_gpu.json and ops_gpu.md in {meta['wall_s']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
