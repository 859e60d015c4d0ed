"""`mumo-fast` end to end on a tiny budget: train, eval, plot, load + predict, Ctrl-C, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mumo_fast
from mumo_fast.cli import main
from mumo_fast.domains.regression.data import to_task_batch
from mumo_fast.domains.regression.tasks import fixed_test_set

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "4", "--tasks-per-mode", "2", "--test-tasks-per-mode", "30"]
TINY += ["--quiet", "--no-tensorboard"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    film, maml = base / "film", base / "maml"
    assert main(["train", "regression", "--out", str(film), "--seed", "3", *TINY]) == 0
    assert main(["train", "regression", "--method", "maml", "--out", str(maml), *TINY]) == 0
    return film, maml


def test_train_writes_model_metrics_and_figures(runs):
    film, maml = runs
    for run, figs in ((film, {"functions.png", "mse_vs_steps.png", "tsne.png"}),
                      (maml, {"functions.png", "mse_vs_steps.png"})):  # fmt: skip
        assert {"run.json", "model.pt", "checkpoint.ckpt", "log.jsonl", "metrics.json"} <= set(
            os.listdir(run)
        )
        assert set(os.listdir(run / "figures")) == figs
        m = json.loads((run / "metrics.json").read_text())
        assert m["num_tasks"] == 60 and len(m["per_step"]["mean"]) == 11
        assert m["post_modulation"]["mean"] == m["per_step"]["mean"][0]
        assert m["post_adaptation"]["mean"] == m["per_step"]["mean"][5]
        assert 0 < m["post_adaptation"]["ci95"] < m["post_adaptation"]["mean"]
        assert set(m["per_mode"]) == {"sinusoid", "linear"}
    run = json.loads((film / "run.json").read_text())
    assert run["seed"] == 3 and run["method"] == "mumomaml" and run["modulation"] == "film"


def test_load_and_predict_match_metrics(runs):
    film, _ = runs
    model = mumo_fast.load(film)
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    same = mumo_fast.load(film / "model.pt")
    tasks = fixed_test_set(2, 30)
    sub = tasks.select(torch.randperm(60)[:20])
    preds = model.predict(sub.support_x, sub.support_y, sub.query_x, steps=5, modes=sub.modes)
    assert preds.shape == sub.query_y.shape
    again = same.predict(sub.support_x, sub.support_y, sub.query_x, steps=5, modes=sub.modes)
    torch.testing.assert_close(preds, again, rtol=0, atol=0)
    mse = ((preds - sub.query_y) ** 2).mean((1, 2))
    per_step = model.evaluate(to_task_batch(sub), 5)["per_step"]
    torch.testing.assert_close(mse, per_step[5], rtol=1e-4, atol=1e-4)
    full = model.evaluate(to_task_batch(tasks), 5)["per_step"]
    m = json.loads((film / "metrics.json").read_text())
    assert full[0].mean().item() == pytest.approx(m["post_modulation"]["mean"], rel=1e-4)
    assert full[5].mean().item() == pytest.approx(m["post_adaptation"]["mean"], rel=1e-4)


def test_eval_and_plot_several_runs(runs, tmp_path, capsys):
    film, maml = runs
    (film / "metrics.json").unlink()
    assert main(["eval", str(maml), str(film)]) == 0
    out = capsys.readouterr().out
    assert "MAML" in out and "MuMoMAML (FiLM)" in out and "post-adapt" in out
    assert (film / "metrics.json").is_file()
    assert main(["plot", str(maml), str(film), "--out", str(tmp_path / "cmp")]) == 0
    assert set(os.listdir(tmp_path / "cmp")) == {"mse_vs_steps.png", "functions_2modes.png"}


def test_eval_on_a_larger_test_set(runs, capsys):
    film, _ = runs
    assert main(["eval", str(film), "--test-tasks-per-mode", "45"]) == 0
    m = json.loads((film / "metrics.json").read_text())
    assert m["num_tasks"] == 90 and m["test_tasks_per_mode"] == 45
    model = mumo_fast.load(film)
    full = model.evaluate(to_task_batch(fixed_test_set(2, 45)), 5)["per_step"]
    assert full[5].mean().item() == pytest.approx(m["post_adaptation"]["mean"], rel=1e-4)
    assert main(["eval", str(film), "--test-tasks-per-mode", "0"]) == 2
    assert "test tasks per mode must be a positive int" in capsys.readouterr().err
    assert main(["eval", str(film)]) == 0  # back to the run's own 30 per mode
    assert json.loads((film / "metrics.json").read_text())["num_tasks"] == 60


def test_authors_architecture_is_recorded_and_checked_on_resume(tmp_path, capsys):
    out = tmp_path / "lstm"
    arch = ["--encoder", "lstm", "--encoder-layers", "2", "--modulation-head", "linear"]
    assert main(["train", "regression", "--out", str(out), *arch, *TINY, "--skip-eval"]) == 0
    learner = json.loads((out / "run.json").read_text())["learner"]
    assert learner["encoder"] == "lstm" and learner["encoder_layers"] == 2
    assert learner["modulation_hidden"] is None
    model = mumo_fast.load(out)
    assert isinstance(model.encoder.rnn, torch.nn.LSTM) and model.encoder.rnn.num_layers == 2
    assert all(isinstance(m, torch.nn.Linear) for m in model.modulation.heads)
    resume = ["train", "regression", "--out", str(out), "--resume", "--quiet", "--skip-eval"]
    assert main([*resume, "--encoder", "gru"]) == 2
    assert "started with encoder='lstm'" in capsys.readouterr().err
    assert main([*resume, "--modulation-head", "mlp"]) == 2
    assert "started with modulation_head='linear'" in capsys.readouterr().err


def test_resume_extends_and_init_from(runs, tmp_path):
    film, _ = runs
    assert main(["train", "regression", "--out", str(film), "--resume", "--iterations", "6",
                 "--quiet", "--no-tensorboard", "--skip-eval"]) == 0  # fmt: skip
    assert json.loads((film / "run.json").read_text())["train"]["iterations"] == 6
    assert [r["iteration"] for r in map(json.loads, open(film / "log.jsonl"))][-1] == 6
    new = tmp_path / "warm"
    args = ["train", "regression", "--out", str(new), "--init-from", str(film), "--skip-eval"]
    assert main([*args, *TINY]) == 0
    assert (new / "model.pt").is_file()


@pytest.mark.parametrize(
    "flag, value, other, section, key",
    [
        ("--task-family", "authors-code", "spec", "data", "task_family"),
        ("--base-init", "authors-code", "torch", "learner", "base_init"),
        ("--grad-clip-groups", "authors-code", "per-network", "train", "clip_groups"),
    ],
)
def test_setting_is_recorded_and_checked_on_resume(
    tmp_path, capsys, flag, value, other, section, key
):
    out = tmp_path / "run"
    assert main(["train", "regression", "--out", str(out), flag, value, *TINY, "--skip-eval"]) == 0
    assert json.loads((out / "run.json").read_text())[section][key] == value
    resume = ["train", "regression", "--out", str(out), "--resume", "--quiet", "--skip-eval"]
    assert main([*resume, flag, other]) == 2
    err = capsys.readouterr().err
    assert f"started with {key}" in err and value in err
    assert main([*resume, flag, value, "--iterations", "5"]) == 0


def test_cli_resume_reproduces_uninterrupted_run(tmp_path):
    common = ["--tasks-per-mode", "2", "--quiet", "--no-tensorboard", "--skip-eval"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "regression", "--out", str(whole), "--iterations", "6", *common]) == 0
    assert main(["train", "regression", "--out", str(split), "--iterations", "3", *common]) == 0
    args = ["train", "regression", "--out", str(split), "--resume", "--iterations", "6", *common]
    assert main(args) == 0
    a = torch.load(whole / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(split / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_saves_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "mumo_fast.cli", "train", "regression", "--out", str(run),
           "--iterations", "100000", "--tasks-per-mode", "2", "--quiet", "--no-tensorboard",
           "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (run / "log.jsonl").is_file() or not (run / "log.jsonl").read_text().strip():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in out
    ckpt = torch.load(run / "checkpoint.ckpt", weights_only=False)
    assert ckpt["iteration"] >= 10
    assert not (run / "model.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "regression", "--method", "maml", "--modulation", "film"], "--modulation"),
        (["train", "regression", "--resume"], "holds no checkpoint.ckpt"),
        (["train", "regression", "--iterations", "0"], "--iterations must be positive"),
        (["train", "regression", "--init-from", "/nonexistent/ckpt"], "--init-from"),
        (
            ["train", "regression", "--device", "cuda:0"]
            if not torch.cuda.is_available()
            else ["train", "regression", "--device", "nonsense"],
            "--device",
        ),  # fmt: skip
        (["train", "regression", "--threads", "0"], "--threads"),
        (["train", "regression", "--method", "maml", "--encoder", "lstm"], "--encoder applies"),
        (["train", "regression", "--encoder-layers", "0"], "encoder_layers must be an int >= 1"),
    ],
)
def test_bad_train_arguments(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_run_folders_and_choices(runs, tmp_path, capsys):
    film, _ = runs
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["train", "regression", "--out", str(film), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "regression", "--out", str(film), "--resume", "--method", "maml"]) == 2
    assert "started with method='mumomaml'" in capsys.readouterr().err
    assert (
        main(["train", "regression", "--out", str(film), "--resume", "--tasks-per-mode", "9"]) == 2
    )
    assert "started with tasks_per_mode=2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "regression", "--modes", "4", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        mumo_fast.load(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_trains_the_same_model(tmp_path):
    """--compile runs the inner loop through torch.compile: the same training up to rounding,
    checked in float64, where rounding cannot hide a real difference.

    Measured (torch 2.14.1, this command, 3 iterations): in float64 the compiled run's
    parameters differ from eager by at most 9e-16, and an eager run whose initial weights
    are perturbed by one ulp (relative 2.2e-16) differs from eager by up to 2.5e-14.  In
    float32 the same one-ulp perturbation moves eager training by up to 5.2e-5 (Adam's
    first steps divide small gradients by their own magnitude), more than the compiled
    run's 1.7e-5, so a float32 comparison can only test a tolerance, not the compiler.
    The tolerance below is 40x the float64 perturbation's effect."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # (reset keeps them)
    common = ["--iterations", "3", "--tasks-per-mode", "2", "--quiet", "--no-tensorboard"]
    common += ["--skip-eval", "--seed", "5"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert main(["train", "regression", "--out", str(eager), *common]) == 0
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
        assert main(["train", "regression", "--out", str(compiled), "--compile", *common]) == 0
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    finally:
        torch.set_default_dtype(default)
        torch._dynamo.reset()
    a = torch.load(eager / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(compiled / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float64, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12, msg=k)


def test_runs_of_the_spec_family_resume_as_random_frequency(tmp_path, capsys):
    """``spec``, the random-frequency family's former name: accepted on the command line
    (recorded under the current name) and in the run.json of older runs."""
    out = tmp_path / "run"
    assert main(["train", "regression", "--out", str(out), "--task-family", "spec", *TINY,
                 "--skip-eval"]) == 0  # fmt: skip
    path = out / "run.json"
    run = json.loads(path.read_text())
    assert run["data"]["task_family"] == "random-frequency"
    run["data"]["task_family"] = "spec"  # as older runs recorded it
    path.write_text(json.dumps(run))
    resume = ["train", "regression", "--out", str(out), "--resume", "--quiet", "--skip-eval"]
    assert main([*resume, "--task-family", "random-frequency", "--iterations", "5"]) == 0
    assert main([*resume, "--task-family", "authors-code", "--iterations", "6"]) == 2
    assert "started with task_family" in capsys.readouterr().err
