"""Backend registry and the deterministic ``auto`` rule.

A backend is a module implementing the raw-op contract documented in
``eager.py`` plus ``available() -> bool``.  ``reference`` is special: it is not
a raw-op module but the pure-PyTorch composition in ``mumo_fast.ops.reference``
differentiated by torch's autograd.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from . import cpp_build

# torch's "No CUDA runtime is found, using CUDA_HOME=..." is misleading for a CPU run that
# builds C++ (this package's extension, inductor's kernels): see cpp_build
cpp_build.quiet_cuda_home_line()

# name -> module path implementing the raw-op contract
_MODULES = {
    "eager": "mumo_fast.ops.backends.eager",
    "cpp": "mumo_fast.ops.backends.cpp",
    "triton": "mumo_fast.ops.backends.triton",
}
NAMES = ("auto", "reference", *_MODULES)

_loaded: dict[str, ModuleType | None] = {}


def load(name: str) -> ModuleType | None:
    """The backend's module if it imports and reports itself available, else None."""
    if name not in _loaded:
        module = None
        try:
            module = importlib.import_module(_MODULES[name])
            if not module.available():
                module = None
        except ImportError:
            module = None
        _loaded[name] = module
    return _loaded[name]


def available_backends() -> list[str]:
    """Backends that work on this machine (``reference`` always)."""
    return ["reference"] + [n for n in _MODULES if load(n) is not None]


def check_name(name: object, argname: str = "backend") -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"{argname} must be one of {NAMES}, got {name!r}")
    return name


def resolve(name: str, device: torch.device, op: str) -> str:
    """Concrete backend for a call. ``auto``: a fixed preference per device type,
    drawn from the committed benchmark results in BENCHMARKS.md (never timed at run
    time). An explicitly named backend that is unavailable is an error."""
    if name != "auto":
        if name != "reference" and load(name) is None:
            raise ValueError(
                f"backend {name!r} is not available on this machine "
                f"(available: {available_backends()})"
            )
        if name == "triton" and device.type != "cuda" and not _triton_interpreted():
            raise ValueError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
        if name == "cpp" and device.type != "cpu" and not _cpp_has_device(device):
            raise ValueError(f"backend 'cpp' has no kernels for device {device}")
        return name
    for candidate in AUTO_PREFERENCE.get(
        (device.type, op),
        AUTO_PREFERENCE[(device.type, "*")] if (device.type, "*") in AUTO_PREFERENCE else (),
    ):
        if candidate == "reference" or load(candidate) is not None:
            return candidate
    return "reference"


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cpp_has_device(device: torch.device) -> bool:
    module = load("cpp")
    return module is not None and getattr(module, "supports_device", lambda d: False)(device)


# (device type, op) -> backends in order of preference, drawn from BENCHMARKS.md
# (bench/ops_cpu.py, 1 thread, forward+backward against the reference): on CPU the C++
# kernels win for batch norm (2.12-4.22x) and conv (1.50-2.45x per-task weights, 1.15-2.65x
# shared); for the linear ops the GEMMs dominate (cpp 0.95-1.13x), so the reference stays.
AUTO_PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "film_linear"): ("reference",),
    ("cpu", "film_linear_lowrank"): ("reference",),
    ("cpu", "*"): ("cpp", "reference"),
    ("cuda", "*"): ("triton", "reference"),
}
