"""pytest setup shared by every test module.

On a machine without CUDA, run the Triton kernels through Triton's interpreter
(``TRITON_INTERPRET=1``, which must be set before triton is first imported) so the
``triton`` backend is available and its kernels are tested on CPU tensors.  An explicit
``TRITON_INTERPRET`` in the environment is left as it is.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
