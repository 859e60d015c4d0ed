#!/usr/bin/env python
"""Omniglot test accuracy after more inner steps than a run's test-time protocol.

For each trained run: accuracy and query loss on the setting's 600 fixed test episodes after
0..STEPS inner steps (as ``mumo-fast eval``, which stops at the setting's test-time count),
printed and written to ``RUN_DIR/steps_0to{STEPS}.json``; the run's metrics.json is left as
it is. With ``--inner-lr``, the inner steps take that learning rate instead of the trained
one (``..._lr{LR}.json``): a look at the test-time step size, chosen on the test episodes,
so not a protocol number. RESULTS.md quotes both for the 5-way 5-shot runs.

    python scripts/omniglot_steps.py RUN_DIR [RUN_DIR ...] [--steps 6] [--inner-lr 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mumo_fast.domains import UsageError  # noqa: E402
from mumo_fast.domains.omniglot.metrics import evaluate_learner  # noqa: E402
from mumo_fast.domains.omniglot.run import _sampler  # noqa: E402
from mumo_fast.domains.runs import read_run  # noqa: E402
from mumo_fast.meta import MetaLearner  # noqa: E402
from mumo_fast.train import load_learner  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--steps", type=int, default=6, help="inner steps to evaluate (default 6)")
    ap.add_argument("--inner-lr", type=float, default=None, help="test-time inner lr")
    ap.add_argument("--data-dir", default=None, help="Omniglot data (default: the run's own)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.steps < 1:
        ap.error(f"--steps must be at least 1, got {args.steps}")
    if args.inner_lr is not None and not args.inner_lr > 0:
        ap.error(f"--inner-lr must be positive, got {args.inner_lr}")
    torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        try:
            run = read_run(run_dir)
        except UsageError as e:
            ap.error(str(e))
        if run.get("domain") != "omniglot":
            ap.error(f"{run_dir} is not an Omniglot run")
        sampler = _sampler(run, "test", torch.device("cpu"), args.data_dir)
        learner = load_learner(run_dir, "cpu")
        suffix = ""
        if args.inner_lr is not None:
            if learner.config["learn_inner_lr"]:
                ap.error(f"{run_dir} learned its inner learning rates: --inner-lr does not apply")
            trained = learner
            learner = MetaLearner.from_config({**trained.config, "inner_lr": args.inner_lr})
            learner.load_state_dict(trained.state_dict())
            learner.eval()
            suffix = f"_lr{args.inner_lr:g}"
        start = time.perf_counter()
        metrics = evaluate_learner(learner, sampler, sampler.fixed(), args.steps)
        seconds = time.perf_counter() - start
        per_step, loss = metrics["per_step"], metrics["loss_per_step"]["mean"]
        print(f"{run_dir}{suffix} ({seconds:.0f} s)")
        print(
            "  accuracy %:",
            "  ".join(f"{m:.2f}±{c:.2f}" for m, c in zip(per_step["mean"], per_step["ci95"])),
        )
        print("  query loss:", "  ".join(f"{v:.3f}" for v in loss))
        out = Path(run_dir) / f"steps_0to{args.steps}{suffix}.json"
        out.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
