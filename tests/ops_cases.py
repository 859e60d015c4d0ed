"""Random inputs for the ops tests: fresh draws every call, odd sizes, every optional
argument present or absent, shared or per-task weights."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from mumo_fast.ops import backends
from mumo_fast.ops.activations import ACTIVATIONS  # noqa: F401  (the tests' activation list)

# Every backend, available here or not: a test parametrised by ``backend`` over one that is
# missing is skipped with the reason, or fails where the backend is required (conftest's
# ``_backend_present``, ``required_backends``), never silently dropped.
FUSED_BACKENDS = ["eager", "cpp", "triton"]
ALL_BACKENDS = ["reference", *FUSED_BACKENDS]


def required_backends() -> set[str]:
    """Backends that must be available: ``MUMO_FAST_REQUIRE_BACKENDS`` (comma-separated,
    e.g. ``cpp,triton``; empty: none) if set, else every one where ``CI`` is set (to
    anything but empty, 0 or false), else none."""
    listed = os.environ.get("MUMO_FAST_REQUIRE_BACKENDS")
    if listed is not None:
        names = {n.strip() for n in listed.split(",") if n.strip()}
        unknown = names - set(FUSED_BACKENDS)
        if unknown:
            raise ValueError(
                f"MUMO_FAST_REQUIRE_BACKENDS names unknown backends {sorted(unknown)} "
                f"(known: {FUSED_BACKENDS})"
            )
        return names
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return set(FUSED_BACKENDS)
    return set()


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` is unavailable here, or None when it works."""
    if backend in ("auto", "reference") or backends.load(backend) is not None:
        return None
    if backend == "cpp":
        from mumo_fast.ops.backends import cpp

        return f"the C++ extension did not load: {cpp._state.get('error', 'unknown error')}"
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as err:
            return f"triton is not installed ({err})"
        return "triton needs CUDA or TRITON_INTERPRET=1"
    return f"backend {backend!r} is unavailable"


def interpreted(backend: str) -> bool:
    """Triton kernels run through the (slow) interpreter: tests draw fewer cases and use
    gradcheck's fast mode (random projections) instead of full Jacobians."""
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def rand(*shape, dtype=torch.float32, device=None, grad=False, scale=1.0, shift=0.0):
    """A fresh standard normal draw times ``scale`` plus ``shift`` (on the default device
    unless ``device`` is given)."""
    t = torch.randn(*shape, dtype=dtype, device=device)
    if scale != 1.0 or shift != 0.0:
        t = t * scale + shift
    return t.requires_grad_(grad)


def optional_flags(backend: str = ""):
    """(bias, gamma, beta) present/absent: all 8 combinations (3 under the interpreter)."""
    if interpreted(backend):
        return [(True, True, True), (False, False, False), (True, False, True)]
    return list(itertools.product((True, False), repeat=3))


def linear_args(t, n, i, o, shared, flags, dtype, grad=False, shared_bias=False):
    has_b, has_g, has_be = flags
    x = rand(t, n, i, dtype=dtype, grad=grad)
    w = rand(o, i, dtype=dtype, grad=grad) if shared else rand(t, o, i, dtype=dtype, grad=grad)
    b = (
        (rand(o, dtype=dtype, grad=grad) if shared_bias else rand(t, o, dtype=dtype, grad=grad))
        if has_b
        else None
    )
    g = (1 + 0.5 * rand(t, o, dtype=dtype)).requires_grad_(grad) if has_g else None
    be = rand(t, o, dtype=dtype, grad=grad) if has_be else None
    return x, w, b, g, be


def conv_args(t, n, c, h, w, o, k, shared, flags, dtype, grad=False):
    has_b, has_g, has_be = flags
    x = rand(t, n, c, h, w, dtype=dtype, grad=grad)
    wt = (
        rand(o, c, k, k, dtype=dtype, grad=grad)
        if shared
        else rand(t, o, c, k, k, dtype=dtype, grad=grad)
    )
    b = (
        (rand(o, dtype=dtype, grad=grad) if shared else rand(t, o, dtype=dtype, grad=grad))
        if has_b
        else None
    )
    g = (1 + 0.5 * rand(t, o, dtype=dtype)).requires_grad_(grad) if has_g else None
    be = rand(t, o, dtype=dtype, grad=grad) if has_be else None
    return x, wt, b, g, be


def bn_args(shape, shared, flags, dtype, grad=False):
    has_w, has_b, has_g, has_be = flags
    t, c = shape[0], shape[2]
    x = (3 * rand(*shape, dtype=dtype) + 1.5).requires_grad_(grad)

    def vec(present):
        if not present:
            return None
        return rand(c, dtype=dtype, grad=grad) if shared else rand(t, c, dtype=dtype, grad=grad)

    w, b = vec(has_w), vec(has_b)
    g = (1 + 0.5 * rand(t, c, dtype=dtype)).requires_grad_(grad) if has_g else None
    be = rand(t, c, dtype=dtype, grad=grad) if has_be else None
    return x, w, b, g, be


def tol(dtype):
    """Tolerances for two implementations of one computation (backends, kernels, the
    reference) that differ only in rounding: float32 sums of up to a few hundred terms,
    float64 through compositions of a few ops and their derivatives."""
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-11}
    return {"rtol": 1e-4, "atol": 2e-5}


# -- the triton test modules' shared setup ------------------------------------------------
try:
    from mumo_fast.ops.backends import triton as triton_backend
except ImportError:  # triton missing
    triton_backend = None

CUDA = torch.cuda.is_available()
# The whole module is skipped where triton cannot run, unless it is required (then its tests
# fail).
TRITON_MODULE_MARK = pytest.mark.skipif(
    (triton_backend is None or not triton_backend.available())
    and "triton" not in required_backends(),
    reason="triton backend unavailable here",
)
# The devices the triton kernels run on here: CPU through the interpreter, CUDA for real.
TRITON_DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            os.environ.get("TRITON_INTERPRET", "0") != "1", reason="CPU needs TRITON_INTERPRET=1"
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA")),
]
