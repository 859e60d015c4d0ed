"""Run settings for Omniglot: MAML's (the paper's) and a shorter default.

A run's whole configuration is one JSON-serialisable dict (saved as run.json); the
learner part goes to ``MetaLearner.from_config``.
"""

from __future__ import annotations

from typing import Any

from ...meta.config import METHODS_WITHOUT_MODES as METHODS
from ...meta.modulation import MODULATIONS

AGGREGATORS = ("gru", "mean")
WAYS = (5, 20)
SHOTS = (1, 5)

# MAML's settings (Finn et al. 2017), which the paper kept: per N-way, the meta-batch,
# inner learning rate and inner steps in training and at test.
BY_WAYS = {
    5: {"meta_batch": 32, "inner_lr": 0.4, "inner_steps": 1, "eval_steps": 3},
    20: {"meta_batch": 16, "inner_lr": 0.1, "inner_steps": 5, "eval_steps": 5},
}
PAPER = {
    "iterations": 60_000,
    "lr": 1e-3,
    "grad_clip": None,  # MAML's code clips no meta-gradient
    "inner_grad_clamp": 20.0,  # MuMoMAML only (the authors' classification code)
    "first_order": False,
    "checkpoint_every": 250,
    "validate_every": 1000,
}
# The paper's settings for 5,000 meta-iterations (about 1.5 hours for 5-way 1-shot on
# two CPU cores).
DEFAULT = {**PAPER, "iterations": 5000, "validate_every": 500}
PRESETS = {"default": DEFAULT, "paper": PAPER}
VALIDATION_EPISODES = 100


def learner_config(
    method: str, modulation: str, ways: int, settings: dict[str, Any], aggregator: str
) -> dict[str, Any]:
    """The 4-block stride-2 CNN (64 channels, per-task batch norm, FiLM after it, ReLU)
    with a linear head to ``ways`` classes; MuMoMAML adds the image encoder (conv
    features with the one-hot label, aggregated by a bidirectional GRU or a mean) and a
    one-hidden-layer modulation head per block."""
    return {
        "base": "conv4",
        "in_channels": 1,
        "image_size": 28,
        "num_classes": ways,
        "conv_channels": 64,
        "num_blocks": 4,
        "method": method,
        "modulation": modulation,
        "encoder": "conv",
        "encoder_aggregator": aggregator,
        "inner_steps": settings["inner_steps"],
        "eval_steps": settings["eval_steps"],
        "inner_lr": settings["inner_lr"],
        "inner_grad_clamp": settings["inner_grad_clamp"] if method == "mumomaml" else None,
        "first_order": settings["first_order"],
        "loss": "cross_entropy",
        "input_range": [0.0, 1.0],  # images: background 0, ink 1
    }


def run_config(
    method: str,
    modulation: str,
    ways: int,
    shots: int,
    preset_name: str = "default",
    *,
    iterations: int | None = None,
    meta_batch: int | None = None,
    seed: int = 0,
    aggregator: str = "gru",
    first_order: bool = False,
) -> dict[str, Any]:
    checks = (
        ("method", method, METHODS), ("modulation", modulation, MODULATIONS),
        ("ways", ways, WAYS), ("shots", shots, SHOTS), ("preset", preset_name, tuple(PRESETS)),
        ("aggregator", aggregator, AGGREGATORS),
    )  # fmt: skip
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    settings = {**PRESETS[preset_name], **BY_WAYS[ways], "first_order": first_order}
    if iterations is not None:
        settings["iterations"] = iterations
    if meta_batch is not None:
        settings["meta_batch"] = meta_batch
    if settings["iterations"] < 1 or settings["meta_batch"] < 1:
        raise ValueError("iterations and the meta-batch must be positive")
    return {
        "domain": "omniglot",
        "preset": preset_name,
        "method": method,
        "modulation": modulation if method == "mumomaml" else None,
        "ways": ways,
        "shots": shots,
        "seed": seed,
        "data": {"meta_batch": settings["meta_batch"], "queries": 15, "split": "vinyals"},
        "train": {
            "iterations": settings["iterations"],
            "lr": settings["lr"],
            "grad_clip": settings["grad_clip"],
            "checkpoint_every": settings["checkpoint_every"],
            "validate_every": settings["validate_every"],
            "log_every": 10,
            "seed": seed,
        },
        "eval": {"adapt_steps": settings["eval_steps"]},
        "learner": learner_config(method, modulation, ways, settings, aggregator),
    }


def run_label(run: dict[str, Any]) -> str:
    if run["method"] == "maml":
        return "MAML"
    return f"MuMoMAML ({ {'film': 'FiLM'}.get(run['modulation'], run['modulation']) })"


def setting_label(run: dict[str, Any]) -> str:
    return f"{run['ways']}-way {run['shots']}-shot"
