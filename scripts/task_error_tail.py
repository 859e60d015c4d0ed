#!/usr/bin/env python
"""How heavy the tail of per-task test errors is, for trained regression runs.

For each run: the post-adaptation MSE of every task of the fixed test set (as
``mumo-fast eval``), its mean, median and largest value, the share of the mean carried by
the worst 1% of tasks, and the mean without the 10 worst tasks. RESULTS.md quotes it. With ``--worst N``,
also each run's N worst tasks: mode, parameters, support inputs and the MSE after each
inner step (to see whether an inner loop diverges or just fits badly).

    python scripts/task_error_tail.py RUN_DIR [RUN_DIR ...] [--test-tasks-per-mode 10000]
    python scripts/task_error_tail.py RUN_DIR --worst 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mumo_fast  # noqa: E402
from mumo_fast.domains.regression.metrics import per_step_mse  # noqa: E402
from mumo_fast.domains.regression.run import get_test_set, read_run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--test-tasks-per-mode", type=int, default=None,
                    help="default: each run's own test-set size")  # fmt: skip
    ap.add_argument("--worst", type=int, default=0, metavar="N",
                    help="list each run's N worst test tasks")  # fmt: skip
    args = ap.parse_args()
    if args.worst < 0:
        ap.error("--worst must be >= 0")
    torch.set_num_threads(1)
    width = max(28, *(len(Path(r).name) for r in args.runs))
    print(f"{'run':<{width}} {'tasks':>6} {'mean':>9} {'median':>7} {'max':>9} "
          f"{'top 1% share':>12} {'mean w/o 10 worst':>17}")  # fmt: skip
    for run_dir in args.runs:
        run = read_run(run_dir)
        steps = run["eval"]["adapt_steps"]
        tasks = get_test_set(run, args.test_tasks_per_mode)
        per_step = per_step_mse(mumo_fast.load(run_dir), tasks, steps).double()
        err = per_step[steps]
        worst, order = err.sort(descending=True)
        top = worst[: max(1, len(err) // 100)].sum() / worst.sum()
        print(f"{Path(run_dir).name:<{width}} {len(err):>6} {err.mean():9.4f} "
              f"{err.median():7.4f} {worst[0]:9.3g} {top:12.2f} {worst[10:].mean():17.4f}")  # fmt: skip
        for i in order[: args.worst].tolist():
            sx = tasks.support_x[i, :, 0]
            print(f"  task {i}: mode {run['mode_names'][int(tasks.modes[i])]}, params "
                  f"{[round(v, 3) for v in tasks.params[i].tolist()]}, support x in "
                  f"[{sx.min():.2f}, {sx.max():.2f}], MSE after 0..{steps} steps: "
                  + " ".join(f"{v:.3g}" for v in per_step[:, i].tolist()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
