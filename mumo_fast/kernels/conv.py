"""FiLM conv2d forward: the vendor convolution (cuDNN on CUDA) plus the fused epilogue.

Shared weights fold the tasks into the batch (``[T*N, C, H, W]``); per-task weights use
the grouped layout (``[N, T*C, H, W]``, ``groups=T``).  The convolution runs without
bias; one Triton pass then adds the bias in place (giving the pre-FiLM ``z``) and
writes ``y = act(z*gamma + beta)`` (``epilogue.py``).  An implicit-GEMM conv
kernel is not provided: the vendor kernels are the faster choice at these shapes.
"""

from ..ops.reference import conv_pre_film
from .epilogue import film_epilogue_fwd


def film_conv2d_fwd(x, weight, bias, gamma, beta, stride, padding, act: str):
    """Launcher of the raw op ``conv_fwd`` -> (y, z), both [T, N, O, H', W']."""
    z = conv_pre_film(x, weight, None, tuple(stride), tuple(padding)).contiguous()
    t, n, o = z.shape[:3]
    z4 = z.view(t, n, o, -1)
    y = film_epilogue_fwd(z4, bias, gamma, beta, act)
    return y.view(z.shape), z
