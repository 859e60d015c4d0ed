"""`mumo-fast train/eval/plot` on the navigation domain, end to end on a tiny problem
(2 goals per meta-batch, 3 trajectories of 10 steps): logs, checkpoints, exact resume,
metrics, figures, and `mumo_fast.load` giving an agent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mumo_fast
from mumo_fast.cli import main
from mumo_fast.domains.navigation.learner import NavigationLearner
from mumo_fast.train import load_file

TINY = ["--tasks", "2", "--trajectories", "3", "--horizon", "10", "--test-goals", "4"]
COMMON = ["--quiet", "--no-tensorboard", "--threads", "1"]


def _train(out, method, iterations, *extra):
    argv = ["train", "navigation", "--method", method, "--out", str(out), *TINY, *COMMON]
    return main([*argv, "--iterations", str(iterations), *extra])


@pytest.mark.parametrize("method", ["mumomaml", "maml"])
def test_train_resume_eval(tmp_path, method, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _train(whole, method, 3, "--skip-eval") == 0
    assert _train(split, method, 2, "--skip-eval") == 0
    assert _train(split, method, 2, "--skip-eval") == 2  # the folder holds a run
    assert _train(split, method, 3, "--skip-eval", "--resume") == 0
    a, b = load_file(whole / "model.pt"), load_file(split / "model.pt")
    assert a["iteration"] == b["iteration"] == 3
    for k in a["state_dict"]:  # resuming continues exactly
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and 0 <= r["kl"] <= 0.01 for r in log)
    run = json.loads((split / "run.json").read_text())
    assert run["domain"] == "navigation" and run["train"]["learner_steps"] is True
    assert run["learner"]["inner_lr"] == (0.01 if method == "mumomaml" else 0.03)
    assert run["learner"]["discount"] == (0.99 if method == "mumomaml" else 0.95)

    capsys.readouterr()
    assert main(["eval", str(split), str(whole)]) == 0
    table = capsys.readouterr().out
    assert "pre-modulation" in table and "3 steps" in table
    metrics = json.loads((split / "metrics.json").read_text())
    assert metrics["stages"][:3] == ["pre-modulation", "post-modulation", "1 step"]
    assert len(metrics["per_goal"][0]) == 4 and len(metrics["per_step"]["mean"]) == 4
    if method == "maml":  # no modulation: the same policy and rollouts
        assert metrics["per_goal"][0] == metrics["per_goal"][1]
    # the same fixed goals and rollout noise for every evaluation
    again = json.loads((whole / "metrics.json").read_text())
    assert len(again["per_goal"][0]) == 4


def test_plot_and_load_an_agent(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "mumomaml", 1, "--skip-eval") == 0
    assert main(["plot", str(out)]) == 0
    for name in ("trajectories.png", "returns_vs_steps.png", "tsne.png"):
        assert (out / "figures" / name).stat().st_size > 0
    agent = mumo_fast.load(out)
    assert isinstance(agent, NavigationLearner) and not agent.training
    agent.adapt((0.5, 0.5), steps=1, seed=0)
    assert agent.act(np.zeros(2, np.float32)).shape == (2,)


def test_bad_arguments(tmp_path, capsys):
    assert _train(tmp_path / "a", "maml", 1, "--compile") == 2
    assert "--compile" in capsys.readouterr().err
    argv = ["train", "navigation", "--out", str(tmp_path / "b"), "--tasks", "0", *COMMON]
    assert main(argv) == 2
