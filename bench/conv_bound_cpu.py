"""How much of ``film_conv2d``'s forward+backward is the convolution itself, at the Omniglot
shapes with shared weights: the bound on what fusing the bias/FiLM/ReLU epilogue can gain.

Per shape (T=32, N=80, 64->64 channels, 3x3 stride 2 padding 1), in one run, round-robin
medians of ``torch.utils.benchmark.Timer`` measurements:

* ``reference`` and ``cpp``: ``ops.film_conv2d`` forward+backward (bias, gamma, beta, ReLU;
  gradients of <y, c> w.r.t. x, weight, bias, gamma, beta), as ``bench/ops_cpu.py``;
* ``conv only``: the convolution alone over all T*N images, forward (oneDNN) plus the
  faster of oneDNN's backward and the cpp backend's per-task backward
  (``conv_bwd_per_task``), i.e. the time an op whose epilogue cost nothing would take;
* ``channels-last``: the same convolution in oneDNN's channels-last (NHWC) layout, whose
  backward is faster, plus the layout conversions an NCHW op would pay for it (x and dz to
  NHWC, dx back to NCHW; each one copy).

``bound = reference / min(conv only, channels-last)`` is the largest speedup over the
reference any epilogue fusion can give while the convolution runs at oneDNN's speed.

    python bench/conv_bound_cpu.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import add_allocator_argument, apply_allocator, cpu_environment, write_json  # noqa: E402

from mumo_fast import ops  # noqa: E402
from mumo_fast.ops.backends import cpp  # noqa: E402

T, N, C, OUT = 32, 80, 64, 64
STRIDE, PADDING = (2, 2), (1, 1)


def closures(hw: int, gen: torch.Generator) -> dict:
    x = torch.randn(T, N, C, hw, hw, generator=gen).requires_grad_()
    w = (torch.randn(OUT, C, 3, 3, generator=gen) * (9 * C) ** -0.5).requires_grad_()
    b = (torch.randn(OUT, generator=gen) * 0.1).requires_grad_()
    g = (1 + 0.3 * torch.randn(T, OUT, generator=gen)).requires_grad_()
    be = (0.1 * torch.randn(T, OUT, generator=gen)).requires_grad_()
    leaves = [x, w, b, g, be]
    with torch.no_grad():
        y = ops.film_conv2d(x, w, b, g, be, 2, 1, "relu", backend="reference")
    cot = torch.randn(y.shape, generator=gen)

    def film(backend):
        y = ops.film_conv2d(x, w, b, g, be, 2, 1, "relu", backend=backend)
        return torch.autograd.grad(y, leaves, cot)

    xf, wd = x.detach().view(T * N, C, hw, hw), w.detach()
    dz = cot.view(T * N, OUT, *cot.shape[-2:])
    mask = (True, True, False)

    def conv_fwd():
        return torch.nn.functional.conv2d(xf, wd, None, STRIDE, PADDING)

    def conv_bwd_onednn():
        return torch.ops.aten.convolution_backward(
            dz, xf, wd, None, STRIDE, PADDING, (1, 1), False, (0, 0), 1, mask
        )

    cl = torch.channels_last
    xcl, wcl, dzcl = (t.contiguous(memory_format=cl) for t in (xf, wd, dz))

    def conv_fwd_cl():
        return torch.nn.functional.conv2d(xcl, wcl, None, STRIDE, PADDING)

    def conv_bwd_cl():
        return torch.ops.aten.convolution_backward(
            dzcl, xcl, wcl, None, STRIDE, PADDING, (1, 1), False, (0, 0), 1, mask
        )

    def to_cl():  # x and dz to NHWC
        return xf.contiguous(memory_format=cl), dz.contiguous(memory_format=cl)

    def from_cl():  # dx back to NCHW
        return xcl.contiguous()

    def conv_bwd_cpp():
        return cpp.conv_bwd_per_task(
            cot, x.detach(), wd.expand(T, *wd.shape), STRIDE, PADDING, True, True
        )

    return {
        "reference": lambda: film("reference"),
        "cpp": lambda: film("cpp"),
        "conv fwd": conv_fwd,
        "conv bwd oneDNN": conv_bwd_onednn,
        "conv bwd cpp": conv_bwd_cpp,
        "cl conv fwd": conv_fwd_cl,
        "cl conv bwd": conv_bwd_cl,
        "cl x,dz to NHWC": to_cl,
        "cl dx to NCHW": from_cl,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", type=int, nargs="*", default=[14, 7, 4], help="input H=W")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    add_allocator_argument(ap)
    ap.add_argument("--json", default="bench/results/cpu_conv_bound.json")
    args = ap.parse_args()
    if not cpp.available():
        sys.exit("the cpp backend is not available on this machine")
    torch.set_num_threads(args.threads)
    apply_allocator(args.allocator)
    start = time.time()
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for hw in args.sides:
        runs = closures(hw, gen)
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for rep in range(args.repeats):
            for k in names[rep % len(names) :] + names[: rep % len(names)]:
                m = Timer("fn()", globals={"fn": runs[k]}, num_threads=args.threads)
                times[k].append(m.blocked_autorange(min_run_time=args.min_time).median)
        med = {k: median(v) * 1e3 for k, v in times.items()}
        conv_only = med["conv fwd"] + min(med["conv bwd oneDNN"], med["conv bwd cpp"])
        cl_only = sum(
            med[k] for k in ("cl conv fwd", "cl conv bwd", "cl x,dz to NHWC", "cl dx to NCHW")
        )
        row = {**{f"{k} ms": v for k, v in med.items()}, "conv only ms": conv_only}
        row["channels-last ms"] = cl_only
        row["cpp speedup"] = med["reference"] / med["cpp"]
        row["bound"] = med["reference"] / min(conv_only, cl_only)
        rows[f"64->64 {hw}x{hw}"] = row
        print(
            f"{hw:2d}x{hw:<2d} reference {med['reference']:7.2f}  cpp {med['cpp']:7.2f} "
            f"({row['cpp speedup']:.2f}x)  conv fwd {med['conv fwd']:6.2f}  bwd oneDNN "
            f"{med['conv bwd oneDNN']:6.2f}  bwd cpp {med['conv bwd cpp']:6.2f}  "
            f"conv only {conv_only:7.2f}  channels-last {cl_only:7.2f} (fwd "
            f"{med['cl conv fwd']:.2f}, bwd {med['cl conv bwd']:.2f}, conversions "
            f"{med['cl x,dz to NHWC'] + med['cl dx to NCHW']:.2f})  bound {row['bound']:.2f}x",
            flush=True,
        )
    env = cpu_environment(cpp_extension=cpp.origin())
    command = "python " + " ".join(sys.argv)
    write_json(
        args.json,
        {"environment": env, "command": command, "wall_s": time.time() - start, "results": rows},
    )


if __name__ == "__main__":
    main()
