"""Runtime scalars of the Triton kernels (clamp bound, batch norm's eps) carry the tensors'
dtype: no kernel takes a Python float, which Triton types as float32 (compiled, and
interpreted up to triton 3.8 where the clamp bound is concerned), and float64 results
match the float64 reference to about 1e-15 where a float32 bound would be off by 1e-8."""

import importlib
import pkgutil

import pytest
import torch

from mumo_fast import ops
from mumo_fast.ops.backends import eager
from ops_cases import TRITON_DEVICES, TRITON_MODULE_MARK, rand, triton_backend

F64 = torch.float64
pytestmark = TRITON_MODULE_MARK
DEVICES = TRITON_DEVICES
# float32(0.7) - 0.7 = 1.2e-8: a bound or learning rate rounded to float32 is visible at 1e-15
BOUND, LR, EPS = 0.7, 0.87, 1e-5 / 3


def exact(got, want, rtol=1e-15, atol=1e-15):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the arguments,
    then launches the real kernel."""

    def __init__(self, name, kernel, calls):
        self.name, self.kernel, self.calls = name, kernel, calls

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.calls.append((self.name, args, kwargs))
            return launch(*args, **kwargs)

        return run


def _all_kernels():
    import mumo_fast.kernels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name in dir(module):
            if name.endswith("_kernel"):
                yield module, name


def _launch_every_kernel(device):
    from mumo_fast.kernels import conv, epilogue, linear, lowrank, norm, update

    t, n, i, o = 2, 3, 5, 4
    x, w = rand(t, n, i, device=device, dtype=F64), rand(t, o, i, device=device, dtype=F64)
    vec = [rand(t, o, device=device, dtype=F64) for _ in range(3)]
    linear.film_linear_fwd(x, w, *vec, "tanh")
    u, v = rand(t, 2, i, device=device, dtype=F64), rand(t, 2, o, device=device, dtype=F64)
    lowrank.film_linear_lowrank_fwd(x, w[0].contiguous(), u, v, *vec, "relu")
    xc, wc = (
        rand(t, n, 3, 6, 5, device=device, dtype=F64),
        rand(4, 3, 3, 3, device=device, dtype=F64),
    )
    conv.film_conv2d_fwd(
        xc, wc, *[rand(t, 4, device=device, dtype=F64) for _ in range(3)], [1, 1], [1, 1], "none"
    )
    x4 = rand(t, n, o, 3, device=device, dtype=F64)
    epilogue.film_epilogue_bwd(x4, x4.tanh(), x4, vec[1], "tanh")
    y, mean, rstd = norm.bn_fwd(x4, *vec[:2], None, None, EPS, "none")
    norm.bn_bwd(x4, x4, y, mean, rstd, *vec, "sigmoid")
    lr = torch.full((2,), LR, dtype=F64, device=device)
    update.clamped_sgd([x4, w], [x4, w], lr, BOUND)
    update.clamped_sgd([x4, w], [x4, w], lr, None)


@pytest.mark.parametrize("device", DEVICES)
def test_no_kernel_takes_a_python_float(device, monkeypatch):
    """Every kernel in mumo_fast.kernels is launched, and none is handed a Python float."""
    calls = []
    kernels = list(_all_kernels())
    for module, name in kernels:
        monkeypatch.setattr(module, name, _Recorder(name, getattr(module, name), calls))
    _launch_every_kernel(device)
    assert {name for _, name in kernels} == {name for name, _, _ in calls}
    for name, args, kwargs in calls:
        floats = [a for a in (*args, *kwargs.values()) if isinstance(a, float)]
        assert not floats, f"{name} takes Python floats {floats} (typed float32 by Triton)"


@pytest.mark.parametrize("device", DEVICES)
def test_float64_clamp_bound_and_lr_exact(device):
    """Gradients beyond a bound not representable in float32, raw op and public op."""
    ps = [rand(3, 4, device=device, dtype=F64), rand(300, device=device, dtype=F64)]
    gs = [
        rand(3, 4, device=device, scale=3.0, dtype=F64),
        rand(300, device=device, scale=3.0, dtype=F64),
    ]
    assert all((g.abs() > BOUND).any() for g in gs)  # the bound binds
    lr = torch.tensor([LR, LR / 3], dtype=F64, device=device)
    exact(
        triton_backend.clamped_sgd_raw(ps, gs, lr, BOUND),
        ops.reference.clamped_sgd(ps, gs, list(lr), BOUND),
    )
    got = ops.clamped_sgd(ps, gs, [LR, LR / 3], BOUND, backend="triton")
    exact(got, ops.clamped_sgd(ps, gs, [LR, LR / 3], BOUND, backend="reference"))


@pytest.mark.parametrize("device", DEVICES)
def test_float64_batch_norm_eps_exact(device):
    """A variance of the size of eps, so that eps rounded to float32 would move rstd by
    about 1e-8 relative (compiled kernels; interpreters 3.7-3.9 happen to keep this sum
    exact, the no-Python-float test above covers them)."""
    x = rand(2, 5, 3, 4, device=device, scale=1e-3, dtype=F64)
    got = triton_backend.bn_fwd(x, None, None, None, None, EPS, "none")
    exact(got, eager.bn_fwd(x, None, None, None, None, EPS, "none"), rtol=1e-12, atol=0)
