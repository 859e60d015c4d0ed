"""The Table 1 scripts on tiny runs: collect_table1.py (the RESULTS.md block, the test-set
size it states, re-evaluation on a larger fixed test set) and task_error_tail.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mumo_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "3", "--tasks-per-mode", "2", "--test-tasks-per-mode", "12"]
TINY += ["--quiet", "--no-tensorboard", "--skip-eval"]


def _collect(runs: Path, results: Path, *extra: str) -> str:
    cmd = [sys.executable, str(ROOT / "scripts" / "collect_table1.py"), "--runs", str(runs),
           "--results", str(results), "--no-plot", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return results.read_text()


def test_collect_writes_the_table_and_reevaluates_on_request(tmp_path):
    runs = tmp_path / "regression_tiny"
    assert main(["train", "regression", "--out", str(runs / "film_2modes"), *TINY]) == 0
    assert main(["train", "regression", "--method", "maml", "--out", str(runs / "maml_2modes"),
                 *TINY]) == 0  # fmt: skip
    assert main(["train", "regression", "--out", str(runs / "film_2modes_seed1"), "--seed", "1",
                 *TINY]) == 0  # fmt: skip
    assert main(["train", "regression", "--out", str(runs / "film_2modes_authors_init"),
                 "--base-init", "authors-code", *TINY]) == 0  # fmt: skip
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept text\n")
    text = _collect(runs, results)
    assert "kept text" in text and "<!-- regression-table1-regression_tiny:start -->" in text
    assert "(12 tasks per mode" in text
    assert "| MuMoMAML, FiLM | 2 | 0 | 3 |" in text and "| MAML | 2 | 0 | 3 |" in text
    assert "| MuMoMAML, sigmoid | 2 | 0 | not run |" in text
    # a second seed gets its own row and a mean over seeds; medians come from the metrics
    seeds = [json.loads((runs / n / "metrics.json").read_text())["post_adaptation"]
             for n in ("film_2modes", "film_2modes_seed1")]  # fmt: skip
    rows = [r for r in text.splitlines() if r.startswith("| MuMoMAML, FiLM | 2 |")]
    assert [r.split(" | ")[2] for r in rows] == ["0", "1", "mean of 2"]
    for row, m in zip(rows, seeds):
        assert row.split(" | ")[7] == f"{m['median']:.4f}" and m["median"] != m["mean"]
    mean = (seeds[0]["mean"] + seeds[1]["mean"]) / 2
    assert rows[2].split(" | ")[6] == f"{mean:.4f}"
    assert "| MAML | 2 | mean of" not in text
    # a seed a time limit stopped early gets its own row but no share of the mean
    assert main(["train", "regression", "--out", str(runs / "film_2modes_seed2"), "--seed", "2",
                 *TINY, "--iterations", "100000", "--time-limit", "0.01"]) == 0  # fmt: skip
    text = _collect(runs, results)
    rows = [r for r in text.splitlines() if r.startswith("| MuMoMAML, FiLM | 2 |")]
    assert [r.split(" | ")[2] for r in rows] == ["0", "1", "2", "mean of 2"]
    assert rows[3].split(" | ")[6] == f"{mean:.4f}"
    # a variant run (another setting of the same method) gets its own labelled row
    variant = [r for r in text.splitlines() if r.startswith("| MuMoMAML, FiLM, authors' base")]
    pa = json.loads((runs / "film_2modes_authors_init" / "metrics.json").read_text())
    assert len(variant) == 1 and variant[0].split(" | ")[1:3] == ["2", "0"]
    assert f"{pa['post_adaptation']['median']:.4f}" in variant[0]
    assert "authors' encoder and heads" not in text  # variants without runs get no row
    text = _collect(runs, results, "--test-tasks-per-mode", "40")
    assert "(40 tasks per mode" in text and "(12 tasks per mode" not in text
    assert text.count("regression-table1-regression_tiny:start") == 1
    metrics = json.loads((runs / "film_2modes" / "metrics.json").read_text())
    assert metrics["num_tasks"] == 80 and metrics["test_tasks_per_mode"] == 40


def test_number_format_for_diverged_means():
    sys.path.insert(0, str(ROOT / "scripts"))
    from collect_table1 import number

    assert number(0.33591) == "0.3359" and number(7.13e13) == "7.13e+13"
    assert number(float("nan")) == "nan" and number(float("inf")) == "inf"


def test_task_error_tail_matches_the_metrics(tmp_path):
    run = tmp_path / "film"
    assert main(["train", "regression", "--out", str(run), *TINY]) == 0
    assert main(["eval", str(run)]) == 0
    mean = json.loads((run / "metrics.json").read_text())["post_adaptation"]["mean"]
    cmd = [sys.executable, str(ROOT / "scripts" / "task_error_tail.py"), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cols = proc.stdout.splitlines()[-1].split()
    assert cols[0] == "film" and int(cols[1]) == 24
    assert float(cols[2]) == pytest.approx(mean, rel=1e-3)
    assert 0 < float(cols[5]) <= 1
    proc = subprocess.run([*cmd, "--worst", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listed = [line for line in proc.stdout.splitlines() if line.startswith("  task ")]
    assert len(listed) == 3
    largest = float(proc.stdout.splitlines()[1].split()[4])
    first = [float(v) for v in listed[0].split("steps: ")[1].split()]
    assert len(first) == 6 and first[-1] == pytest.approx(largest, rel=1e-2)  # the worst task
    assert all(
        float(a.split("steps: ")[1].split()[-1]) >= float(b.split("steps: ")[1].split()[-1])
        for a, b in zip(listed, listed[1:])
    )
