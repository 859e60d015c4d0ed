#!/usr/bin/env python
"""Collect the Table 1 runs (scripts/table1.sh) into RESULTS.md, beside the paper's numbers.

For each run folder under the runs folder (default results/regression/) it uses
metrics.json when it is up to date with the run's model file, else evaluates the model
(model.pt, or the latest checkpoint of an unfinished run) on the fixed test tasks. It also
draws the comparison figures (paper Fig. 2 and 3a) into <runs folder>/figures/. Only the
block between this runs folder's markers in RESULTS.md is rewritten.

    python scripts/collect_table1.py [--no-eval] [--no-plot]
    python scripts/collect_table1.py --runs results/regression_authors_tasks
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS_DIR = ROOT / "results" / "regression"  # --runs
ROWS = [  # (run prefix, label, paper 2 modes (post-mod, post-adapt), paper 3 modes)
    ("maml", "MAML", (15.9255, 1.0852), (12.5994, 1.1633)),
    ("multimaml", "Multi-MAML (ground-truth modes)", (16.2894, 0.4330), (12.3742, 0.7791)),
    ("softmax", "MuMoMAML, softmax", (3.9140, 0.4795), (0.6889, 0.4884)),
    ("sigmoid", "MuMoMAML, sigmoid", (1.4992, 0.3414), (2.4047, 0.4414)),
    ("film", "MuMoMAML, FiLM", (1.7094, 0.3125), (1.9234, 0.4048)),
]
# Rows of one method trained with a setting other than the table's, as extra rows beneath it:
# (run prefix, run-name suffix, label). Run folders: {prefix}_{modes}modes{suffix}[_seedN].
VARIANTS = [
    ("film", "_authors_init", "MuMoMAML, FiLM, authors' base init (`--base-init authors-code`)"),
    (
        "film",
        "_lstm2_linear",
        "MuMoMAML, FiLM, authors' encoder and heads (2-layer LSTM, linear heads)",
    ),
    (
        "film",
        "_authors_clip",
        "MuMoMAML, FiLM, authors' gradient clip (`--grad-clip-groups authors-code`)",
    ),
]
FAMILY_TEXT = {
    "random-frequency": "the random-frequency task family (`--task-family random-frequency`, "
    "the default: sinusoids `A sin(w x + b)` with a random frequency w in [0.5, 2])",
    "authors-code": "the authors' released code's task family (`--task-family authors-code`: "
    "sinusoids `A sin(x - phi)` of frequency 1, phase in [0, pi]; the other modes as in the random-frequency family)",
}


def markers(runs_dir: Path) -> tuple[str, str]:
    tag = "regression-table1" + ("" if runs_dir.name == "regression" else f"-{runs_dir.name}")
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def test_size(m: dict) -> int:
    """Test tasks per mode behind a metrics.json (older files did not record it)."""
    return m.get("test_tasks_per_mode") or m["num_tasks"] // m["run"]["num_modes"]


def metrics_for(run_dir: Path, evaluate: bool, test_tasks_per_mode: int | None) -> dict | None:
    from mumo_fast.domains.regression.run import evaluate_run
    from mumo_fast.train import load_file, resolve_model_path

    try:
        model_file = resolve_model_path(run_dir)
    except FileNotFoundError:
        return None
    path = run_dir / "metrics.json"
    if path.is_file():
        m = json.loads(path.read_text())
        if (
            m["run"].get("model_file") == model_file.name
            and m["run"].get("trained_iterations") == load_file(model_file).get("iteration")
            and test_tasks_per_mode in (None, test_size(m))
            and "median" in m["post_adaptation"]  # (older metrics.json lack it)
        ):
            return m
    if not evaluate:
        return None
    print(f"evaluating {run_dir.name} ({model_file.name})", flush=True)
    return evaluate_run(run_dir, test_tasks_per_mode=test_tasks_per_mode)


def number(v: float) -> str:
    """4 decimals; huge or non-finite means (a diverged inner loop) in scientific form."""
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}"


def cell(m: dict | None, key: str) -> str:
    if m is None:
        return "-"
    return f"{number(m[key]['mean'])} ± {number(m[key]['ci95'])}"


def trained(m: dict) -> int:
    """Meta-iterations behind the evaluated model (older metrics.json lack the field)."""
    return m["run"].get("trained_iterations") or m["run"]["iterations"]


def finished(m: dict | None) -> bool:
    """Whether the metrics are of a final model.pt trained for the run's whole budget (not a
    checkpoint, nor a run a time limit stopped early)."""
    return (
        m is not None
        and m["run"].get("model_file") == "model.pt"
        and trained(m) >= m["run"]["iterations"]
    )


def budget(m: dict | None) -> str:
    if m is None:
        return "not run"
    note = "" if m["run"].get("model_file") == "model.pt" else " (unfinished, checkpoint)"
    return f"{trained(m):,}{note}"


def seed_runs(names, prefix: str, modes: int, suffix: str = "") -> list[tuple[int, str]]:
    """(seed, run name) of a table row: ``{prefix}_{modes}modes{suffix}`` is seed 0,
    further seeds are ``{prefix}_{modes}modes{suffix}_seed{N}``."""
    base = f"{prefix}_{modes}modes{suffix}"
    runs = [(0, base)] if base in names else []
    for name in names:
        tail = name[len(base) + len("_seed") :]
        if name.startswith(base + "_seed") and tail.isdigit():
            runs.append((int(tail), name))
    return sorted(runs)


def median(m: dict | None) -> str:
    return "-" if m is None else number(m["post_adaptation"]["median"])


def table(results: dict) -> str:
    lines = [
        "| method | modes | seed | iterations (paper: 70,000) | post-mod MSE (ours) "
        "| post-mod (paper) | post-adapt MSE (ours) | post-adapt median (ours) "
        "| post-adapt (paper) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for modes in (2, 3):
        for prefix, label, p2, p3 in ROWS:
            paper = p2 if modes == 2 else p3
            runs = seed_runs(results, prefix, modes) or [(0, f"{prefix}_{modes}modes")]
            lines += _rows(results, label, modes, runs, paper)
            for vprefix, suffix, vlabel in VARIANTS:
                if vprefix == prefix:
                    runs = [r for r in seed_runs(results, prefix, modes, suffix) if results[r[1]]]
                    lines += _rows(results, vlabel, modes, runs, paper)
    return "\n".join(lines)


def _rows(results: dict, label: str, modes: int, runs, paper) -> list[str]:
    """One row per seed, and a mean over the finished seeds where there are two or more
    (an unfinished run has its own row, never a share of the mean)."""
    lines = []
    for seed, name in runs:
        m = results.get(name)
        lines.append(
            f"| {label} | {modes} | {seed} | {budget(m)} | {cell(m, 'post_modulation')} "
            f"| {paper[0]:.4f} | {cell(m, 'post_adaptation')} | {median(m)} "
            f"| {paper[1]:.4f} |"
        )
    done = [results[n] for _, n in runs if finished(results.get(n))]
    if len(done) > 1:
        pm = sum(m["post_modulation"]["mean"] for m in done) / len(done)
        pa = sum(m["post_adaptation"]["mean"] for m in done) / len(done)
        lines.append(
            f"| {label} | {modes} | mean of {len(done)} | - | {number(pm)} | {paper[0]:.4f} "
            f"| {number(pa)} | - | {paper[1]:.4f} |"
        )
    return lines


def plot(results: dict, runs_dir: Path) -> list[str]:
    import mumo_fast
    from mumo_fast.domains.regression import figures
    from mumo_fast.domains.regression.presets import run_label
    from mumo_fast.domains.regression.run import _example_tasks, read_run

    out = runs_dir / "figures"
    out.mkdir(exist_ok=True)
    written = []
    for modes in (2, 3):
        names = [f"{p}_{modes}modes" for p, *_ in ROWS]
        names = [n for n in names if results.get(n) is not None]
        if not names:
            continue
        curves = [(run_label(read_run(runs_dir / n)), results[n]) for n in names]
        figures.plot_steps(curves, out / f"mse_vs_steps_{modes}modes.png")
        written.append(f"figures/mse_vs_steps_{modes}modes.png")
        fig2 = [
            n
            for n in (f"maml_{modes}modes", f"multimaml_{modes}modes", f"film_{modes}modes")
            if n in names
        ]
        run = read_run(runs_dir / fig2[0])
        models = [(run_label(read_run(runs_dir / n)), mumo_fast.load(runs_dir / n)) for n in fig2]
        figures.plot_functions(
            models, _example_tasks(run), run["mode_names"], run["eval"]["adapt_steps"],
            out / f"functions_{modes}modes.png",
        )  # fmt: skip
        written.append(f"figures/functions_{modes}modes.png")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-eval", action="store_true", help="use existing metrics.json only")
    parser.add_argument("--no-plot", action="store_true", help="skip the comparison figures")
    parser.add_argument("--results", default=str(ROOT / "RESULTS.md"))
    parser.add_argument("--runs", default=str(RUNS_DIR), help="folder of the run folders")
    parser.add_argument(
        "--test-tasks-per-mode", type=int,
        help="evaluate every run on this many fixed test tasks per mode (default: each run's own)",
    )  # fmt: skip
    args = parser.parse_args()
    runs_dir = Path(args.runs).resolve()
    import torch

    torch.set_num_threads(1)
    results = {}
    names = sorted(p.parent.name for p in runs_dir.glob("*/run.json"))
    kinds = [(prefix, "") for prefix, *_ in ROWS] + [(p, sfx) for p, sfx, _ in VARIANTS]
    for prefix, suffix in kinds:
        for modes in (2, 3):
            for _, name in seed_runs(names, prefix, modes, suffix):
                results[name] = metrics_for(
                    runs_dir / name, not args.no_eval, args.test_tasks_per_mode
                )
    if not results:
        raise SystemExit(f"no runs in {runs_dir}")
    from mumo_fast.domains.regression.run import read_run, task_family

    families = {task_family(read_run(runs_dir / n)) for n in results}
    if len(families) != 1:
        raise SystemExit(f"{runs_dir} mixes task families: {sorted(families)}")
    (family,) = families
    sizes = {test_size(m) for m in results.values() if m is not None}
    if len(sizes) != 1:
        raise SystemExit(f"{runs_dir}: runs evaluated on different test-set sizes {sorted(sizes)}")
    (size,) = sizes
    figs = [] if args.no_plot else plot(results, runs_dir)
    start, end = markers(runs_dir)
    rel = runs_dir.relative_to(ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir
    block = "\n".join(
        [
            start,
            f"### Table 1, task family `{family}` (`{rel}/`)",
            "",
            f"Test MSE on the fixed test set ({size:,} tasks per mode, seeded; K = 5 support, "
            "L = 10 query points, noise sigma 0.3, so the floor is 0.09), mean ± 95% CI "
            "over tasks. Post-modulation = 0 inner steps; post-adaptation = 5 steps. Paper "
            "settings (`--preset paper`: inner lr 0.001, 5 steps, Adam 1e-3, grad-norm clip 2.0 "
            "per network, 25 tasks per mode, second order, inner-gradient clamp 10 for MuMoMAML) "
            "except the number of meta-iterations, given beside each row (the paper trained "
            f"70,000). Tasks: {FAMILY_TEXT[family]}. One run per row and seed (`seed`: the "
            "run's `--seed`, which seeds the weights and the training tasks; the test set is "
            "the same for all); the median is over test tasks (heavy-tailed, see below). Each run's "
            "`run.json` has its settings, `log.jsonl` its training curve, `model.pt` its weights. "
            "Commands: `scripts/table1.sh` (see below); this table: "
            f"`python scripts/collect_table1.py --runs {rel}`.",
            "",
            table(results),
            "",
            *(f"![{f}]({rel}/{f})" for f in figs),
            end,
        ]
    )
    path = Path(args.results)
    text = path.read_text() if path.is_file() else "# Results\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(table(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
