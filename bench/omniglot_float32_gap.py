"""How far float32 meta-gradients of the Omniglot step are from float64, for the per-task
loop and for mumo: whether mumo's float32 difference from the loop (bench/meta_step.py
--domain omniglot reports it) is mumo's own rounding or the problem's.

The batch and learner are bench/meta_step.py's Omniglot mode (5-way 1-shot, T=32, second
order, fresh weights, seed 0). Errors are max |g - g_ref| over all parameters, divided by
max |g_ref| of the float64 loop.

    python bench/omniglot_float32_gap.py [--tasks 32] [--threads 1]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import meta_step as ms  # noqa: E402


def meta_gradients(impl: str, batch, dtype) -> dict:
    learner, step = ms.runner(impl, first_order=False)
    learner.to(dtype)
    step(
        ms.TaskBatch(
            batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y
        )
    )
    return {n: p.grad.double() for n, p in learner.named_parameters() if p.grad is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ms.DOMAIN = "omniglot"
    batch = ms.make_omniglot_batch(args.tasks)
    g = {
        (impl, str(dtype).removeprefix("torch.")): meta_gradients(impl, batch, dtype)
        for impl in ("loop", "mumo")
        for dtype in (torch.float64, torch.float32)
    }
    ref = g["loop", "float64"]
    scale = max(v.abs().max().item() for v in ref.values())

    def err(a, b) -> float:
        return max((g[a][n] - g[b][n]).abs().max().item() for n in ref) / scale

    print(f"torch {torch.__version__}, {args.threads} thread(s), T={args.tasks}")
    for a, b in (
        (("mumo", "float64"), ("loop", "float64")),
        (("loop", "float32"), ("loop", "float64")),
        (("mumo", "float32"), ("loop", "float64")),
        (("mumo", "float32"), ("loop", "float32")),
    ):
        print(f"{a[0]} {a[1]} vs {b[0]} {b[1]}: {err(a, b):.1e}")


if __name__ == "__main__":
    main()
