"""The generic trainer: exact resume, atomic checkpoints, init-from, per-network clipping."""

import json
import os
import signal
import stat

import pytest
import torch

from mumo_fast.domains.regression.data import make_sampler
from mumo_fast.domains.regression.presets import run_config
from mumo_fast.meta import MetaLearner
from mumo_fast.train import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    Trainer,
    TrainSettings,
    atomic_save,
    load_file,
    mean_ci95,
    read_log,
    seed_everything,
)
from mumo_fast.train import checkpoint as checkpoint_module


def make_trainer(run_dir, iterations, seed=0, hook=None, checkpoint_every=1000, method="mumomaml"):
    seed_everything(seed)
    cfg = run_config(method, "film", 2)["learner"]
    cfg.update(hidden_sizes=[16, 16], encoder_hidden=8, modulation_hidden=16)  # small: fast
    learner = MetaLearner.from_config(cfg)
    sampler = make_sampler(2, 3)
    calls = [0]

    def sample(gen):
        calls[0] += 1
        if hook is not None:
            hook(calls[0])
        return sampler(gen)

    settings = TrainSettings(iterations, log_every=1, checkpoint_every=checkpoint_every, seed=seed)
    return Trainer(learner, sample, run_dir, settings, progress=False, tensorboard=False)


def losses(run_dir):
    return [
        (r["iteration"], r["loss"], r["post_mod_loss"]) for r in read_log(run_dir / "log.jsonl")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 10-iteration run."""
    run_dir = tmp_path_factory.mktemp("reference")
    trainer = make_trainer(run_dir, 10)
    assert trainer.fit().completed
    return run_dir, losses(run_dir), trainer.learner.state_dict()


def _assert_same_run(run_dir, trainer, reference):
    _, ref_losses, ref_state = reference
    assert losses(run_dir) == ref_losses  # bit-identical floats
    state = trainer.learner.state_dict()
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)


def test_signal_saves_and_resume_continues_exactly(tmp_path, reference):
    def interrupt(call):
        if call == 4:
            os.kill(os.getpid(), signal.SIGINT)

    first = make_trainer(tmp_path, 10, hook=interrupt)
    before = signal.getsignal(signal.SIGINT)
    result = first.fit()
    assert not result.completed and result.iteration == 4 and result.signal == signal.SIGINT
    assert (tmp_path / CHECKPOINT_NAME).is_file() and not (tmp_path / MODEL_NAME).exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    second = make_trainer(tmp_path, 10, seed=123)  # other init: resume must overwrite it
    second.resume()
    assert second.iteration == 4
    assert second.fit().completed
    _assert_same_run(tmp_path, second, reference)
    assert (tmp_path / MODEL_NAME).is_file()


def test_resume_after_crash_drops_log_past_checkpoint(tmp_path, reference):
    def crash(call):
        if call == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        make_trainer(tmp_path, 10, hook=crash, checkpoint_every=3).fit()
    assert [r[0] for r in losses(tmp_path)] == list(range(1, 7))
    assert load_file(tmp_path / CHECKPOINT_NAME)["iteration"] == 6
    second = make_trainer(tmp_path, 10, seed=5, checkpoint_every=3)
    second.resume()
    second.fit()
    _assert_same_run(tmp_path, second, reference)


def test_resume_refuses_other_config(tmp_path, reference):
    run_dir, _, _ = reference
    other = make_trainer(tmp_path, 10, method="maml")
    other.run_dir = run_dir
    with pytest.raises(ValueError, match="config"):
        other.resume()


def test_init_from_loads_weights_and_rejects_other_models(tmp_path, reference):
    run_dir, _, ref_state = reference
    trainer = make_trainer(tmp_path, 10, seed=77)
    trainer.init_from(run_dir / MODEL_NAME)
    state = trainer.learner.state_dict()
    assert trainer.iteration == 0
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    maml = make_trainer(tmp_path / "maml", 10, method="maml")
    with pytest.raises(ValueError, match="different model"):
        maml.init_from(run_dir / MODEL_NAME)


def test_model_file_is_small_and_holds_no_optimizer(reference):
    run_dir, _, _ = reference
    obj = load_file(run_dir / MODEL_NAME)
    assert set(obj) == {"config", "state_dict", "iteration", "extra"}
    assert obj["iteration"] == 10
    json.dumps(obj["config"])
    assert os.path.getsize(run_dir / MODEL_NAME) < 2_000_000


def test_time_limit_finishes_early_with_a_model(tmp_path):
    trainer = make_trainer(tmp_path, 1000)
    trainer.settings.time_limit = 1e-6
    result = trainer.fit()
    assert result.completed and result.time_limited and result.iteration == 1
    assert load_file(tmp_path / MODEL_NAME)["iteration"] == 1


def test_grad_norm_clipped_per_network(tmp_path):
    trainer = make_trainer(tmp_path, 1)
    trainer.settings.grad_clip = 1e-3
    trainer.step()
    groups = trainer.learner.parameter_groups()
    assert len([g for g in groups.values() if g]) >= 2
    for name, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            assert norm <= 1e-3 * (1 + 1e-4), name


def _norm(params):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


@pytest.mark.parametrize("how", ["per-network", "authors-code"])
def test_clip_groups_encoder_and_heads_jointly_or_separately(tmp_path, how):
    """authors-code clips encoder + modulation heads as one group (joint norm = clip),
    per-network each on its own (each norm = clip, so the joint one is sqrt(2) * clip)."""
    trainer = make_trainer(tmp_path, 1)
    trainer.settings.grad_clip, trainer.settings.clip_groups = 1e-3, how
    trainer.step()
    groups = trainer.learner.parameter_groups()
    joint = _norm(groups["encoder"] + groups["modulation"])
    want = 1e-3 if how == "authors-code" else 1e-3 * 2**0.5
    assert joint == pytest.approx(want, rel=1e-3)
    assert _norm(groups["base"]) == pytest.approx(1e-3, rel=1e-3)


def test_clip_groups_rejects_unknown():
    with pytest.raises(ValueError, match="clip_groups must be one of"):
        TrainSettings(10, clip_groups="joint")


def _poisoned(trainer, bad_calls):
    """Make the trainer's batches carry a NaN target on the given sampler calls."""
    sample, calls = trainer.sample_batch, [0]

    def poisoned(gen):
        calls[0] += 1
        batch = sample(gen)
        if calls[0] in bad_calls:
            batch.query_y[0, 0, 0] = float("nan")
        return batch

    trainer.sample_batch = poisoned


def test_nonfinite_iteration_is_skipped(tmp_path):
    trainer = make_trainer(tmp_path, 6)
    _poisoned(trainer, {4})
    before = {}

    def snapshot(*_):
        if trainer.iteration == 3:
            before.update({k: v.clone() for k, v in trainer.learner.state_dict().items()})

    trainer.sample_batch = (lambda f: lambda gen: (snapshot(), f(gen))[1])(trainer.sample_batch)
    original_step = trainer.step

    def step():
        stats = original_step()
        if trainer.iteration == 4:  # the poisoned iteration changed nothing
            for k, v in trainer.learner.state_dict().items():
                torch.testing.assert_close(v, before[k], rtol=0, atol=0)
        return stats

    trainer.step = step
    result = trainer.fit()
    assert result.completed and not result.diverged
    log = read_log(tmp_path / "log.jsonl")
    assert [r.get("nonfinite_skipped", 0) for r in log] == [0, 0, 0, 1, 1, 1]
    assert all(torch.isfinite(v).all() for v in trainer.learner.state_dict().values())


def test_persistent_nonfinite_stops_as_diverged_with_finite_checkpoint(tmp_path, monkeypatch):
    from mumo_fast.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_NONFINITE_STREAK", 3)
    trainer = make_trainer(tmp_path, 20, checkpoint_every=2)
    _poisoned(trainer, set(range(4, 100)))
    result = trainer.fit()
    assert result.diverged and not result.completed and result.iteration == 6
    ckpt = torch.load(tmp_path / "checkpoint.ckpt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (tmp_path / "model.pt").exists()


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "state.ckpt"
    atomic_save({"config": {}, "state_dict": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"config": {}, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["state.ckpt"]


def _poisoned_iterations(trainer, iterations):
    """NaN in the batch of the given iterations (counted from 1), resumed or not."""
    sample = trainer.sample_batch

    def poisoned(gen):
        batch = sample(gen)
        if trainer.iteration + 1 in iterations:
            batch.query_y[0, 0, 0] = float("nan")
        return batch

    trainer.sample_batch = poisoned


def _interrupt_at(call):
    def hook(c):
        if c == call:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_resume_keeps_nonfinite_count(tmp_path):
    """A run killed after a skipped iteration and resumed logs the same nonfinite_skipped
    (and losses) as one that was not."""
    whole = make_trainer(tmp_path / "whole", 8)
    _poisoned_iterations(whole, {3})
    assert whole.fit().completed
    want = read_log(tmp_path / "whole" / "log.jsonl")
    assert [r.get("nonfinite_skipped", 0) for r in want] == [0, 0, 1, 1, 1, 1, 1, 1]

    first = make_trainer(tmp_path / "cut", 8, hook=_interrupt_at(5))
    _poisoned_iterations(first, {3})
    assert first.fit().iteration == 5
    second = make_trainer(tmp_path / "cut", 8, seed=9)
    _poisoned_iterations(second, {3})
    second.resume()
    assert second.nonfinite_skipped == 1
    assert second.fit().completed
    got = read_log(tmp_path / "cut" / "log.jsonl")
    drop = ("sec_per_iter",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == [
        {k: v for k, v in r.items() if k not in drop} for r in want
    ]


def test_resume_keeps_the_nonfinite_streak(tmp_path, monkeypatch):
    """The stop-on-divergence counter goes on across a resume: three non-finite iterations
    in a row stop the run whether or not it was killed after the second."""
    from mumo_fast.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MAX_NONFINITE_STREAK", 3)
    bad = {3, 4, 5, 6, 7}
    whole = make_trainer(tmp_path / "whole", 10)
    _poisoned_iterations(whole, bad)
    assert whole.fit().diverged and whole.iteration == 5

    first = make_trainer(tmp_path / "cut", 10, hook=_interrupt_at(4))
    _poisoned_iterations(first, bad)
    assert first.fit().iteration == 4
    second = make_trainer(tmp_path / "cut", 10)
    _poisoned_iterations(second, bad)
    second.resume()
    result = second.fit()
    assert result.diverged and result.iteration == 5
    assert read_log(tmp_path / "cut" / "log.jsonl")[-1]["nonfinite_skipped"] == 3


def test_atomic_save_syncs_the_file_then_the_folder(tmp_path, monkeypatch):
    """Durable: the temporary file's data reach the disk before the rename, and the folder
    (the rename itself) right after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        events.append(("fsync", kind, st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    atomic_save({"config": {}, "state_dict": {"w": torch.randn(3)}}, tmp_path / "a.ckpt")
    monkeypatch.undo()
    file_ino = os.stat(tmp_path / "a.ckpt").st_ino
    assert events == [
        ("fsync", "file", file_ino),
        ("replace", file_ino),
        ("fsync", "dir", os.stat(tmp_path).st_ino),
    ]


def test_load_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        load_file(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a mumo_fast"):
        load_file(tmp_path / "junk.pt")


def test_mean_ci95():
    values = torch.randn(400, dtype=torch.float64) * 2 + 3
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(values.mean().item(), abs=1e-12)
    assert ci == pytest.approx(1.96 * values.std().item() / 20, rel=1e-9)
    assert mean_ci95(torch.tensor([4.0])) == (4.0, 0.0)


def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from mumo_fast.train import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(1, loss=2.5, note="text values stay out of TensorBoard")
    logger.log(2, loss=1.5)
    logger.close()
    assert [r["loss"] for r in read_log(tmp_path / "log.jsonl")] == [2.5, 1.5]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_summary_median_counts_diverged_tasks_as_worst():
    from mumo_fast.train.evaluation import summarize

    per_step = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.1, 0.2, float("nan"), float("inf")]])
    s = summarize(per_step, 1)
    assert s["post_modulation"]["median"] == 2.5
    # 0.1, 0.2 and two diverged tasks: the median lies between 0.2 and a diverged task
    assert s["post_adaptation"]["median"] == float("inf")
    s = summarize(torch.tensor([[1.0, 5.0, 3.0], [0.3, float("nan"), 0.1]]), 1)
    assert s["post_adaptation"]["median"] == pytest.approx(0.3)  # not 0.2, NaN dropped
