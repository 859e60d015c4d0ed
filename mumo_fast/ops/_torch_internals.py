"""The private torch internals the ops rely on, each behind one function.

PyTorch offers no public query for "is a torch.func transform or a forward-mode level
active here", and its ``autograd.Function.apply`` binds every call's arguments with
``inspect.signature`` (about a third of an op call's Python overhead). The functions below
are the only places in mumo_fast that touch the private names involved;
``tests/test_torch_internals.py`` checks each against the public behaviour it stands for,
so a torch release that changes one fails there by name.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor
from torch.autograd import Function

# torch < 2.14 defines Function.apply in Python (argument binding with inspect.signature,
# then dead functorch wrappers unwrapped, then the C++ apply); from 2.14 on it is the C++
# apply of torch._C._FunctionBase itself.
TORCH_APPLY_IN_PYTHON = isinstance(Function.__dict__["apply"], classmethod)
if TORCH_APPLY_IN_PYTHON:
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers


def forward_ad_level() -> int:
    """The innermost open ``torch.autograd.forward_ad.dual_level``, -1 where none is open."""
    return _fwad._current_level


def functorch_transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, vjp, jvp, jacrev, ...) is active."""
    return torch._C._are_functorch_transforms_active()


def functorch_jvp_depth() -> int:
    """How many torch.func forward-mode transforms (``jvp``, ``jacfwd``) are open."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())


def is_view(t: Tensor) -> bool:
    """Whether ``t`` is a view of another tensor's storage."""
    return t._is_view()


def apply_unbound(cls: type[Function], args: tuple):
    """``cls.apply(*args)`` for a Function called with all its arguments positionally and
    no torch.func transform active (check :func:`functorch_transforms_active` first): what
    ``Function.apply`` does in that case, without its per-call argument binding (a plain
    call of torch's C++ apply where that is ``Function.apply`` already)."""
    if TORCH_APPLY_IN_PYTHON:
        return super(Function, cls).apply(*_unwrap_dead_wrappers(args))
    return super(Function, cls).apply(*args)
