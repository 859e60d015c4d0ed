"""The cpp epilogue backward alone (``torch.ops.mumo_fast.epilogue_bwd``, ReLU, with
gamma) at the conv layers' output shapes: median ms of repeated calls, 1 thread.

To compare two versions of csrc/, run it once per source tree, back to back on one machine:
    python bench/epilogue_bwd_cpu.py
    MUMO_FAST_CSRC=/path/to/other/csrc python bench/epilogue_bwd_cpu.py
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

SHAPES = [(32, 80, 64, 196), (32, 80, 64, 49), (32, 80, 64, 16), (32, 80, 64, 4), (75, 15, 100, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpp.available():
        raise SystemExit("the C++ extension is unavailable")
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, {cpp.origin()}")
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        gy, y, z = (torch.randn(shape, generator=gen) for _ in range(3))
        gamma = torch.randn(shape[0], shape[2], generator=gen)
        op = torch.ops.mumo_fast.epilogue_bwd
        op(gy, y, z, gamma, "relu")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            op(gy, y, z, gamma, "relu")
            times.append(time.perf_counter() - t0)
        print(f"{str(list(shape)):20s} {median(times) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
