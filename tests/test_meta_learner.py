"""MetaLearner's public interface: config round trip, predict / evaluate / embed, errors."""

import json

import pytest
import torch
from meta_reference import meta_loss
from test_meta_inner import CORE_BACKENDS, image_batch, make, mlp_cfg, regression_batch

from mumo_fast.meta import MetaLearner, TaskBatch
from mumo_fast.models import MLP, Conv4


def test_config_round_trip_is_json():
    for cfg in (
        mlp_cfg(),
        mlp_cfg(method="multi-maml", num_modes=3),
        {"base": "conv4", "method": "maml"},
    ):
        learner = MetaLearner.from_config(cfg)
        text = json.dumps(learner.config)
        again = MetaLearner.from_config(json.loads(text))
        assert again.config == learner.config
        shapes = {n: p.shape for n, p in learner.named_parameters()}
        assert shapes == {n: p.shape for n, p in again.named_parameters()}


def test_defaults_are_the_paper_regression_model():
    cfg = MetaLearner.from_config({}).config
    assert cfg["hidden_sizes"] == [100, 100, 100] and cfg["encoder"] == "gru"
    assert cfg["encoder_hidden"] == 40 and cfg["encoder_layers"] == 1 and cfg["loss"] == "mse"
    assert cfg["eval_steps"] == cfg["inner_steps"] == 5


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"method": "reptile"}, "method"),
        ({"base": "resnet"}, "base"),
        ({"modulation": "gate"}, "modulation"),
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_lr": "0.1"}, "inner_lr"),
        ({"inner_lr": float("nan")}, "inner_lr"),
        ({"inner_lr": float("inf")}, "inner_lr"),
        ({"inner_grad_clamp": float("nan")}, "inner_grad_clamp"),
        ({"inner_grad_clamp": True}, "inner_grad_clamp"),
        ({"inner_grad_clamp": 0}, "inner_grad_clamp"),
        ({"fast_weights": "sparse"}, "fast_weights"),
        ({"method": "multi-maml", "fast_weights": "lowrank"}, "fast_weights"),
        ({"hidden_size": 3}, "hidden_size"),
        ({"base": "mlp", "encoder": "conv"}, "encoder"),
        ({"base_init": "xavier"}, "base_init"),
        ({"base": "conv4", "base_init": "authors-code"}, "base_init"),
    ],
)
def test_bad_config_raises_naming_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        MetaLearner.from_config(cfg)


@pytest.mark.parametrize("method", ["mumomaml", "multi-maml"])
def test_authors_code_init_draws_small_normal_weights_and_zero_biases(method):
    torch.manual_seed(0)
    learner = MetaLearner.from_config(mlp_cfg(method=method, base_init="authors-code", num_modes=2))
    torch.manual_seed(0)
    default = MetaLearner.from_config(mlp_cfg(method=method, num_modes=2))
    assert default.config["base_init"] == "torch"
    base = learner.stacked if method == "multi-maml" else learner.base
    other = default.stacked if method == "multi-maml" else default.base
    for (name, p), q in zip(base.named_parameters(), other.parameters()):
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0 and torch.count_nonzero(q) > 0, name
        else:
            assert 0.007 < p.std().item() < 0.013 and q.std().item() > 0.04, name
    if method == "mumomaml":  # the encoder and heads keep torch's initialisation
        for p, q in zip(learner.encoder.parameters(), default.encoder.parameters()):
            assert p.std().item() > 0.05 and q.std().item() > 0.05


def test_parameter_groups_cover_every_parameter():
    learner = MetaLearner.from_config(mlp_cfg(learn_inner_lr=True))
    groups = learner.parameter_groups()
    assert set(groups) == {"base", "encoder", "modulation", "inner_lr"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in learner.parameters())
    assert set(MetaLearner.from_config(mlp_cfg(method="maml")).parameter_groups()) == {"base"}


def test_evaluate_and_predict_shapes_regression():
    learner = make(mlp_cfg(inner_steps=1, eval_steps=3, inner_lr=0.05))
    batch = regression_batch(t=4, k=5, q=7)
    res = learner.evaluate(batch, steps=3)
    assert res["per_step"].shape == (4, 4) and "accuracy_per_step" not in res
    assert not res["per_step"].requires_grad
    # Row 0 is post-modulation; adaptation lowers the support-fit query loss on average here.
    assert torch.all(torch.isfinite(res["per_step"]))
    preds = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert preds.shape == (4, 7, 1)
    # predict after s steps gives the loss evaluate reports for step s.
    for s in (0, 2):
        p = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=s)
        mse = (p - batch.query_y).square().mean(dim=(1, 2))
        torch.testing.assert_close(mse, res["per_step"][s], atol=1e-12, rtol=1e-10)
    assert all(p.grad is None for p in learner.parameters())


