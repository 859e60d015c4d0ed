"""mumo_fast.runtime: the glibc malloc settings, and the CLI applying them unless told not to."""

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mumo_fast import cli, runtime

ROOT = Path(__file__).resolve().parents[1]

# Allocates a 20 MB tensor and prints how many mmapped chunks that added (glibc mallinfo2).
PROBE = """
import ctypes, sys, torch
from mumo_fast import runtime
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
print(runtime.tune_cpu_allocator() if sys.argv[1] == "tuned" else runtime.allocator_description())
before = libc.mallinfo2().hblks
x = torch.empty(5_000_000)
print(libc.mallinfo2().hblks - before)
"""


def _has_mallinfo2() -> bool:
    if platform.system() != "Linux":
        return False
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("mode, mmapped", [("tuned", 0), ("default", 1)])
def test_tuned_allocator_serves_weight_sized_blocks_from_the_heap(mode, mmapped):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    description, added = proc.stdout.strip().splitlines()[-2:]
    assert description.startswith("glibc ")
    assert ("mmap threshold 32 MiB" in description) == (mode == "tuned")
    assert int(added) == mmapped


@pytest.mark.parametrize("flags, tuned", [([], True), (["--default-malloc"], False)])
def test_cli_tunes_the_allocator_unless_default_malloc(monkeypatch, tmp_path, flags, tuned):
    calls = []
    monkeypatch.setattr(runtime, "tune_cpu_allocator", lambda: calls.append(1) or "")
    # a folder without run.json: the command fails after the process-wide settings
    assert cli.main(["eval", str(tmp_path), *flags]) == 2
    assert bool(calls) == tuned
