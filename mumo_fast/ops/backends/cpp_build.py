"""Locate and load the C++ extension: ahead-of-time ``mumo_fast._C`` if built, else a
just-in-time build of ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja), cached.

Environment:
  ``MUMO_FAST_CSRC``       build from this source directory (skips ``mumo_fast._C``).
  ``MUMO_FAST_CACHE_DIR``  where JIT builds are kept (default ``~/.cache/mumo_fast``).
  ``MUMO_FAST_NO_CPP=1``   never load the extension (backend ``cpp`` unavailable).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import torch

_PKG = Path(__file__).resolve().parents[2]  # .../mumo_fast


def source_dir() -> Path:
    """csrc/ of a source checkout (repo root) or of an installed package (mumo_fast/csrc)."""
    env = os.environ.get("MUMO_FAST_CSRC")
    if env:
        return Path(env)
    for candidate in (_PKG.parent / "csrc", _PKG / "csrc"):
        if sorted(candidate.glob("*.cpp")):
            return candidate
    raise FileNotFoundError(f"no C++ sources in {_PKG.parent / 'csrc'} or {_PKG / 'csrc'}")


def _cache_dir(sources: list[Path]) -> Path:
    digest = hashlib.sha256()
    digest.update(torch.__version__.encode())
    for path in sorted(sources + list(sources[0].parent.glob("*.h"))):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    root = Path(os.environ.get("MUMO_FAST_CACHE_DIR", Path.home() / ".cache" / "mumo_fast"))
    return root / f"cpp-{digest.hexdigest()[:16]}"


def _jit_load() -> str:
    from torch.utils import cpp_extension

    src = source_dir()
    sources = sorted(src.glob("*.cpp"))
    if not sources:
        raise FileNotFoundError(f"no C++ sources (*.cpp) in {src}")
    build_dir = _cache_dir(sources)
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="mumo_fast_cpp",
        sources=[str(s) for s in sources],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return f"JIT build in {build_dir}"


def load_extension() -> str:
    """Register the ``torch.ops.mumo_fast`` raw ops; returns where they came from.
    Raises on any failure (missing sources, compiler error, ...)."""
    if os.environ.get("MUMO_FAST_NO_CPP", "0") == "1":
        raise RuntimeError("disabled by MUMO_FAST_NO_CPP=1")
    if not os.environ.get("MUMO_FAST_CSRC"):
        try:
            importlib.import_module("mumo_fast._C")
            return "mumo_fast._C (built ahead of time)"
        except ImportError:
            pass
    return _jit_load()
