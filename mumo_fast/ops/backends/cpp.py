"""Backend ``cpp``: the raw-op contract of ``eager.py`` as fused C++ CPU kernels.

The kernels live in ``csrc/`` and are registered as ``torch.ops.mumo_fast.*``
(``TORCH_LIBRARY``); this module loads them (see ``cpp_build``), registers fake
kernels and vmap rules so that ``torch.func`` and ``torch.library.opcheck`` work,
and exposes them with the eager signatures. float32 and float64 run the C++
kernels; other dtypes fall back to the eager composition.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import cpp_build, eager

_state: dict[str, object] = {}
_KERNEL_DTYPES = (torch.float32, torch.float64)
OP_NAMES = (
    "linear_fwd",
    "linear_lowrank_fwd",
    "conv_fwd",
    "conv_bwd_per_task",
    "epilogue_bwd",
    "bn_fwd",
    "bn_bwd",
)


def available() -> bool:
    """True once the extension is loaded; the first failure warns once and sticks."""
    if "ok" not in _state:
        try:
            _state["origin"] = cpp_build.load_extension()
            _register_python_rules()
            _state["ok"] = True
        except Exception as err:  # compiler missing, bad sources, ABI mismatch, ...
            _state["ok"] = False
            _state["error"] = f"{type(err).__name__}: {err}"
            warnings.warn(
                "mumo_fast: the C++ extension could not be loaded or built "
                f"({_state['error'][:500]}); backend 'cpp' is unavailable and 'auto' "
                "falls back to 'reference' on CPU.",
                RuntimeWarning,
                stacklevel=2,
            )
    return bool(_state["ok"])


def origin() -> str | None:
    """Where the kernels came from (ahead-of-time module or JIT build dir), if loaded."""
    return _state.get("origin")  # type: ignore[return-value]


def supports_device(device: torch.device) -> bool:
    return torch.device(device).type == "cpu"


def _op(name: str):
    return getattr(torch.ops.mumo_fast, name).default


def _has_kernels(x: Tensor) -> bool:
    """Whether the C++ kernels take ``x`` (float32 or float64 on the CPU); other inputs go
    to the eager composition."""
    return x.dtype in _KERNEL_DTYPES and x.device.type == "cpu"


# ---- raw ops (signatures of eager.py) ----


def linear_fwd(x, weight, bias, gamma, beta, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,IN], weight [T,OUT,IN] | [OUT,IN] -> (y, z) both [T,N,OUT]."""
    if not _has_kernels(x):
        return eager.linear_fwd(x, weight, bias, gamma, beta, act)
    return _loaded_op("linear_fwd")(x, weight, bias, gamma, beta, act)


