"""FiLM conv2d forward: the vendor convolution (cuDNN on CUDA) plus the fused epilogue.

Shared weights fold the tasks into the batch (``[T*N, C, H, W]``); per-task weights use
the grouped layout (``[N, T*C, H, W]``, ``groups=T``).  The convolution runs without
bias; one Triton pass then adds the bias in place (giving the pre-FiLM ``z``) and
writes ``y = act(z*gamma + beta)`` (``epilogue.py``).  An implicit-GEMM conv
kernel is not provided: the vendor kernels are the faster choice at these shapes.
"""

import torch.nn.functional as F

from .epilogue import film_epilogue_fwd


def conv_nobias(x, weight, stride, padding):
    """z [T, N, O, H', W'] (contiguous) = conv2d of x [T,N,C,H,W] with weight
    [T,O,C,KH,KW] (per task) or [O,C,KH,KW] (shared), no bias."""
    t, n, c, h, w = x.shape
    if weight.dim() == 4:
        z = F.conv2d(x.reshape(t * n, c, h, w), weight, None, stride, padding)
        return z.reshape(t, n, *z.shape[1:])
    o = weight.shape[1]
    z = F.conv2d(
        x.transpose(0, 1).reshape(n, t * c, h, w),
        weight.reshape(t * o, *weight.shape[2:]),
        None,
        stride,
        padding,
        groups=t,
    )
    return z.reshape(n, t, o, *z.shape[2:]).transpose(0, 1).contiguous()


def film_conv2d_fwd(x, weight, bias, gamma, beta, stride, padding, act: str):
    """Launcher of the raw op ``conv_fwd`` -> (y, z), both [T, N, O, H', W']."""
    z = conv_nobias(x, weight, tuple(stride), tuple(padding)).contiguous()
    t, n, o = z.shape[:3]
    z4 = z.view(t, n, o, -1)
    y = film_epilogue_fwd(z4, bias, gamma, beta, act)
    return y.view(z.shape), z
