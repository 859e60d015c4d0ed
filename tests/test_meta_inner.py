"""The batched inner loop against a per-task Python loop (float64, every parameter), with
the base network's layers on every backend (``config['backend']``): the fused kernels'
Functions inside MAML's second-order meta-gradient."""

import pytest
import torch
from meta_reference import meta_loss
from torch.func import functional_call

from mumo_fast.meta import MetaLearner, TaskBatch, inner_loop
from mumo_fast.meta import fast_weights as fw_types
from mumo_fast.nn import FiLMLinear
from ops_cases import ALL_BACKENDS

F64 = {"atol": 1e-10, "rtol": 1e-9}
# "auto" as well: on the CPU it picks the reference for the linear layers, cpp for conv and
# batch norm; a missing backend is skipped with its reason (failed in CI): see conftest
CORE_BACKENDS = ["auto", *ALL_BACKENDS]


def _on_default_device(*ts):
    """Drawn on the CPU (a seeded CPU generator), used on the default device (CUDA for
    the compiled triton backend, see conftest)."""
    device = torch.get_default_device()
    return [t.to(device) for t in ts]


def regression_batch(t=5, k=4, q=6, modes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device="cpu")  # noqa: E731
    sx, sy, qx, qy = _on_default_device(
        r(t, k, 1) * 3, r(t, k, 1) * 2, r(t, q, 1) * 3, r(t, q, 1) * 2
    )
    return TaskBatch(sx, sy, qx, qy, modes)


def image_batch(t=3, ways=3, shots=1, q=2, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, n = ways * shots, ways * q
    sy = torch.arange(ways, device="cpu").repeat(shots).expand(t, k).contiguous()
    qy = torch.arange(ways, device="cpu").repeat(q).expand(t, n).contiguous()
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device="cpu")  # noqa: E731
    return TaskBatch(*_on_default_device(r(t, k, 1, size, size), sy, r(t, n, 1, size, size), qy))


def mlp_cfg(**kw):
    cfg = {
        "base": "mlp",
        "hidden_sizes": [13, 11, 9],
        "inner_steps": 2,
        "inner_lr": 0.05,
        "encoder_hidden": 5,
        "modulation_hidden": 7,
    }
    cfg.update(kw)
    return cfg


def make(cfg, seed=0):
    torch.manual_seed(seed)
    learner = MetaLearner.from_config(cfg).double()
    # Non-trivial modulation and inner lrs: perturb every parameter away from its init.
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return learner


def grads_of(learner, fn):
    learner.zero_grad(set_to_none=True)
    out = fn()
    return out, {
        n: (None if p.grad is None else p.grad.clone()) for n, p in learner.named_parameters()
    }


def assert_grads_equal(a, b, tol=F64):
    assert a.keys() == b.keys()
    for n in a:
        if a[n] is None or b[n] is None:
            assert a[n] is None or torch.count_nonzero(a[n]) == 0, n
            assert b[n] is None or torch.count_nonzero(b[n]) == 0, n
            continue
        torch.testing.assert_close(a[n], b[n], **tol, msg=lambda m, n=n: f"{n}: {m}")


def spy_clamp(monkeypatch):
    """What each low-rank step did with the clamp, in order: "none" (it binds nowhere),
    "lowrank" (its correction kept low-rank), "dense" (the layer switched to dense)."""
    seen = []
    binding, correction = fw_types.clamp_binding, fw_types.clamp_correction
    dense = fw_types.LowRankLinear.dense

    def spy_binding(*args):
        out = binding(*args)
        if out is None:
            seen.append("none")
        return out

    def spy_correction(*args):
        seen.append("lowrank")
        return correction(*args)

    def spy_dense(self, *args):
        seen.append("dense")
        return dense(self, *args)

    monkeypatch.setattr(fw_types, "clamp_binding", spy_binding)
    monkeypatch.setattr(fw_types, "clamp_correction", spy_correction)
    monkeypatch.setattr(fw_types.LowRankLinear, "dense", spy_dense)
    return seen


