"""Process-wide CPU settings that meta-training benefits from.

A meta-step allocates and frees hundreds of per-task weight-sized tensors ([T, OUT, IN],
3 MB at the regression shapes). glibc's malloc serves blocks above its mmap threshold
(128 KiB, raised dynamically up to 32 MiB) with fresh ``mmap`` pages and gives freed heap
tops back to the OS above its trim threshold, so each of those tensors can start with
hundreds of page faults and a kernel-side zeroing of its pages. Keeping freed memory in
the heap removes that. Measured on a 2-core CPU at T=75, second order (BENCHMARKS.md, "The
CPU allocator"): 4-5% more tasks/s for the library's low-rank meta-step, 28% for dense
per-task weights, 23% for ``torch.func.vmap``. The cost is memory the process keeps after
freeing it (bounded by its own peak).
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_state: dict[str, str] = {}


def tune_cpu_allocator() -> str:
    """Raise glibc malloc's mmap threshold to 32 MiB and its trim threshold to 1 GiB for
    this process (``mallopt``). Returns a description of the allocator now in use, also
    given by :func:`allocator_description`; where the C library is not glibc (macOS,
    Windows, musl) nothing changes and the description says so. Idempotent."""
    if "tuned" in _state:
        return _state["tuned"]
    libc = _glibc()
    if libc is None:
        _state["tuned"] = allocator_description()
        return _state["tuned"]
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        raise RuntimeError("glibc mallopt refused the mmap/trim thresholds")
    _state["tuned"] = (
        f"glibc {_glibc_version(libc)} malloc, mmap threshold {MMAP_THRESHOLD >> 20} MiB, "
        f"trim threshold {TRIM_THRESHOLD >> 20} MiB (mumo_fast.runtime.tune_cpu_allocator)"
    )
    return _state["tuned"]


def allocator_description() -> str:
    """The CPU allocator settings of this process, for benchmark and run records."""
    if "tuned" in _state:
        return _state["tuned"]
    libc = _glibc()
    if libc is None:
        return f"system malloc ({platform.system()}, not glibc), default settings"
    return f"glibc {_glibc_version(libc)} malloc, default settings"


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


def _glibc_version(libc: ctypes.CDLL) -> str:
    return libc.gnu_get_libc_version().decode()