def linear_lowrank_fwd(x, weight, u, v, bias, gamma, beta, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,IN], weight [OUT,IN], u [T,R,IN], v [T,R,OUT] -> (y, z) both [T,N,OUT]."""
    if not _has_kernels(x):
        return eager.linear_lowrank_fwd(x, weight, u, v, bias, gamma, beta, act)
    return _loaded_op("linear_lowrank_fwd")(x, weight, u, v, bias, gamma, beta, act)


def conv_fwd(x, weight, bias, gamma, beta, stride, padding, act: str) -> tuple[Tensor, Tensor]:
    """x [T,N,C,H,W], weight [T,O,C,KH,KW] | [O,C,KH,KW] -> (y, z) both [T,N,O,H',W']."""
    if not _has_kernels(x):
        return eager.conv_fwd(x, weight, bias, gamma, beta, stride, padding, act)
    return _loaded_op("conv_fwd")(x, weight, bias, gamma, beta, list(stride), list(padding), act)


def epilogue_bwd(gy, y, z, gamma, act: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """[T,N,C,S] -> (dz [T,N,C,S], dgamma, dbeta, dbias [T,C])."""
    if not _has_kernels(y):
        return eager.epilogue_bwd(gy, y, z, gamma, act)
    return _loaded_op("epilogue_bwd")(gy, y, z, gamma, act)


def bn_fwd(x, weight, bias, gamma, beta, eps: float, act: str) -> tuple[Tensor, Tensor, Tensor]:
    """x [T,N,C,S] -> (y [T,N,C,S], mean [T,C], rstd [T,C])."""
    if not _has_kernels(x):
        return eager.bn_fwd(x, weight, bias, gamma, beta, eps, act)
    return _loaded_op("bn_fwd")(x, weight, bias, gamma, beta, float(eps), act)


def bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act: str):
    """-> (dx [T,N,C,S], dweight, dbias, dgamma, dbeta [T,C])."""
    if not _has_kernels(x):
        return eager.bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act)
    return _loaded_op("bn_bwd")(gy, x, y, mean, rstd, weight, bias, gamma, act)


_OPS: dict[str, object] = {}


def _loaded_op(name: str):
    """The registered raw op, loading the extension on first use."""
    if name not in _OPS and not available():
        raise RuntimeError(f"mumo_fast: backend 'cpp' is unavailable: {_state['error']}")
    return _OPS[name]


# Output positions (HO*WO) up to which the per-task conv backward computes each gradient
# through the C++ im2col + GEMM route instead of one aten.convolution_backward (oneDNN)
# per task. Measured by bench/conv_bwd_routes_cpu.py on the 2-core Xeon of BENCHMARKS.md
# (1 thread, T=32, N=80, 3x3 stride 2; bench/results/cpu_conv_bwd_routes_quiet.txt):
# im2col was faster for the input gradient at every Omniglot layer (28x28 1->64 73 vs
# 113 ms, 14x14 157 vs 164, 7x7 35 vs 41, 4x4 10.5 vs 16.5) and for the weight gradient
# only at 4x4 (11.4 vs 14.0; 7x7 39.8 vs 30.7). Above the largest measured output
# (14x14 = 196 positions) aten, unmeasured otherwise.
DX_IM2COL_MAX_POSITIONS = 196
DW_IM2COL_MAX_POSITIONS = 4


def conv_bwd_per_task(dz, x, weight, stride, padding, need_x: bool, need_w: bool):
    """Input and weight grads of z = conv(x, weight) with per-task weights (shared ones
    expanded to [T, ...] by the caller), for the Function's first backward (not
    differentiable; its double backward uses aten's grouped call): dz [T,N,O,HO,WO], x [T,N,C,H,W], weight [T,O,C,KH,KW]
    -> (dx | None, dweight | None). Task by task in C++ (measured 1.5-3x faster than
    the grouped call, which also copies x and dz into the [N, T*C, H, W] layout), each
    gradient by im2col + GEMM (float32/64) or one aten call per task (see above)."""
    dx, dw = _loaded_op("conv_bwd_per_task")(
        dz, x, weight, list(stride), list(padding), bool(need_x), bool(need_w),
        DX_IM2COL_MAX_POSITIONS, DW_IM2COL_MAX_POSITIONS,
    )  # fmt: skip
    return (dx if need_x else None), (dw if need_w else None)


# (no clamped_sgd: ``ops.clamped_sgd`` runs the reference's, torch ops per parameter)


# one batched GEMM accumulating into the weight is already the fused form
linear_sgd = eager.linear_sgd


# ---- fake kernels and vmap rules ----


def _like(x: Tensor, *shape: int) -> Tensor:
    return x.new_empty(shape)


def _fake_linear(x, weight, bias, gamma, beta, act):
    t, n, _ = x.shape
    o = weight.shape[-2]
    return _like(x, t, n, o), _like(x, t, n, o)


def _fake_linear_lowrank(x, weight, u, v, bias, gamma, beta, act):
    t, n, _ = x.shape
    o = weight.shape[0]
    return _like(x, t, n, o), _like(x, t, n, o)


def _fake_conv(x, weight, bias, gamma, beta, stride, padding, act):
    t, n, _, h, w = x.shape
    o = weight.shape[-4]
    kh, kw = weight.shape[-2:]
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return _like(x, t, n, o, ho, wo), _like(x, t, n, o, ho, wo)


def _fake_conv_bwd_per_task(dz, x, weight, stride, padding, need_x, need_w, dx_max, dw_max):
    return torch.empty_like(x), torch.empty_like(weight)


def _fake_epilogue_bwd(gy, y, z, gamma, act):
    t, _, c, _ = z.shape
    return torch.empty_like(z), _like(z, t, c), _like(z, t, c), _like(z, t, c)


def _fake_bn_fwd(x, weight, bias, gamma, beta, eps, act):
    t, _, c, _ = x.shape
    return torch.empty_like(x), _like(x, t, c), _like(x, t, c)


def _fake_bn_bwd(gy, x, y, mean, rstd, weight, bias, gamma, act):
    t, _, c, _ = x.shape
    return (torch.empty_like(x),) + tuple(_like(x, t, c) for _ in range(4))


_FAKES = {
    "linear_fwd": _fake_linear,
    "linear_lowrank_fwd": _fake_linear_lowrank,
    "conv_fwd": _fake_conv,
    "conv_bwd_per_task": _fake_conv_bwd_per_task,
    "epilogue_bwd": _fake_epilogue_bwd,
    "bn_fwd": _fake_bn_fwd,
    "bn_bwd": _fake_bn_bwd,
}


def _loop_vmap_rule(op):
    """vmap rule: one call of the op per batch element, outputs stacked on dim 0."""

    def rule(info, in_dims, *args):
        outs = []
        for i in range(info.batch_size):
            call = [
                a.select(d, i) if d is not None and isinstance(a, Tensor) else a
                for a, d in zip(args, in_dims)
            ]
            outs.append(op(*call))
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)

    return rule


def _register_python_rules() -> None:
    for name in OP_NAMES:
        op = _op(name)
        _OPS[name] = op
        qualname = f"mumo_fast::{name}"
        torch.library.register_fake(qualname, _FAKES[name])
        torch.library.register_vmap(qualname, _loop_vmap_rule(op))
