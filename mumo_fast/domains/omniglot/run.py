"""The Omniglot domain's commands: train, eval and plot on run folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ...train import load_learner
from .. import UsageError
from ..runs import (
    apply_run_overrides,
    check_train_args,
    check_unchanged,
    device_from,
    model_record,
    rank_share,
    read_metrics,
    read_run,
    train_run,
    training_seconds,
    write_metrics,
)
from . import figures
from .data import DataError, Omniglot, load_omniglot
from .episodes import TEST_EPISODES, EpisodeSampler
from .metrics import evaluate_learner
from .presets import (
    AGGREGATORS,
    METHODS,
    MODULATIONS,
    PRESETS,
    SHOTS,
    VALIDATION_EPISODES,
    WAYS,
    run_config,
    run_label,
    setting_label,
)

VALIDATION_SEED = 777
TSNE_EPISODES_PER_ALPHABET = 20


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, help="default: mumomaml")
    p.add_argument("--modulation", choices=MODULATIONS, help="mumomaml only; default: film")
    p.add_argument("--ways", type=int, choices=WAYS, help="classes per task; default: 5")
    p.add_argument("--shots", type=int, choices=SHOTS, help="examples per class; default: 1")
    p.add_argument(
        "--preset", choices=tuple(PRESETS),
        help="default: MAML's settings for 5,000 iterations; paper: 60,000 iterations",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, help="meta-iterations (overrides the preset)")
    p.add_argument(
        "--meta-batch", type=int, help="tasks per meta-batch (default: 32 for 5-way, 16 for 20-way)"
    )
    p.add_argument(
        "--aggregator", choices=AGGREGATORS,
        help="how the image encoder combines the support set: gru (default, the paper: a "
        "bidirectional GRU) or mean (the authors' code)",
    )  # fmt: skip
    p.add_argument(
        "--first-order", action="store_true", help="first-order MAML (default: second order)"
    )
    add_data_argument(p)


def add_data_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", metavar="DIR",
        help="Omniglot folder: the .npz form (images_background.npz, images_evaluation.npz, "
        "characters.csv) or the official images_background.zip and images_evaluation.zip "
        "(default: $MUMO_FAST_DATA; for eval and plot, the run's own)",
    )  # fmt: skip


# -- data --------------------------------------------------------------------------------
_DATA: dict[str, Omniglot] = {}


def _data(data_dir: str | None) -> Omniglot:
    try:
        key = str(data_dir)
        if key not in _DATA:
            _DATA[key] = load_omniglot(data_dir)
        return _DATA[key]
    except DataError as e:
        raise UsageError(str(e)) from e


def _sampler(run: dict[str, Any], split: str, device, data_dir: str | None) -> EpisodeSampler:
    data = _data(data_dir if data_dir is not None else run["data"].get("data_dir"))
    try:
        part = data.split(split)
    except DataError as e:
        raise UsageError(str(e)) from e
    return EpisodeSampler(part, run["ways"], run["shots"], run["data"]["queries"], device)


# -- train -------------------------------------------------------------------------------
def _run_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if not args.resume:
        method = args.method or "mumomaml"
        if args.modulation is not None and method != "mumomaml":
            raise UsageError(f"--modulation applies to --method mumomaml only (got {method})")
        if args.aggregator is not None and method != "mumomaml":
            raise UsageError(f"--aggregator applies to --method mumomaml only (got {method})")
        try:
            run = run_config(
                method, args.modulation or "film", args.ways or 5, args.shots or 1,
                args.preset or "default", iterations=args.iterations,
                meta_batch=args.meta_batch, seed=0 if args.seed is None else args.seed,
                aggregator=args.aggregator or "gru", first_order=args.first_order,
            )  # fmt: skip
        except ValueError as e:
            raise UsageError(str(e)) from e
    else:
        run = read_run(out)
        given = {
            "method": args.method, "modulation": args.modulation, "ways": args.ways,
            "shots": args.shots, "preset": args.preset, "seed": args.seed,
        }  # fmt: skip
        check_unchanged(run, given)
        check_unchanged(run["data"], {"meta_batch": args.meta_batch})
        learner = run["learner"]
        check_unchanged(
            {"aggregator": learner["encoder_aggregator"], "first_order": learner["first_order"]},
            {"aggregator": args.aggregator, "first_order": args.first_order or None},
        )
    apply_run_overrides(run, args)
    return run


def _validation(run: dict[str, Any], sampler: EpisodeSampler):
    """Accuracy on a fixed set of test-character episodes, logged during training (no
    model is chosen by it)."""
    episodes = sampler.fixed(VALIDATION_EPISODES, VALIDATION_SEED)
    steps = run["eval"]["adapt_steps"]

    def validate(learner) -> dict[str, float]:
        m = evaluate_learner(learner, sampler, episodes, steps)
        return {
            "post_mod_acc": m["post_modulation"]["mean"],
            "post_adapt_acc": m["post_adaptation"]["mean"],
        }

    return validate


def train(args: argparse.Namespace) -> int:
    check_train_args(args)
    device = device_from(args.device)
    run = _run_config(args, Path(args.out))
    data_dir = args.data_dir or run["data"].get("data_dir")
    train_sampler = _sampler(run, "train", device, data_dir)
    test_sampler = _sampler(run, "test", device, data_dir)
    run["data"]["data_dir"] = _data(data_dir).source
    meta_batch = rank_share(run["data"]["meta_batch"], "--meta-batch")  # (torchrun: a share)

    def sample(gen: torch.Generator):
        return train_sampler.sample(meta_batch, gen)

    def finish(learner) -> None:
        metrics = evaluate_run(args.out, device, learner, sampler=test_sampler)
        print_table([(Path(args.out), run, metrics)])
        plot_run(args.out, device, learner, metrics, sampler=test_sampler)

    validate = _validation(run, test_sampler)
    return train_run(args, run, sample, device, validate=validate, finish=finish)


# -- eval --------------------------------------------------------------------------------
def evaluate_run(
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    learner=None,
    *,
    sampler: EpisodeSampler | None = None,
    data_dir: str | None = None,
    episodes: int | None = None,
) -> dict:
    """Accuracy on the setting's 600 fixed test episodes, or the first ``episodes`` of
    them (written to metrics.json)."""
    if episodes is not None and not 1 <= episodes <= TEST_EPISODES:
        raise UsageError(f"--test-episodes must lie in [1, {TEST_EPISODES}], got {episodes}")
    run = read_run(run_dir)
    sampler = sampler if sampler is not None else _sampler(run, "test", device, data_dir)
    learner = learner if learner is not None else load_learner(run_dir, device)
    fixed = sampler.fixed().select(slice(0, episodes or TEST_EPISODES))
    metrics = evaluate_learner(learner, sampler, fixed, run["eval"]["adapt_steps"])
    metrics["run"] = {
        k: run[k] for k in ("method", "modulation", "ways", "shots", "preset", "seed")
    }
    metrics["run"].update(model_record(run_dir, run))
    metrics["run"]["training_seconds"] = training_seconds(run_dir)
    metrics["test_episodes"] = len(fixed)
    write_metrics(run_dir, metrics)
    return metrics


def print_table(rows) -> None:
    fmt = "{:<28} {:<16} {:<14} {:>7} {:>9}  {:>16}  {:>16}"
    print(
        fmt.format(
            "run", "method", "setting", "iters", "time", "post-mod acc %", "post-adapt acc %"
        )
    )
    for path, run, m in rows:
        pm, pa = m["post_modulation"], m["post_adaptation"]
        seconds = m["run"].get("training_seconds")
        print(
            fmt.format(
                Path(path).name[:28], run_label(run), setting_label(run),
                m["run"].get("trained_iterations") or run["train"]["iterations"],
                "?" if seconds is None else f"{seconds / 60:.0f} min",
                f"{pm['mean']:.2f} ± {pm['ci95']:.2f}",
                f"{pa['mean']:.2f} ± {pa['ci95']:.2f} ({m['adapt_steps']})",
            )
        )  # fmt: skip


def evaluate(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    rows = []
    for run_dir in args.runs:
        metrics = evaluate_run(run_dir, device, data_dir=args.data_dir, episodes=args.test_episodes)
        rows.append((Path(run_dir), read_run(run_dir), metrics))
    print_table(rows)
    return 0


# -- plot --------------------------------------------------------------------------------
def plot_run(
    run_dir: str | Path,
    device="cpu",
    learner=None,
    metrics=None,
    *,
    sampler: EpisodeSampler | None = None,
    data_dir: str | None = None,
) -> list[Path]:
    """The run's own figures, in RUN_DIR/figures."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    sampler = sampler if sampler is not None else _sampler(run, "test", device, data_dir)
    learner = learner if learner is not None else load_learner(run_dir, device)
    if metrics is None:
        metrics = read_metrics(run_dir) or evaluate_run(run_dir, device, learner, sampler=sampler)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    label = f"{run_label(run)}, {setting_label(run)}"
    paths = [out / "accuracy_vs_steps.png", out / "episode.png"]
    figures.plot_steps([(label, metrics)], paths[0])
    batch = sampler.batch(sampler.fixed(1))
    steps = run["eval"]["adapt_steps"]
    with torch.no_grad():
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=steps)
    figures.plot_episode(batch, logits, f"{label}: a test episode after {steps} steps", paths[1])
    if run["method"] == "mumomaml":
        episodes, alphabets = sampler.alphabet_episodes(TSNE_EPISODES_PER_ALPHABET)
        b = sampler.batch(episodes)
        emb = learner.embed(b.support_x, b.support_y)
        paths.append(out / "tsne.png")
        figures.plot_tsne(
            emb, alphabets, sampler.alphabet_names, paths[-1], seed=run["seed"],
            title=f"t-SNE of task embeddings by alphabet ({setting_label(run)})",
        )  # fmt: skip
    return paths


def plot(args: argparse.Namespace) -> int:
    device = device_from(args.device)
    runs = [(Path(r), read_run(r)) for r in args.runs]
    curves = []
    for path, run in runs:
        learner = load_learner(path, device)
        for p in plot_run(path, device, learner, data_dir=args.data_dir):
            print(p)
        metrics = read_metrics(path)
        curves.append((f"{run_label(run)}, {setting_label(run)} [{path.name}]", metrics))
    if len(runs) > 1:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figures.plot_steps(curves, out / "accuracy_vs_steps.png")
        print(out / "accuracy_vs_steps.png")
    return 0
