"""Forward-mode differentiation through every op on every backend: ``torch.func.jvp``,
``jacfwd`` and ``hessian`` (forward-over-reverse), and ``torch.autograd.forward_ad``
(also over a backward), against the reference backend's torch ops (float64); the
reference's own tangents against central finite differences of the written-out ops."""

import oracle
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp

from mumo_fast import ops
from mumo_fast.nn import FiLMBatchNorm, FiLMConv2d, FiLMLinear
from ops_cases import ALL_BACKENDS, FUSED_BACKENDS, bn_args, conv_args, linear_args, rand, tol

F64 = torch.float64
TOL = tol(F64)


def _cases():
    """(name, f(backend, *tensors), tensors): each op, every optional input present,
    shared and per-task weights, a smooth activation (second derivatives not all 0)."""
    lin = linear_args(2, 3, 4, 3, False, (True, True, True), F64)
    lin_shared = linear_args(2, 3, 4, 3, True, (True, False, True), F64, shared_bias=True)
    x, w, b, g, be = linear_args(2, 3, 4, 3, True, (True, True, True), F64)
    u, v = rand(2, 2, 4, dtype=F64), rand(2, 2, 3, dtype=F64)
    conv = conv_args(2, 2, 2, 5, 4, 3, 3, False, (True, True, True), F64)
    conv_shared = conv_args(2, 2, 2, 4, 4, 2, 2, True, (True, False, True), F64)
    bn = bn_args((2, 5, 3), False, (True, True, True, True), F64)
    bn4 = bn_args((2, 3, 2, 3, 2), True, (True, True, True, True), F64)
    return [
        ("linear", lambda k, *a: ops.film_linear(*a, activation="tanh", backend=k), lin),
        (
            "linear-shared",
            lambda k, x, w, b, be: ops.film_linear(x, w, b, None, be, "sigmoid", backend=k),
            tuple(a for a in lin_shared if a is not None),
        ),
        (
            "lowrank",
            lambda k, *a: ops.film_linear_lowrank(*a, activation="sigmoid", backend=k),
            (x, w, u, v, b, g, be),
        ),
        (
            "conv",
            lambda k, *a: ops.film_conv2d(
                *a, stride=(2, 1), padding=1, activation="tanh", backend=k
            ),
            conv,
        ),
        (
            "conv-shared",
            lambda k, x, w, b, be: ops.film_conv2d(x, w, b, None, be, 1, 1, "relu", backend=k),
            tuple(a for a in conv_shared if a is not None),
        ),
        ("bn", lambda k, *a: ops.film_batch_norm(*a, activation="sigmoid", backend=k), bn),
        ("bn-spatial", lambda k, *a: ops.film_batch_norm(*a, activation="tanh", backend=k), bn4),
    ]


CASE_NAMES = [c[0] for c in _cases()]


def _case(name):
    return next(c for c in _cases() if c[0] == name)


