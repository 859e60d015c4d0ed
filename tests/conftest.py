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

import pytest  # noqa: E402

if torch.cuda.is_available():
    # exact float32 everywhere: the parity tests compare backends to float32 rounding
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _backend_present(request):
    """A test parametrised over a backend that is missing here is skipped with the reason,
    or fails where that backend is required (see ``ops_cases.required_backends``: CI)."""
    from ops_cases import missing_reason, required_backends

    params = getattr(getattr(request.node, "callspec", None), "params", {})
    backend = params.get("backend")
    if isinstance(backend, str):
        reason = missing_reason(backend)
        if reason is not None:
            if backend in required_backends():
                pytest.fail(f"backend {backend!r} is required here but unavailable: {reason}")
            pytest.skip(f"backend {backend!r} unavailable: {reason}")


@pytest.fixture(autouse=True)
def _triton_tensors_on_cuda(request):
    """Tests parametrised by ``backend`` draw their tensors on the default device; for the
    compiled (non-interpreted) triton backend that is CUDA."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("backend") == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        with torch.device("cuda"):
            yield
    else:
        yield
