"""Tests specific to the ``cpp`` backend: opcheck of every raw op, direct raw-op parity
with eager.py (both kernel layouts, both per-task conv strategies), the vmap rules,
and the fallback when the extension cannot be built."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import oracle
import pytest
import torch

from mumo_fast import ops
from mumo_fast.ops import available_backends
from mumo_fast.ops.backends import cpp, eager
from ops_cases import ACTIVATIONS, missing_reason, rand, required_backends, tol

ROOT = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.float64)


def _close(got, want, dtype):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.is_contiguous() and g.dtype == w.dtype
        torch.testing.assert_close(g, w, **tol(dtype))


# tests that need no loaded extension
_WITHOUT_EXTENSION = {
    "test_source_dir_found_in_checkout",
    "test_build_failure_warns_once_and_auto_falls_back",
}


@pytest.fixture(autouse=True)
def _cpp_present(request):
    """Without the extension: each test is skipped with the reason, or fails where the
    backend is required (CI)."""
    reason = missing_reason("cpp")
    if reason is not None and request.node.originalname not in _WITHOUT_EXTENSION:
        if "cpp" in required_backends():
            pytest.fail(f"backend 'cpp' is required here but unavailable: {reason}")
        pytest.skip(f"backend 'cpp' unavailable: {reason}")


def test_cpp_is_available_and_listed():
    assert cpp.available(), "the C++ extension failed to load (see the warning)"
    assert "cpp" in available_backends()
    assert cpp.supports_device(torch.device("cpu"))
    assert not cpp.supports_device(torch.device("meta"))


# ---- sample inputs: (op name, args) with odd shapes, optional args on and off ----


def _samples(dtype, requires_grad=False):
    g = torch.Generator().manual_seed(1234)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)

    out = []
    t, n, i, o = 3, 5, 7, 6
    for k, (hb, hg, hbe) in enumerate([(1, 1, 1), (0, 0, 0), (1, 0, 1), (0, 1, 0)]):
        act = ACTIVATIONS[k]
        b = r(t, o) if hb else None
        gm = r(t, o) if hg else None
        be = r(t, o) if hbe else None
        w = r(t, o, i) if k % 2 == 0 else r(o, i)
        out.append(("linear_fwd", (r(t, n, i), w, b, gm, be, act)))
        out.append(
            ("linear_lowrank_fwd", (r(t, n, i), r(o, i), r(t, 2, i), r(t, 2, o), b, gm, be, act))
        )
        wc = r(t, o, 2, 3, 3) if k % 2 == 0 else r(o, 2, 3, 3)
        stride, pad = ([2, 1], [1, 0]) if k < 2 else ([1, 1], [1, 1])
        out.append(("conv_fwd", (r(t, n, 2, 7, 6), wc, b, gm, be, stride, pad, act)))
        if k % 2 == 0:
            dzc = r(t, n, o, 4 if k < 2 else 7, 4 if k < 2 else 6)
            xc = r(t, n, 2, 7, 6)
            for limits in ((0, 0), (64, 64)):  # aten route, im2col route
                args = (dzc, xc, wc, stride, pad, True, True, *limits)
                out.append(("conv_bwd_per_task", args))
        for s in (1, 19):
            x4 = r(t, n, o, s)
            y4 = eager.bn_fwd(x4.detach(), b, be, gm, None, 1e-5, act)[0]
            out.append(("epilogue_bwd", (r(t, n, o, s), y4, r(t, n, o, s), gm, act)))
            out.append(("bn_fwd", (x4, b, be, gm, be, 1e-3, act)))
            _, mean, rstd = eager.bn_fwd(x4.detach(), b, be, gm, be, 1e-3, act)
            out.append(("bn_bwd", (r(t, n, o, s), x4, y4, mean, rstd, b, be, gm, act)))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_every_raw_op(dtype):
    assert cpp.available()
    seen = set()
    for name, args in _samples(dtype):
        torch.library.opcheck(getattr(torch.ops.mumo_fast, name).default, args)
        seen.add(name)
    assert seen == set(cpp.OP_NAMES)
    # Raw ops are forward-only (the autograd Functions differentiate them): with inputs
    # that require grad they must have an Autograd kernel (which raises on backward),
    # so everything but the backward-running aot_dispatch test applies.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for name, args in _samples(dtype, requires_grad=True):
        torch.library.opcheck(getattr(torch.ops.mumo_fast, name).default, args, test_utils=utils)


def test_raw_op_backward_raises():
    x = rand(2, 3, 4).requires_grad_()
    y, _ = cpp.linear_fwd(x, rand(5, 4), None, None, None, "relu")
    with pytest.raises(RuntimeError, match="not implemented"):
        y.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_raw_op_parity_with_eager(dtype):
    for name, args in _samples(dtype):
        if name == "conv_bwd_per_task":  # a cpp-only hook: test_conv_bwd_per_task_matches_...
            continue
        _close(getattr(cpp, name)(*args), getattr(eager, name)(*args), dtype)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [1, 4, 15, 16, 23, 64])
@pytest.mark.parametrize("t", [2, 9])
def test_epilogue_and_bn_layouts(dtype, s, t, two_threads):
    """Both kernel layouts: task-major (S < 16, or for the epilogue backward at least 4
    tasks per thread: t=9 with 2 threads) and plane-major, each with an 8-lane part and a
    tail."""
    n, c = 9, 5
    for act in ACTIVATIONS:
        # shifted, scaled data: the one-pass variance must not cancel
        x = 50 + 3 * rand(t, n, c, s, dtype=dtype)
        w, b, gm, be = (rand(t, c, dtype=dtype) for _ in range(4))
        want = eager.bn_fwd(x, w, b, gm, be, 1e-5, act)
        _close(cpp.bn_fwd(x, w, b, gm, be, 1e-5, act), want, dtype)
        gy = rand(t, n, c, s, dtype=dtype)
        y, mean, rstd = want
        _close(
            cpp.bn_bwd(gy, x, y, mean, rstd, w, b, gm, act),
            eager.bn_bwd(gy, x, y, mean, rstd, w, b, gm, act),
            dtype,
        )
        z = rand(t, n, c, s, dtype=dtype)
        _close(cpp.epilogue_bwd(gy, y, z, gm, act), eager.epilogue_bwd(gy, y, z, gm, act), dtype)
        _close(
            cpp.epilogue_bwd(gy, y, z, None, act), eager.epilogue_bwd(gy, y, z, None, act), dtype
        )


def test_per_task_conv_forward():
    dtype = torch.float64
    t, n, c, o = 3, 4, 3, 5
    x = rand(t, n, c, 9, 8, dtype=dtype)
    w = rand(t, o, c, 3, 2, dtype=dtype)
    b, gm, be = (rand(t, o, dtype=dtype) for _ in range(3))
    for stride, pad in (((2, 2), (1, 1)), ((1, 3), (0, 2))):
        args = (x, w, b, gm, be, stride, pad, "relu")
        _close(cpp.conv_fwd(*args), eager.conv_fwd(*args), dtype)


def test_shared_weight_conv_forward_both_routes():
    """Shared weights: one conv over all images for outputs under 32 positions, the loop
    over tasks above (csrc/conv.cpp, kSharedLoopMinPositions); both against eager."""
    dtype = torch.float64
    t, n, c, o = 3, 4, 3, 5
    x = rand(t, n, c, 9, 8, dtype=dtype)
    w = rand(o, c, 3, 2, dtype=dtype)
    b, gm, be = (rand(t, o, dtype=dtype) for _ in range(3))
    for stride, pad, positions in (((2, 2), (1, 1), 25), ((1, 1), (1, 1), 81)):
        args = (x, w, b, gm, be, stride, pad, "tanh")
        got = cpp.conv_fwd(*args)
        assert got[0].shape[-2] * got[0].shape[-1] == positions
        _close(got, eager.conv_fwd(*args), dtype)


def test_vmap_rules_match_a_loop():
    dtype = torch.float64
    b, t, n, i, o = 3, 2, 4, 5, 6
    x = rand(b, t, n, i, dtype=dtype)
    w = rand(t, o, i, dtype=dtype)
    gm = rand(b, t, o, dtype=dtype)
    got = torch.vmap(cpp.linear_fwd, in_dims=(0, None, None, 0, None, None))(
        x, w, None, gm, None, "tanh"
    )
    for k in range(b):
        _close([g[k] for g in got], eager.linear_fwd(x[k], w, None, gm[k], None, "tanh"), dtype)
    x4 = rand(t, n, o, 3, b, dtype=dtype)  # batch dim last
    got = torch.vmap(cpp.bn_fwd, in_dims=(4, None, None, None, None, None, None))(
        x4, None, None, None, None, 1e-5, "relu"
    )
    for k in range(b):
        want = eager.bn_fwd(x4[..., k].contiguous(), None, None, None, None, 1e-5, "relu")
        _close([g[k] for g in got], want, dtype)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_other_dtypes_fall_back_to_eager(dtype):
    """Half precision runs the eager composition (no C++ kernel): right values, in the
    input's dtype, against the float64 oracle to half-precision rounding."""
    x, w = rand(2, 3, 8).to(dtype), rand(5, 8).to(dtype)
    b, gm, be = rand(5).to(dtype), rand(2, 5).to(dtype), rand(2, 5).to(dtype)
    y, z = cpp.linear_fwd(x, w, b.expand(2, 5).contiguous(), gm, be, "relu")
    assert y.dtype == z.dtype == dtype
    tol = dict(rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(y.double(), oracle.film_linear(x, w, b, gm, be, "relu"), **tol)
    torch.testing.assert_close(z.double(), oracle.film_linear(x, w, b), **tol)
    xb = rand(2, 4, 3, 5, 5).to(dtype)
    wb = rand(3, 3, 3, 3).to(dtype)
    got = ops.film_conv2d(xb, wb, padding=1, activation="tanh", backend="cpp")
    assert got.dtype == dtype
    want = oracle.film_conv2d(xb, wb, padding=1, activation="tanh")
    torch.testing.assert_close(got.double(), want, **tol)


def test_raw_op_rejects_bad_shapes():
    x = rand(2, 3, 4)
    with pytest.raises(RuntimeError, match="gamma must have shape"):
        cpp.linear_fwd(x, rand(5, 4), None, rand(2, 4), None, "none")
    with pytest.raises(RuntimeError, match="activation"):
        cpp.linear_fwd(x, rand(5, 4), None, None, None, "gelu")


def test_source_dir_found_in_checkout():
    from mumo_fast.ops.backends import cpp_build

    assert (cpp_build.source_dir() / "schemas.cpp").is_file()


def test_build_failure_warns_once_and_auto_falls_back(tmp_path):
    bad = tmp_path / "csrc"
    bad.mkdir()
    (bad / "broken.cpp").write_text("this is not C++;\n")
    script = textwrap.dedent(
        """
        import warnings
        import torch
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            from mumo_fast import ops
            names = ops.available_backends()
            names_again = ops.available_backends()
            x = torch.randn(2, 3, 4)
            y = ops.film_linear(x, torch.randn(5, 4), activation="relu")
        msgs = [str(w.message) for w in caught if "C++ extension" in str(w.message)]
        assert "cpp" not in names and names == names_again, names
        assert y.shape == (2, 3, 5)
        assert len(msgs) == 1, msgs
        print("OK", msgs[0][:80])
        """
    )
    env = dict(
        os.environ,
        MUMO_FAST_CSRC=str(bad),
        MUMO_FAST_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("MUMO_FAST_NO_CPP", None)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")


@pytest.mark.parametrize("clamp", [None, 0.8])
def test_clamped_sgd_matches_reference_to_second_order(clamp):
    from torch.autograd import gradcheck, gradgradcheck

    from mumo_fast import ops

    dtype = torch.float64
    p0, g0 = (rand(3, 4, 5, dtype=dtype).requires_grad_() for _ in range(2))
    p1, g1 = (rand(7, dtype=dtype).requires_grad_() for _ in range(2))
    lr = torch.tensor(0.3, dtype=dtype, requires_grad=True)

    def f(backend):
        return lambda a, b, c, d, e: ops.clamped_sgd(
            [a, b], [c, d], [e, 0.2], clamp, backend=backend
        )

    args = (p0, p1, g0, g1, lr)
    for got, want in zip(f("cpp")(*args), f("reference")(*args)):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    assert gradcheck(f("cpp"), args)
    assert gradgradcheck(f("cpp"), args)


def test_film_conv2d_small_output_backward_uses_im2col_and_matches_reference():
    """Per-task film_conv2d whose output is at most 2x2 (the cpp backward's im2col route):
    gradients against the reference backend, and fp64 gradcheck / gradgradcheck."""
    from torch.autograd import gradcheck, gradgradcheck

    assert cpp.DX_IM2COL_MAX_POSITIONS >= 4 and cpp.DW_IM2COL_MAX_POSITIONS >= 4
    dtype = torch.float64
    x = rand(3, 4, 5, 4, 3, dtype=dtype).requires_grad_()
    w = rand(3, 6, 5, 3, 3, dtype=dtype).requires_grad_()
    b, g, be = (rand(3, 6, dtype=dtype).requires_grad_() for _ in range(3))

    def f(backend):
        return lambda *a: ops.film_conv2d(*a, stride=2, padding=1, activation="relu",
                                          backend=backend)  # fmt: skip

    args = (x, w, b, g, be)
    y = f("cpp")(*args)
    assert y.shape[-2:] == (2, 2)
    gy = rand(*y.shape, dtype=dtype)
    got = torch.autograd.grad(y, args, gy)
    want = torch.autograd.grad(f("reference")(*args), args, gy)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    small = (x[:2, :2, :2], w[:2, :3, :2], b[:2, :3], g[:2, :3], be[:2, :3])
    small = tuple(t.detach().requires_grad_() for t in small)
    assert gradcheck(f("cpp"), small)
    assert gradgradcheck(f("cpp"), small)


# (dx, dw) im2col limits forcing each route whatever the size: aten, im2col, mixed
ROUTES = ((0, 0), (10**6, 10**6), (10**6, 0), (0, 10**6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((3, 2, 2, 6, 5), (3, 2), (2, 1), (1, 1)),
        ((2, 5, 3, 7, 7), (3, 3), (2, 2), (1, 1)),  # an Omniglot block, small
        ((2, 37, 3, 7, 7), (3, 3), (2, 2), (1, 1)),  # images in 3 chunks (16, 16, 5)
        ((4, 3, 1, 4, 4), (3, 3), (2, 2), (0, 2)),
        ((2, 1, 4, 3, 1), (1, 1), (1, 1), (0, 0)),
    ],
)
def test_conv_bwd_per_task_matches_grouped_aten(dtype, shape, kernel, stride, padding):
    """The cpp backend's first backward of per-task conv (im2col + GEMMs) against the
    grouped aten.convolution_backward used everywhere else, for each gradient mask."""
    from mumo_fast.ops.functions import _conv_input_weight_grads

    t, n, c, h, w_ = shape
    o = 3
    x = rand(t, n, c, h, w_, dtype=dtype)
    w = rand(t, o, c, *kernel, dtype=dtype)
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w_ + 2 * padding[1] - kernel[1]) // stride[1] + 1
    dz = rand(t, n, o, ho, wo, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-4  # fp32: sums of up to ~600 terms
    assert cpp.available()
    raw = torch.ops.mumo_fast.conv_bwd_per_task
    geometry = (list(stride), list(padding))
    for need in ((True, True), (False, True), (True, False)):
        want = _conv_input_weight_grads(dz, x, w, stride, padding, *need)
        routes = [cpp.conv_bwd_per_task(dz, x, w, stride, padding, *need)]
        for limits in ROUTES:
            dx, dw = raw(dz, x, w, *geometry, *need, *limits)
            routes.append((dx if need[0] else None, dw if need[1] else None))
        for got in routes:
            for g, e in zip(got, want):
                assert (g is None) == (e is None)
                if e is not None:
                    torch.testing.assert_close(g, e, rtol=tol, atol=tol)
    # non-contiguous inputs, and a dtype the kernel does not cover (the aten loop)
    dz_nc = dz.transpose(3, 4).contiguous().transpose(3, 4)
    x_nc = x.transpose(0, 1).contiguous().transpose(0, 1)
    want = _conv_input_weight_grads(dz, x, w, stride, padding, True, True)
    for limits in ROUTES:
        for g, e in zip(raw(dz_nc, x_nc, w, *geometry, True, True, *limits), want):
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)
    if dtype == torch.float32:
        half = [a.bfloat16() for a in (dz, x, w)]
        got = cpp.conv_bwd_per_task(*half, stride, padding, True, True)
        for g, e in zip(got, _conv_input_weight_grads(dz, x, w, stride, padding, True, True)):
            # bf16 sums of up to a few hundred terms: a tolerance relative to the scale
            scale = e.abs().max().item()
            torch.testing.assert_close(g.float(), e, rtol=0.05, atol=0.05 * scale)