def test_evaluate_matches_training_loss_and_chunks():
    learner = make(mlp_cfg(chunk_size=2))
    batch = regression_batch(t=5)
    res = learner.evaluate(batch, steps=learner.config["inner_steps"])
    stats = learner.meta_train_step(batch)
    assert abs(res["per_step"][-1].mean().item() - stats["loss"]) < 1e-10
    assert abs(res["per_step"][0].mean().item() - stats["post_mod_loss"]) < 1e-10


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("fast_weights", ["dense", "lowrank"])
def test_clamped_evaluate_and_predict_match_loop_and_training(fast_weights, backend):
    """With an inner-gradient clamp that binds: evaluate's loss after s steps is the
    per-task loop's (which clamps), its last step is training's loss (chunked too), and
    predict gives the predictions behind it."""
    cfg = mlp_cfg(
        inner_grad_clamp=0.3, inner_lr=0.2, fast_weights=fast_weights, chunk_size=3, backend=backend
    )
    learner = make(cfg)
    unclamped = make({**cfg, "inner_grad_clamp": None})
    batch = regression_batch(t=5, seed=6)
    steps = cfg["inner_steps"] + 1
    res = learner.evaluate(batch, steps=steps)
    free = unclamped.evaluate(batch, steps=steps)
    for s in range(steps + 1):
        want = meta_loss(learner, batch, steps=s).item()
        assert abs(res["per_step"][s].mean().item() - want) < 1e-10, s
        if s > 0:  # the clamp binds: without it the losses differ
            assert abs(free["per_step"][s].mean().item() - want) > 1e-4, s
    train = learner.meta_train_step(batch)["loss"]
    assert abs(res["per_step"][cfg["inner_steps"]].mean().item() - train) < 1e-10
    for s in (1, steps):
        p = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=s)
        mse = (p - batch.query_y).square().mean(dim=(1, 2))
        torch.testing.assert_close(mse, res["per_step"][s], atol=1e-12, rtol=1e-10)


def test_post_mod_loss_is_optional_and_does_not_touch_gradients():
    batch = regression_batch(t=4)
    learner = make(mlp_cfg())
    with_post = learner.meta_train_step(batch)
    grads = [p.grad.clone() for p in learner.parameters()]
    learner.zero_grad(set_to_none=True)
    without = learner.meta_train_step(batch, post_mod_loss=False)
    assert set(with_post) == {"loss", "post_mod_loss"} and set(without) == {"loss"}
    assert without["loss"] == with_post["loss"]
    post_mod = learner.evaluate(batch, 0)["per_step"][0].mean().item()
    assert abs(with_post["post_mod_loss"] - post_mod) < 1e-10
    for g, p in zip(grads, learner.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_evaluate_classification_accuracy():
    cfg = {"base": "conv4", "image_size": 12, "num_classes": 3, "conv_channels": 4, "num_blocks": 3}
    learner = make({**cfg, "inner_steps": 1, "inner_lr": 0.4})
    batch = image_batch(t=2)
    res = learner.evaluate(batch, steps=2)
    assert res["per_step"].shape == (3, 2) and res["accuracy_per_step"].shape == (3, 2)
    acc = res["accuracy_per_step"]
    assert torch.all((acc >= 0) & (acc <= 1))
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=2)
    assert logits.shape == (2, 6, 3)
    torch.testing.assert_close((logits.argmax(-1) == batch.query_y).double().mean(1), acc[2])
    assert learner.embed(batch.support_x, batch.support_y).shape == (2, 2 * 40)


def test_embed_shape_and_errors():
    learner = make(mlp_cfg(encoder_hidden=6))
    batch = regression_batch(t=3)
    emb = learner.embed(batch.support_x, batch.support_y)
    assert emb.shape == (3, 12)
    with pytest.raises(ValueError, match="mumomaml"):
        make(mlp_cfg(method="maml")).embed(batch.support_x, batch.support_y)


def test_multi_maml_requires_modes():
    learner = make(mlp_cfg(method="multi-maml", num_modes=2))
    batch = regression_batch(t=3)
    with pytest.raises(ValueError, match="modes is required"):
        learner.predict(batch.support_x, batch.support_y, batch.query_x)
    with pytest.raises(ValueError, match="modes is required"):
        learner.meta_train_step(batch)
    with pytest.raises(ValueError, match="modes"):
        learner.predict(
            batch.support_x, batch.support_y, batch.query_x, modes=torch.tensor([0, 1, 2])
        )
    with pytest.raises(ValueError, match="modes"):
        TaskBatch(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y, torch.tensor([0, 1])
        )
    out = learner.predict(
        batch.support_x, batch.support_y, batch.query_x, steps=0, modes=torch.tensor([1, 0, 1])
    )
    assert out.shape == (3, 6, 1)