def check_against_loop(learner, batch, tol=F64):
    stats, ours = grads_of(learner, lambda: learner.meta_train_step(batch))
    ref_loss, ref = grads_of(learner, lambda: meta_loss(learner, batch).backward() or None)
    loss = meta_loss(learner, batch).item()
    assert abs(stats["loss"] - loss) < 1e-10
    assert_grads_equal(ours, ref, tol)
    nonzero = [n for n, g in ours.items() if g is not None and g.abs().sum() > 0]
    assert len(nonzero) == len(ours), set(ours) - set(nonzero)


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("fast_weights", ["dense", "lowrank"])
@pytest.mark.parametrize("modulation", ["film", "sigmoid", "softmax"])
def test_mumomaml_matches_loop(modulation, fast_weights, backend):
    learner = make(mlp_cfg(modulation=modulation, fast_weights=fast_weights, backend=backend))
    check_against_loop(learner, regression_batch())


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("fast_weights", ["dense", "lowrank"])
def test_first_order_and_learned_lr_match_loop(fast_weights, backend):
    cfg = mlp_cfg(
        first_order=True,
        learn_inner_lr=True,
        fast_weights=fast_weights,
        inner_steps=3,
        backend=backend,
    )
    check_against_loop(make(cfg), regression_batch(t=4, k=3))


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_maml_lstm_linear_heads_match_loop(backend):
    learner = make(mlp_cfg(method="maml", fast_weights="lowrank", backend=backend))
    check_against_loop(learner, regression_batch(t=3))
    learner = make(
        mlp_cfg(encoder="lstm", encoder_layers=2, modulation_hidden=None, backend=backend)
    )
    check_against_loop(learner, regression_batch(t=3))


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_dense_and_lowrank_meta_gradients_identical(backend):
    batch = regression_batch(t=6, k=5, q=7, seed=3)
    results = {}
    for fw in ("dense", "lowrank", "auto"):
        cfg = mlp_cfg(fast_weights=fw, inner_steps=3, learn_inner_lr=True, backend=backend)
        learner = make(cfg, seed=1)
        results[fw] = grads_of(learner, lambda learner=learner: learner.meta_train_step(batch))
    for fw in ("lowrank", "auto"):
        assert abs(results[fw][0]["loss"] - results["dense"][0]["loss"]) < 1e-12
        assert_grads_equal(results[fw][1], results["dense"][1])


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize(
    "fast_weights,rank_fraction,extra",
    [
        ("dense", 1.0, {}),
        ("lowrank", 1.0, {}),
        ("lowrank", 1e3, {}),
        ("lowrank", 1e3, {"learn_inner_lr": True}),
        ("lowrank", 1e3, {"first_order": True}),
    ],
)
def test_clamp_matches_loop(fast_weights, rank_fraction, extra, backend, monkeypatch):
    # inner lr large enough for the clamp to matter; 0.5 binds for some layers, not all.
    # rank_fraction 1: most binding low-rank layers need too much rank for the correction
    # and switch to dense mid-loop; 1e3: they all keep the low-rank correction.
    seen = spy_clamp(monkeypatch)
    monkeypatch.setattr(fw_types, "CLAMP_RANK_FRACTION", rank_fraction)
    cfg = mlp_cfg(
        inner_grad_clamp=0.5, fast_weights=fast_weights, inner_lr=0.1, backend=backend, **extra
    )
    learner = make(cfg)
    batch = regression_batch()
    check_against_loop(learner, batch)
    if fast_weights == "lowrank":
        expected = {"none", "dense"} if rank_fraction == 1.0 else {"none", "lowrank"}
        assert expected <= set(seen), seen
    unclamped = make(mlp_cfg(fast_weights=fast_weights, inner_lr=0.1, backend=backend, **extra))
    a = learner.meta_train_step(batch)["loss"]
    b = unclamped.meta_train_step(batch)["loss"]
    assert abs(a - b) > 1e-6  # the clamp did bind


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_lowrank_clamp_matches_loop_over_seeds(seed, backend, monkeypatch):
    """The low-rank correction (kept low-rank: rank fraction 1e3) on several batches and
    initialisations: with a clamp that binds in some tasks and layers, not all, any task the
    cheap bound wrongly settles as "cannot bind" shows as a loss off the loop's."""
    kinds = spy_clamp(monkeypatch)
    monkeypatch.setattr(fw_types, "CLAMP_RANK_FRACTION", 1e3)
    cfg = mlp_cfg(
        inner_grad_clamp=0.3, fast_weights="lowrank", inner_lr=0.1, inner_steps=3, backend=backend
    )
    check_against_loop(make(cfg, seed=seed), regression_batch(t=6, seed=seed))
    assert "lowrank" in kinds  # the correction was used


