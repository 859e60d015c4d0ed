"""The two routes of the cpp per-task conv backward (``torch.ops.mumo_fast.conv_bwd_per_task``)
for each gradient at the Omniglot shapes (T=32, N=80, 3x3 stride 2 padding 1): one
aten.convolution_backward (oneDNN) per task against im2col + GEMM. Median ms of
round-robin repeats; the thresholds in mumo_fast/ops/backends/cpp.py come from this.

    python bench/conv_bwd_routes_cpu.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _report import cpu_name  # noqa: E402

from mumo_fast.ops.backends import cpp  # noqa: E402

SHAPES = [(1, 28), (64, 14), (64, 7), (64, 4)]  # (input channels, input side)
ALWAYS, NEVER = 10**6, 0  # im2col limits (output positions) forcing a route


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpp.available():
        raise SystemExit("the C++ extension is unavailable")
    raw = torch.ops.mumo_fast.conv_bwd_per_task
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, {cpp.origin()}")
    print(f"{'layer':<18} {'grad':<7} {'aten ms':>9} {'im2col ms':>10}")
    gen = torch.Generator().manual_seed(0)
    for c, side in SHAPES:
        t, n, o = 32, 80, 64
        x = torch.randn(t, n, c, side, side, generator=gen)
        w = torch.randn(t, o, c, 3, 3, generator=gen)
        out = (side + 2 - 3) // 2 + 1
        dz = torch.randn(t, n, o, out, out, generator=gen)
        calls = {}
        for grad, need in (("input", (True, False)), ("weight", (False, True))):
            for route, limit in (("aten", NEVER), ("im2col", ALWAYS)):
                calls[grad, route] = lambda need=need, limit=limit: raw(
                    dz, x, w, [2, 2], [1, 1], *need, limit, limit
                )
        times = {k: [] for k in calls}
        for _ in range(2):
            for f in calls.values():
                f()
        for _ in range(args.repeats):
            for k, f in calls.items():
                start = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - start)
        for grad in ("input", "weight"):
            a, i = (median(times[grad, r]) * 1e3 for r in ("aten", "im2col"))
            print(f"{f'{c}->{o} {side}x{side}':<18} {grad:<7} {a:9.1f} {i:10.1f}")


if __name__ == "__main__":
    main()