def _assert_all_close(got, want):
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, **TOL)
        return
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _assert_all_close(a, b)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_reference_tangents_match_finite_differences(name):
    """The reference is the oracle below: its jvp against central differences of the ops
    written out from their definitions (oracle.py)."""
    _, f, args = _case(name)
    tangents = tuple(torch.randn_like(a) for a in args)
    _, got = jvp(lambda *a: f("reference", *a), args, tangents)
    fn = {
        "linear": lambda *a: oracle.film_linear(*a, activation="tanh"),
        "linear-shared": lambda x, w, b, be: oracle.film_linear(x, w, b, None, be, "sigmoid"),
        "lowrank": lambda *a: oracle.film_linear_lowrank(*a, activation="sigmoid"),
        "conv": lambda *a: oracle.film_conv2d(*a, stride=(2, 1), padding=1, activation="tanh"),
        "conv-shared": lambda x, w, b, be: oracle.film_conv2d(x, w, b, None, be, 1, 1, "relu"),
        "bn": lambda *a: oracle.film_batch_norm(*a, activation="sigmoid"),
        "bn-spatial": lambda *a: oracle.film_batch_norm(*a, activation="tanh"),
    }[name]
    h = 1e-6
    plus = fn(*(a + h * t for a, t in zip(args, tangents)))
    minus = fn(*(a - h * t for a, t in zip(args, tangents)))
    torch.testing.assert_close(got, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_jvp_jacfwd_hessian_match_reference(name, backend):
    _, f, args = _case(name)
    tangents = tuple(torch.randn_like(a) for a in args)
    out_w = torch.randn_like(f("reference", *args))
    argnums = tuple(range(len(args)))

    def scalar(k):
        # a non-linear function of the output: its Hessian has every second-order term
        return lambda *a: (torch.sin(f(k, *a)) * out_w).sum()

    ref_y, ref_t = jvp(lambda *a: f("reference", *a), args, tangents)
    y, t = jvp(lambda *a: f(backend, *a), args, tangents)
    _assert_all_close((y, t), (ref_y, ref_t))
    assert t.abs().max() > 1e-3  # not trivially zero
    _assert_all_close(
        jacfwd(lambda *a: f(backend, *a), argnums=argnums)(*args),
        jacrev(lambda *a: f("reference", *a), argnums=argnums)(*args),
    )
    want = hessian(scalar("reference"), argnums=argnums)(*args)
    _assert_all_close(hessian(scalar(backend), argnums=argnums)(*args), want)
    # forward-over-reverse with torch.func's pieces spelled out: jvp of grad
    grad_fn = torch.func.grad(scalar(backend), argnums=argnums)
    ref_grad_fn = torch.func.grad(scalar("reference"), argnums=argnums)
    _assert_all_close(jvp(grad_fn, args, tangents)[1], jvp(ref_grad_fn, args, tangents)[1])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_forward_ad_module_over_a_backward(name, backend):
    """torch.autograd.forward_ad: the tangent of the output, and of a gradient computed
    by a plain backward (no graph) inside the dual level: a Hessian-vector product."""
    _, f, args = _case(name)
    tangents = [torch.randn_like(a) for a in args]
    out_w = torch.randn_like(f("reference", *args))
    results = {}
    for k in ("reference", backend):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(a, t).requires_grad_() for a, t in zip(args, tangents)]
            y = f(k, *duals)
            grads = torch.autograd.grad((torch.sin(y) * out_w).sum(), duals)
            results[k] = [fwAD.unpack_dual(y).tangent] + [
                fwAD.unpack_dual(gr).tangent for gr in grads
            ]
    assert all(t is not None for t in results[backend])
    _assert_all_close(results[backend], results["reference"])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("clamp", [None, 0.6])
def test_update_ops_forward_mode(backend, clamp):
    """clamped_sgd and linear_sgd (learnable lr): jvp and hessian against the written-out
    update."""
    p = [rand(3, 4, dtype=F64), rand(5, dtype=F64)]
    g = [rand(3, 4, dtype=F64), rand(5, dtype=F64)]
    lr = torch.tensor(0.3, dtype=F64)

    def sgd(p0, p1, g0, g1, a):
        return ops.clamped_sgd([p0, p1], [g0, g1], [a, 0.2], clamp, backend=backend)

    def sgd_ref(p0, p1, g0, g1, a):
        c = (lambda v: v) if clamp is None else (lambda v: v.clamp(-clamp, clamp))
        return p0 - a * c(g0), p1 - 0.2 * c(g1)

    args = (*p, *g, lr)
    tangents = tuple(torch.randn_like(a) for a in args)
    _assert_all_close(jvp(sgd, args, tangents)[1], jvp(sgd_ref, args, tangents)[1])

    w, b = rand(4, 3, dtype=F64), rand(4, dtype=F64)
    d, a = rand(2, 5, 4, dtype=F64), rand(2, 5, 3, dtype=F64)

    def step(k, w, b, d, a, lr):
        new_w, new_b = ops.linear_sgd(w, b, d, a, lr, clamp, backend=k)
        return (torch.sin(new_w).sum() + (new_b**3).sum()) * lr

    args = (w, b, d, a, lr)
    argnums = tuple(range(5))
    _assert_all_close(
        hessian(lambda *x: step(backend, *x), argnums=argnums)(*args),
        hessian(lambda *x: step("reference", *x), argnums=argnums)(*args),
    )
    tangents = tuple(torch.randn_like(x) for x in args)
    _assert_all_close(
        jvp(lambda *x: step(backend, *x), args, tangents)[1],
        jvp(lambda *x: step("reference", *x), args, tangents)[1],
    )


