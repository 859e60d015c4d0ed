"""The `mumo-fast` command: train, evaluate and plot meta-learning runs.

mumo-fast train regression --method mumomaml --modulation film --modes 2 --out runs/film2
mumo-fast eval runs/maml2 runs/film2
mumo-fast plot runs/maml2 runs/film2 --out runs/compare
torchrun --standalone --nproc-per-node 2 -m mumo_fast.cli train regression --out runs/reg2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import runtime
from .domains import DOMAINS, UsageError, get_domain
from .train import distributed


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--default-malloc", action="store_true",
        help="keep the C library's malloc settings (by default freed memory stays in the "
        "process's heap: faster CPU meta-steps; see mumo_fast.runtime)",
    )  # fmt: skip


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", metavar="DIR",
        help="data folder of domains that read one (Omniglot; default: the run's own)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mumo-fast", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="meta-train a model on a domain")
    domains = train.add_subparsers(dest="domain", required=True, metavar="DOMAIN")
    for name in DOMAINS:
        p = domains.add_parser(name, help=f"the {name} domain")
        get_domain(name).add_train_arguments(p)
        p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
        p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
        p.add_argument("--init-from", metavar="CKPT", help="start from this checkpoint's weights")
        p.add_argument("--seed", type=int, help="seed of weights and data (default 0)")
        p.add_argument(
            "--checkpoint-every", type=int, metavar="N", help="iterations between checkpoints"
        )
        p.add_argument(
            "--time-limit", type=float, metavar="SECONDS",
            help="stop after this long (then save, evaluate, plot as if done)",
        )  # fmt: skip
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--no-tensorboard", action="store_true", help="JSON-lines log only")
        p.add_argument(
            "--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
            help="under torchrun: how long a process waits for the others in a collective "
            "before the run ends with an error (default %(default)g; longer than rank 0's "
            "validation and checkpoint writing)",
        )  # fmt: skip
        p.add_argument("--skip-eval", action="store_true", help="no test evaluation or figures")
        p.add_argument(
            "--compile", action="store_true",
            help="task encoder, modulation heads and inner loop through torch.compile (MLP "
            "bases; compiles for tens of seconds, "
            "then faster meta-steps; see BENCHMARKS.md)",
        )  # fmt: skip
        _add_common(p)

    ev = commands.add_parser("eval", help="evaluate runs on their fixed test tasks")
    ev.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ev.add_argument(
        "--test-tasks-per-mode", type=int,
        help="evaluate on a fixed test set of this many tasks per mode instead of the run's "
        "own (regression; the tasks are seeded, so every run sees the same ones)",
    )  # fmt: skip
    ev.add_argument(
        "--test-episodes", type=int, metavar="N",
        help="Omniglot: evaluate on the first N of the 600 fixed test episodes (a quick look)",
    )  # fmt: skip
    _add_data_dir(ev)
    _add_common(ev)

    pl = commands.add_parser("plot", help="draw each run's figures, and comparisons")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", default="figures", help="folder for comparison figures (several runs)")
    _add_data_dir(pl)
    _add_common(pl)
    return parser


def _run_domain(run_dir: str) -> str:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no run.json)")
    return json.loads(path.read_text())["domain"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError("--threads must be positive")
            import torch

            torch.set_num_threads(args.threads)
        if not args.default_malloc:
            runtime.tune_cpu_allocator()
        if args.command == "train":
            distributed.init_from_env(args.device, args.dist_timeout)
            return get_domain(args.domain).train(args)
        domains = {_run_domain(r) for r in args.runs}
        if len(domains) > 1:
            raise UsageError(f"runs of different domains cannot be compared: {sorted(domains)}")
        domain = get_domain(domains.pop())
        return domain.evaluate(args) if args.command == "eval" else domain.plot(args)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"mumo-fast: error: {e}", file=sys.stderr)
        return 2
    except distributed.DistributedError as e:
        print(f"mumo-fast: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside training (which saves a checkpoint first)
        print("mumo-fast: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