def _edge_batches(seed):
    """(d, a) pairs on which the cheap bound of |D^T A| is tight (or nearly): K = 1, where
    max_o sum_k |D| * max |A| is the largest entry; and a column of D parallel to the
    largest column of A, where the Cauchy-Schwarz bound is reached; plus random ones."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    out = [(r(4, 1, 7), r(4, 1, 5)), (r(3, 6, 9), r(3, 6, 4))]
    a = r(4, 5, 6)
    d = 0.1 * r(4, 5, 3)
    norms = a.square().sum(1)  # [T, IN]
    i = norms.argmax(1)
    d[:, :, 1] = 2.5 * a[torch.arange(4), :, i]  # D[:, 1] parallel to A's largest column
    out.append((d, a))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_clamp_bound_never_misses_a_binding_clamp(seed):
    """_clamp_may_bind is an upper bound: for a clamp just below the largest |D^T A| of a
    task (where the clamp binds), it must say "may bind", on batches built to sit at the
    bound's edge; for a clamp above its bound it says "cannot"."""
    for d, a in _edge_batches(seed):
        g_max = torch.bmm(d.transpose(1, 2), a).abs().amax(dim=(1, 2))  # [T]
        for t in range(d.shape[0]):
            for frac in (1 - 1e-9, 0.9, 0.6, 0.45):
                clamp = float(g_max[t]) * frac
                may = fw_types._clamp_may_bind(d, a, clamp)
                assert bool(may[t]), (seed, t, frac, d.shape)
        # far above every bound (the trivial one: sum_k |D| |A| <= K max|D| max|A|)
        k = d.shape[1]
        huge = 1.01 * k * float(d.abs().amax()) * float(a.abs().amax())
        assert not bool(fw_types._clamp_may_bind(d, a, huge).any())


def test_clamp_bound_is_tight_at_k1():
    """With one support point the bound is exact: it settles a clamp just above |D^T A|."""
    g = torch.Generator().manual_seed(7)
    d = torch.randn(5, 1, 6, generator=g, dtype=torch.float64)
    a = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    g_max = torch.bmm(d.transpose(1, 2), a).abs().amax(dim=(1, 2))
    assert not bool(fw_types._clamp_may_bind(d, a, float(g_max.max()) * (1 + 1e-9)).any())


