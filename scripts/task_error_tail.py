#!/usr/bin/env python
"""How heavy the tail of per-task test errors is, for trained regression runs.

For each run: the post-adaptation MSE of every task of the fixed test set (as
``mumo-fast eval``), its mean, median and largest value, the share of the mean carried by
the worst 1% of tasks, and the mean without the 10 worst tasks. RESULTS.md quotes it.

    python scripts/task_error_tail.py RUN_DIR [RUN_DIR ...] [--test-tasks-per-mode 10000]
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'run':<28} {'tasks':>6} {'mean':>9} {'median':>7} {'max':>9} "
          f"{'top 1% share':>12} {'mean w/o 10 worst':>17}")  # fmt: skip
    for run_dir in args.runs:
        run = read_run(run_dir)
        steps = run["eval"]["adapt_steps"]
        tasks = get_test_set(run, args.test_tasks_per_mode)
        err = per_step_mse(mumo_fast.load(run_dir), tasks, steps)[steps].double()
        worst = err.sort(descending=True).values
        top = worst[: max(1, len(err) // 100)].sum() / worst.sum()
        print(f"{Path(run_dir).name[:28]:<28} {len(err):>6} {err.mean():9.4f} "
              f"{err.median():7.4f} {worst[0]:9.3g} {top:12.2f} {worst[10:].mean():17.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