def test_bad_inputs_name_the_argument():
    learner = make(mlp_cfg())
    b = regression_batch(t=3)
    with pytest.raises(ValueError, match="support_x"):
        learner.meta_train_step(
            TaskBatch(b.support_x.expand(3, 4, 2), b.support_y, b.query_x, b.query_y)
        )
    with pytest.raises(ValueError, match="query_y"):
        learner.evaluate(TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y[..., 0]), 1)
    with pytest.raises(ValueError, match="query_y"):
        TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y[:2])
    with pytest.raises(TypeError, match="batch"):
        learner.meta_train_step((b.support_x, b.support_y))
    with pytest.raises(ValueError, match="steps"):
        learner.evaluate(b, steps=-1)
    with pytest.raises(ValueError, match="query_x"):
        learner.predict(b.support_x, b.support_y, b.query_x[:2])
    # K = 0 support points, or no query points
    with pytest.raises(ValueError, match="support_x must hold at least one"):
        learner.meta_train_step(
            TaskBatch(b.support_x[:, :0], b.support_y[:, :0], b.query_x, b.query_y)
        )
    with pytest.raises(ValueError, match="support_x must hold at least one"):
        learner.predict(b.support_x[:, :0], b.support_y[:, :0], b.query_x)
    with pytest.raises(ValueError, match="query_x must hold at least one"):
        learner.evaluate(TaskBatch(b.support_x, b.support_y, b.query_x[:, :0], b.query_y[:, :0]))
    # a float32 input to a float64 model (and the other way round) names the input
    with pytest.raises(TypeError, match="query_x must have dtype torch.float64"):
        learner.predict(b.support_x, b.support_y, b.query_x.float())
    with pytest.raises(TypeError, match="support_x must have dtype torch.float64"):
        learner.meta_train_step(TaskBatch(b.support_x.float(), b.support_y, b.query_x, b.query_y))
    single = make(mlp_cfg()).float()
    with pytest.raises(TypeError, match="query_x must have dtype torch.float32"):
        single.predict(b.support_x.float(), b.support_y.float(), b.query_x)


def test_base_networks_expose_film_channels():
    mlp = MLP(1, 1, [100, 100, 100])
    assert mlp.film_channels == [100, 100, 100]
    assert mlp(torch.randn(7, 1)).shape == (7, 1)
    conv = Conv4(1, 5)
    assert conv.film_channels == [64] * 4
    x = torch.randn(2, 3, 1, 28, 28)
    film = [(torch.rand(2, 64) + 0.5, torch.randn(2, 64)) for _ in range(4)]
    assert conv(x, film, task_axis=True).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="film"):
        conv(x, film[:3], task_axis=True)


def test_nested_config_spelling_resolves_to_flat():
    nested = {
        "base": {"type": "mlp", "sizes": [1, 7, 5, 2]},
        "encoder": {"type": "lstm", "hidden": 6, "layers": 2, "bidirectional": True},
        "modulation": {"type": "sigmoid", "hidden": None},
    }
    cfg = MetaLearner.from_config(nested).config
    assert (cfg["in_features"], cfg["hidden_sizes"], cfg["out_features"]) == (1, [7, 5], 2)
    assert (cfg["encoder"], cfg["encoder_hidden"], cfg["encoder_layers"]) == ("lstm", 6, 2)
    assert cfg["modulation"] == "sigmoid" and cfg["modulation_hidden"] is None
    with pytest.raises(ValueError, match="bidirectional"):
        MetaLearner.from_config({"encoder": {"type": "gru", "bidirectional": False}})


def test_multi_maml_state_is_the_stacked_parameters_only():
    """The Multi-MAML base supplies the forward only: no parameters of its own, so the state
    dict (and saved models) holds the per-mode stacks alone, and copies are independent."""
    import copy

    learner = make(mlp_cfg(method="multi-maml", num_modes=3))
    assert list(learner.base.parameters()) == []
    assert {k.split(".")[0] for k in learner.state_dict()} == {"stacked"}
    other = MetaLearner.from_config(learner.config).double()
    other.load_state_dict(learner.state_dict())
    clone = copy.deepcopy(learner)
    modes = torch.tensor([0, 2, 1, 2])
    batch = regression_batch(t=4, modes=modes)
    args = (batch.support_x, batch.support_y, batch.query_x, 2, modes)
    want = learner.predict(*args)
    torch.testing.assert_close(other.predict(*args), want, rtol=0, atol=0)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(1.5)
    assert (clone.predict(*args) - want).abs().max() > 1e-3
    torch.testing.assert_close(learner.predict(*args), want, rtol=0, atol=0)
