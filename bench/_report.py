"""What every CPU benchmark script records: the machine, and its section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor()


def cpu_environment(**extra) -> dict:
    """The machine a CPU benchmark ran on (CPU, cores, torch threads, versions, load at
    start, allocator setting), plus ``extra``."""
    import torch

    from mumo_fast import runtime

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "allocator": runtime.allocator_description(),
        **extra,
    }


def update_markdown(path: str, section: str) -> None:
    """Replace the section of ``path`` whose heading is ``section``'s first line (or append
    it); every other section stays as it is."""
    title = section.splitlines()[0]
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if title + "\n" in text:  # the whole heading line: one title may prefix another
        start = text.index(title + "\n")
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def write_json(path: str, result: dict) -> None:
    """Write a benchmark's result file (creating its folder) and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


def add_allocator_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--allocator", choices=("tuned", "default"), default="tuned",
        help="tuned: mumo_fast.runtime.tune_cpu_allocator() first, as `mumo-fast` does; "
        "default: the C library's malloc settings",
    )  # fmt: skip


def apply_allocator(choice: str) -> str:
    """Apply ``--allocator``; returns the description to record with the results."""
    from mumo_fast import runtime

    if choice == "tuned":
        runtime.tune_cpu_allocator()
    return runtime.allocator_description()