class _Net(nn.Module):
    """conv -> batch norm -> linear, from mumo_fast.nn (per-sample inputs, FiLM given)."""

    def __init__(self, backend):
        super().__init__()
        self.conv = FiLMConv2d(2, 3, 3, padding=1, activation="tanh", backend=backend)
        self.norm = FiLMBatchNorm(3, activation="sigmoid", backend=backend)
        self.head = FiLMLinear(3 * 4 * 4, 2, activation="tanh", backend=backend)

    def forward(self, x, gamma):
        h = self.norm(self.conv(x, gamma))
        return self.head(h.flatten(1))


@pytest.mark.parametrize("backend", [None, *FUSED_BACKENDS])
def test_hessian_of_a_model_built_from_mumo_fast_nn(backend):
    """hessian w.r.t. every parameter and the FiLM scale, by default (backend None: 'auto'
    picks the C++ conv and batch norm on the CPU) and on each backend."""
    torch.manual_seed(0)
    net = _Net(backend).double()
    torch.manual_seed(0)
    ref = _Net("reference").double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = rand(5, 2, 4, 4, dtype=F64)
    gamma = 1 + 0.3 * rand(3, dtype=F64)
    y = rand(5, 2, dtype=F64)

    def loss(model):
        return lambda p, gm: ((functional_call(model, p, (x, gm)) - y) ** 2).sum()

    got = hessian(loss(net), argnums=(0, 1))(params, gamma)
    want = hessian(loss(ref), argnums=(0, 1))(params, gamma)
    flat_got, _ = torch.utils._pytree.tree_flatten(got)
    flat_want, _ = torch.utils._pytree.tree_flatten(want)
    assert len(flat_got) == len(flat_want)
    _assert_all_close(flat_got, flat_want)
    assert max(float(h.abs().max()) for h in flat_want) > 1e-2
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    _assert_all_close(
        jvp(lambda p: functional_call(net, p, (x, gamma)), (params,), (tangents,))[1],
        jvp(lambda p: functional_call(ref, p, (x, gamma)), (params,), (tangents,))[1],
    )


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name", ["linear", "lowrank", "conv", "bn-spatial"])
def test_third_order_forward_over_reverse_over_reverse(name, backend):
    """jacfwd(jacrev(jacrev(f))) w.r.t. x: the backward of the backward, differentiated
    in forward mode."""
    _, f, args = _case(name)
    out_w = torch.randn_like(f("reference", *args))

    def scalar(k):
        return lambda x: (torch.sin(f(k, x, *args[1:])) * out_w).sum()

    got = jacfwd(jacrev(jacrev(scalar(backend))))(args[0])
    want = jacfwd(jacrev(jacrev(scalar("reference"))))(args[0])
    _assert_all_close(got, want)
    assert want.abs().max() > 1e-3


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_forward_over_forward_is_refused_not_wrong(backend):
    """PyTorch does not differentiate an autograd.Function's jvp: forward over forward
    would miss terms, so the ops refuse it (the reference, plain torch ops, allows it)."""
    _, f, args = _case("linear")
    x = args[0]

    def scalar(k):
        return lambda v: torch.sin(f(k, v, *args[1:])).sum()

    with pytest.raises(NotImplementedError, match="forward mode over forward mode"):
        jacfwd(jacfwd(scalar(backend)))(x)
    want = hessian(scalar("reference"))(x)
    torch.testing.assert_close(jacfwd(jacfwd(scalar("reference")))(x), want, **TOL)
    torch.testing.assert_close(hessian(scalar(backend))(x), want, **TOL)
