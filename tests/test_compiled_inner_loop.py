"""MetaLearner.use_compiled_inner_loop: torch.compile of the inner loop and query forward
gives the per-task loop's meta-gradients (float64), and refuses what it cannot compile."""

import copy
import pickle

import pytest
import torch
from test_meta_inner import check_against_loop, make, mlp_cfg, regression_batch, spy_clamp

from mumo_fast.meta import fast_weights as fw_types

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # (reset keeps them)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "cfg, modes",
    [
        (mlp_cfg(fast_weights="auto", learn_inner_lr=True), None),
        (
            mlp_cfg(method="multi-maml", num_modes=2, first_order=True),
            torch.tensor([0, 1, 1, 0, 1]),
        ),
        # a clamp that binds: data-dependent branches, so the compiled graph breaks there;
        # the correction kept low-rank (see the rank fraction below)
        (mlp_cfg(fast_weights="lowrank", inner_grad_clamp=0.5, inner_lr=0.1), None),
    ],
    ids=["mumomaml-second-order", "multimaml-first-order", "lowrank-clamp"],
)
def test_compiled_matches_loop(cfg, modes, monkeypatch):
    kinds = []
    if cfg.get("inner_grad_clamp") is not None:
        # at the default CLAMP_RANK_FRACTION these small layers go dense as soon as the
        # clamp binds: keep the correction low-rank, and check that it was used
        monkeypatch.setattr(fw_types, "CLAMP_RANK_FRACTION", 1e3)
        kinds = spy_clamp(monkeypatch)
    learner = make(cfg)
    learner.use_compiled_inner_loop()
    batch = regression_batch(modes=modes)
    check_against_loop(learner, batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    # a second meta-batch of the same shape reuses the compiled graph and stays exact
    check_against_loop(learner, regression_batch(modes=modes, seed=3))
    if cfg.get("inner_grad_clamp") is not None:
        assert "lowrank" in kinds, kinds


def test_compiled_can_be_switched_off():
    learner = make(mlp_cfg())
    learner.use_compiled_inner_loop()
    learner.use_compiled_inner_loop(False)
    check_against_loop(learner, regression_batch())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


def test_copies_and_pickles_of_a_compiled_learner_use_their_own_weights():
    learner = make(mlp_cfg())
    learner.use_compiled_inner_loop()
    batch = regression_batch()
    check_against_loop(learner, batch)
    for other in (copy.deepcopy(learner), pickle.loads(pickle.dumps(learner))):
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1.1)
        check_against_loop(other, batch)  # its own weights, still compiled
        assert other.__dict__["_compile_inner_loop"]


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"base": "conv4", "num_classes": 3, "image_size": 12}, "config\\['base'\\]='mlp'"),
        (mlp_cfg(backend="cpp"), "config\\['backend'\\]"),
    ],
)
def test_compiled_refuses_what_it_cannot_compile(cfg, match):
    learner = make(cfg)
    with pytest.raises(ValueError, match=match):
        learner.use_compiled_inner_loop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (inductor's Triton kernels)")
@pytest.mark.parametrize("first_order", [False, True])
def test_compiled_matches_loop_on_cuda(first_order):
    learner = make(mlp_cfg(fast_weights="auto", first_order=first_order)).cuda()
    learner.use_compiled_inner_loop()
    check_against_loop(learner, regression_batch().to("cuda"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
