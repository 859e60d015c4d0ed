"""The inner-loop update ``theta - lr * clamp(grad, -c, c)`` over many tensors, one launch.

Up to ``SLOTS`` (8) parameter tensors go into one launch (longer lists take
ceil(len/8) launches): the grid is the concatenation of each tensor's blocks, and a
program finds its tensor by comparing its id with the cumulative block counts.
"""

import torch
import triton
import triton.language as tl

from . import _common

SLOTS = 8


@triton.jit
def _update_block(
    p_ptr,
    g_ptr,
    o_ptr,
    lr_ptr,
    slot,
    numel,
    blk,
    clamp,
    HAS_CLAMP: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_CLAMP:
        g = tl.minimum(tl.maximum(g, -clamp), clamp)  # clamp: a scalar of ACC_DTYPE
    lr = tl.load(lr_ptr + slot).to(ACC_DTYPE)
    tl.store(o_ptr + offs, (p - lr * g).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def clamped_sgd_kernel(
    p0,
    g0,
    o0,
    p1,
    g1,
    o1,
    p2,
    g2,
    o2,
    p3,
    g3,
    o3,
    p4,
    g4,
    o4,
    p5,
    g5,
    o5,
    p6,
    g6,
    o6,
    p7,
    g7,
    o7,
    n0,
    n1,
    n2,
    n3,
    n4,
    n5,
    n6,
    n7,
    e0,
    e1,
    e2,
    e3,
    e4,
    e5,
    e6,
    lr_ptr,
    clamp_ptr,
    NUM: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out_i = p_i - lr[i] * clamp(g_i, -clamp, clamp) for the NUM tensors of this launch.

    Grid: (total blocks,) where tensor i owns blocks [e_{i-1}, e_i) (e_{-1} = 0).
    Pointers: p_i, g_i: parameter and gradient i, contiguous, same numel n_i; o_i: the
        fresh output i; slots >= NUM are unused (any valid pointer).  lr_ptr: [NUM]
        per-tensor learning rates (ACC_DTYPE-convertible).  clamp_ptr: [1] the clamp bound
        in the parameters' dtype, used when HAS_CLAMP (a tensor, not a Python float, so
        that a float64 bound keeps float64 precision; any valid pointer otherwise).
    Sizes: n_i element counts; e_i cumulative block ends.
    Constexprs: NUM tensors in this launch (1..8); ACC_DTYPE arithmetic dtype; BLOCK
        elements per program.
    """
    pid = tl.program_id(0)
    clamp = tl.load(clamp_ptr).to(ACC_DTYPE)
    if pid < e0:
        _update_block(p0, g0, o0, lr_ptr, 0, n0, pid, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 1:
        if (pid >= e0) & (pid < e1):
            _update_block(p1, g1, o1, lr_ptr, 1, n1, pid - e0, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 2:
        if (pid >= e1) & (pid < e2):
            _update_block(p2, g2, o2, lr_ptr, 2, n2, pid - e1, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 3:
        if (pid >= e2) & (pid < e3):
            _update_block(p3, g3, o3, lr_ptr, 3, n3, pid - e2, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 4:
        if (pid >= e3) & (pid < e4):
            _update_block(p4, g4, o4, lr_ptr, 4, n4, pid - e3, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 5:
        if (pid >= e4) & (pid < e5):
            _update_block(p5, g5, o5, lr_ptr, 5, n5, pid - e4, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 6:
        if (pid >= e5) & (pid < e6):
            _update_block(p6, g6, o6, lr_ptr, 6, n6, pid - e5, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)
    if NUM > 7:
        if pid >= e6:
            _update_block(p7, g7, o7, lr_ptr, 7, n7, pid - e6, clamp, HAS_CLAMP, ACC_DTYPE, BLOCK)


def clamped_sgd(params, grads, lr, clamp):
    """Launcher: params, grads lists of contiguous tensors of one dtype and device; lr a
    1-D tensor with one learning rate per param; clamp a float or None (applied in the
    parameters' dtype, as ``Tensor.clamp`` does).  Returns the list of fresh updated tensors."""
    outs = [torch.empty_like(p) for p in params]
    dtype, device = params[0].dtype, params[0].device
    clamp_t = lr if clamp is None else _common.scalar(clamp, dtype, device)
    block = 256 if _common.INTERPRET else 2048
    acc = _common.acc_dtype(dtype)
    for start in range(0, len(params), SLOTS):
        ps = params[start : start + SLOTS]
        gs = grads[start : start + SLOTS]
        os_ = outs[start : start + SLOTS]
        num = len(ps)
        numels = [p.numel() for p in ps]
        ends, total = [], 0
        for k in numels:
            total += triton.cdiv(k, block)
            ends.append(total)
        pad = SLOTS - num
        ptrs = []
        for p, g, o in zip(ps + [ps[0]] * pad, gs + [gs[0]] * pad, os_ + [os_[0]] * pad):
            ptrs += [p, g, o]
        numels += [0] * pad
        ends += [total] * pad
        clamped_sgd_kernel[(total,)](
            *ptrs,
            *numels,
            *ends[: SLOTS - 1],
            lr[start : start + num].contiguous(),
            clamp_t,
            NUM=num,
            HAS_CLAMP=clamp is not None,
            ACC_DTYPE=acc,
            BLOCK=block,
            num_warps=4,
        )
    return outs