@pytest.mark.parametrize("by", ["rows", "cols"])
def test_clamp_correction_is_the_clamp_excess(by):
    """v^T u of the correction equals lr * (G - clamp(G)) for every task, including tasks
    where fewer rows (columns) bind than the padded rank, or none at all."""
    g = torch.Generator().manual_seed(4)
    t, k, o, i, clamp, lr = 6, 3, 17, 23, 1.0, 0.3
    d = torch.randn(t, k, o, generator=g, dtype=torch.float64) * 0.2
    a = torch.randn(t, k, i, generator=g, dtype=torch.float64) * 0.2
    # large entries in a few rows of D (binding rows) or columns of A (binding columns)
    big = d if by == "rows" else a
    big[0, :, 2] *= 40
    big[0, :, 5] *= 40
    big[3, :, 7] *= 40
    u, v = fw_types.clamp_correction(d, a, clamp, lr, fw_types.clamp_binding(d, a, clamp))
    assert u.shape[1] == 2  # rank added: the most binding rows (columns) of any task
    one_hot = v if by == "rows" else u
    assert bool(((one_hot == 0) | (one_hot == 1)).all())
    full = torch.bmm(d.transpose(1, 2), a)
    torch.testing.assert_close(
        torch.bmm(v.transpose(1, 2), u), lr * (full - full.clamp(-clamp, clamp)), **F64
    )
    assert fw_types.clamp_binding(d * 1e-3, a, clamp) is None


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_clamp_that_never_binds_keeps_lowrank_exact(backend):
    batch = regression_batch()
    a = make(mlp_cfg(inner_grad_clamp=1e6, fast_weights="lowrank", backend=backend))
    b = make(mlp_cfg(fast_weights="dense", backend=backend))
    assert_grads_equal(
        grads_of(a, lambda: a.meta_train_step(batch))[1],
        grads_of(b, lambda: b.meta_train_step(batch))[1],
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_chunked_equals_unchunked(first_order):
    batch = regression_batch(t=7)
    full = make(mlp_cfg(first_order=first_order))
    chunked = make(mlp_cfg(first_order=first_order, chunk_size=3))
    sa, ga = grads_of(full, lambda: full.meta_train_step(batch))
    sb, gb = grads_of(chunked, lambda: chunked.meta_train_step(batch))
    assert abs(sa["loss"] - sb["loss"]) < 1e-12
    assert abs(sa["post_mod_loss"] - sb["post_mod_loss"]) < 1e-12
    assert_grads_equal(ga, gb)


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_multi_maml_routes_by_mode(backend):
    modes = torch.tensor([2, 0, 2, 2, 0], device=torch.get_default_device())
    learner = make(mlp_cfg(method="multi-maml", num_modes=4, backend=backend))
    batch = regression_batch(modes=modes)
    learner.zero_grad()
    learner.meta_train_step(batch)
    for p in learner.stacked.values():  # modes 1 and 3 have no task: zero gradient
        assert torch.count_nonzero(p.grad[1]) == 0 and torch.count_nonzero(p.grad[3]) == 0
        assert p.grad[0].abs().sum() > 0 and p.grad[2].abs().sum() > 0
    ref = {n: p.grad.clone() for n, p in learner.named_parameters()}
    learner.zero_grad()
    meta_loss(learner, batch).backward()
    assert_grads_equal(ref, {n: p.grad for n, p in learner.named_parameters()})
    # Swapping the labels of two tasks changes the routing, hence the loss.
    other = TaskBatch(
        batch.support_x,
        batch.support_y,
        batch.query_x,
        batch.query_y,
        torch.tensor([0, 2, 2, 2, 0], device=torch.get_default_device()),
    )
    assert (
        abs(learner.meta_train_step(other)["loss"] - learner.meta_train_step(batch)["loss"]) > 1e-6
    )


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("method", ["maml", "mumomaml"])
def test_conv4_matches_loop(method, backend):
    cfg = {
        "base": "conv4",
        "image_size": 12,
        "num_classes": 3,
        "conv_channels": 5,
        "num_blocks": 3,
        "method": method,
        "inner_steps": 2,
        "inner_lr": 0.3,
        "encoder_hidden": 4,
        "encoder_channels": 3,
        "modulation_hidden": 16,
        "backend": backend,
    }
    check_against_loop(make(cfg), image_batch(), tol={"atol": 1e-9, "rtol": 1e-8})


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("fast_weights", ["dense", "lowrank"])
def test_mlp_classifier_matches_loop(fast_weights, backend):
    """Cross entropy on an MLP: the chain path's written-out loss gradient (output_grad)."""
    g = torch.Generator().manual_seed(4)
    t, k, q, c = 4, 6, 5, 3
    batch = TaskBatch(
        torch.randn(t, k, 2, generator=g, dtype=torch.float64),
        torch.randint(0, c, (t, k), generator=g),
        torch.randn(t, q, 2, generator=g, dtype=torch.float64),
        torch.randint(0, c, (t, q), generator=g),
    )
    cfg = mlp_cfg(
        method="maml",
        in_features=2,
        out_features=c,
        loss="cross_entropy",
        fast_weights=fast_weights,
        backend=backend,
    )
    check_against_loop(make(cfg), batch)


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("fast_weights", ["dense", "auto"])
def test_generic_path_equals_written_out_chain(fast_weights, backend, monkeypatch):
    """The MLP takes the written-out chain backward; forcing the generic autograd path
    must give the same meta-gradients."""
    batch = regression_batch(t=4, seed=5)
    cfg = mlp_cfg(fast_weights=fast_weights, learn_inner_lr=True, backend=backend)
    chained = make(cfg, seed=2)
    sa, ga = grads_of(chained, lambda: chained.meta_train_step(batch))
    monkeypatch.setattr(inner_loop, "_chain", lambda *args: None)
    generic = make(cfg, seed=2)
    sb, gb = grads_of(generic, lambda: generic.meta_train_step(batch))
    assert abs(sa["loss"] - sb["loss"]) < 1e-12
    assert_grads_equal(ga, gb)


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_lowrank_weights_equal_dense_weights(backend):
    """A low-rank linear layer's forward equals the dense per-task weights ``W + v^T u``;
    a recorded forward keeps its input, output and gamma, and refuses a second call."""
    t, n, i, o, r = 3, 4, 6, 5, 2
    device = torch.get_default_device()
    layer = FiLMLinear(i, o, activation="relu", backend=backend).double()
    r64 = lambda *s: torch.randn(*s, dtype=torch.float64, device=device)  # noqa: E731
    x, u, v, gamma, beta = r64(t, n, i), r64(t, r, i), r64(t, r, o), r64(t, o), r64(t, o)
    low = fw_types.LowRankLinear(layer, layer.weight, layer.bias, u=u, v=v)
    dense = low.dense(t)
    assert isinstance(dense, fw_types.DenseLinear)
    torch.testing.assert_close(dense.weight, layer.weight + torch.bmm(v.transpose(1, 2), u))
    tape = {}
    y = fw_types.FastWeights({"": low}).bind(tape)[layer](x, gamma, beta)
    y_ref = functional_call(
        layer, {"weight": dense.weight, "bias": layer.bias}, (x, gamma, beta), {"task_axis": True}
    )
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dense(x, gamma, beta), y_ref, atol=1e-12, rtol=1e-12)
    rx, ry, rg = tape[""]
    assert rx is x and ry is y and rg is gamma
    with pytest.raises(RuntimeError, match="twice"):
        fw_types.FastWeights({"": low}).bind(tape)[layer](x, gamma, beta)
