"""Run settings for regression: the paper's and a quick default.

A run's whole configuration is one JSON-serialisable dict (saved as run.json), built
here from the CLI choices; the learner part goes to ``MetaLearner.from_config``.
"""

from __future__ import annotations

from typing import Any

from ...meta.config import BASE_INITS, METHODS
from ...meta.modulation import MODULATIONS
from .tasks import DEFAULT_TASK_FAMILY, check_task_family, mode_names

ENCODERS = ("gru", "lstm")
MODULATION_HEADS = ("mlp", "linear")

# The authors' released settings (the paper's).
PAPER = {
    "iterations": 70_000,
    "tasks_per_mode": 25,
    "inner_steps": 5,
    "inner_lr": 1e-3,
    "inner_grad_clamp": 10.0,  # MuMoMAML only
    "lr": 1e-3,
    "grad_clip": 2.0,
    "first_order": False,
    "checkpoint_every": 500,
    "validate_every": 1000,
}
# The paper's settings with fewer iterations and a smaller meta-batch: a few minutes, and
# modulation already at work. Measured on one core of a lent 16-core machine: MuMoMAML-FiLM,
# 2 modes, ~0.065 s/iteration; after 2,456 iterations post-modulation test MSE 7.7 against
# MAML's 16.0 (3,000 iterations, 98 s), post-adaptation 2.0 against 3.8.
DEFAULT = {
    **PAPER,
    "iterations": 3000,
    "tasks_per_mode": 10,
    "checkpoint_every": 500,
    "validate_every": 500,
}
PRESETS = {"default": DEFAULT, "paper": PAPER}

K_SUPPORT, L_QUERY = 5, 10
TEST_TASKS_PER_MODE = 1000
EVAL_MAX_STEPS = 10


def learner_config(
    method: str,
    modulation: str,
    num_modes: int,
    preset: dict[str, Any],
    encoder: str = "gru",
    encoder_layers: int = 1,
    modulation_head: str = "mlp",
    base_init: str = "torch",
) -> dict[str, Any]:
    """MetaLearner config (mumo_fast.meta.config keys): MLP 1-100-100-100-1, ReLU, FiLM on
    the hidden layers; MuMoMAML adds a bidirectional encoder (hidden 40; default: a one-layer
    GRU, the authors' code: a two-layer LSTM) and a modulation head per modulated layer
    (default: a one-hidden-layer MLP, the authors' code: one linear layer). ``base_init``:
    the base network's initialisation (torch's own, or the authors' code's N(0, 0.01^2)
    weights and zero biases)."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if (
        isinstance(encoder_layers, bool)
        or not isinstance(encoder_layers, int)
        or encoder_layers < 1
    ):
        raise ValueError(f"encoder_layers must be an int >= 1, got {encoder_layers!r}")
    if base_init not in BASE_INITS:
        raise ValueError(f"base_init must be one of {BASE_INITS}, got {base_init!r}")
    if modulation_head not in MODULATION_HEADS:
        raise ValueError(
            f"modulation_head must be one of {MODULATION_HEADS}, got {modulation_head!r}"
        )
    return {
        "base": "mlp",
        "in_features": 1,
        "out_features": 1,
        "hidden_sizes": [100, 100, 100],
        "method": method,
        "modulation": modulation,
        "num_modes": num_modes if method == "multi-maml" else 1,
        "encoder": encoder,
        "encoder_hidden": 40,
        "encoder_layers": encoder_layers,
        "inner_steps": preset["inner_steps"],
        "eval_steps": preset["inner_steps"],
        "inner_lr": preset["inner_lr"],
        "learn_inner_lr": False,
        "inner_grad_clamp": preset["inner_grad_clamp"] if method == "mumomaml" else None,
        "first_order": preset["first_order"],
        "loss": "mse",
        "base_init": base_init,
        # None: one linear layer per modulated layer; otherwise the learner's default MLP
        **({"modulation_hidden": None} if modulation_head == "linear" else {}),
    }


def run_config(
    method: str,
    modulation: str,
    num_modes: int,
    preset_name: str = "default",
    *,
    iterations: int | None = None,
    seed: int = 0,
    tasks_per_mode: int | None = None,
    test_tasks_per_mode: int | None = None,
    task_family: str = DEFAULT_TASK_FAMILY,
    encoder: str = "gru",
    encoder_layers: int = 1,
    modulation_head: str = "mlp",
    base_init: str = "torch",
    clip_groups: str = "per-network",
) -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if modulation not in MODULATIONS:
        raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
    if preset_name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset_name!r}")
    names = mode_names(num_modes)
    task_family = check_task_family(task_family)
    preset = dict(PRESETS[preset_name])
    if iterations is not None:
        preset["iterations"] = iterations
    if tasks_per_mode is not None:
        preset["tasks_per_mode"] = tasks_per_mode
    test_tasks = TEST_TASKS_PER_MODE if test_tasks_per_mode is None else test_tasks_per_mode
    if preset["iterations"] < 1 or preset["tasks_per_mode"] < 1 or test_tasks < 1:
        raise ValueError("iterations and tasks per mode must be positive")
    return {
        "domain": "regression",
        "preset": preset_name,
        "method": method,
        "modulation": modulation if method == "mumomaml" else None,
        "num_modes": num_modes,
        "mode_names": list(names),
        "seed": seed,
        "data": {
            "tasks_per_mode": preset["tasks_per_mode"],
            "k_support": K_SUPPORT,
            "l_query": L_QUERY,
            "test_tasks_per_mode": test_tasks,
            "task_family": task_family,
        },
        "train": {
            "iterations": preset["iterations"],
            "lr": preset["lr"],
            "grad_clip": preset["grad_clip"],
            "clip_groups": clip_groups,
            "checkpoint_every": preset["checkpoint_every"],
            "validate_every": preset["validate_every"],
            "log_every": 10,
            "seed": seed,
        },
        "eval": {"adapt_steps": preset["inner_steps"], "max_steps": EVAL_MAX_STEPS},
        "learner": learner_config(
            method,
            modulation,
            num_modes,
            preset,
            encoder,
            encoder_layers,
            modulation_head,
            base_init,
        ),
    }


def run_label(run: dict[str, Any]) -> str:
    if run["method"] == "maml":
        return "MAML"
    if run["method"] == "multi-maml":
        return "Multi-MAML"
    return f"MuMoMAML ({ {'film': 'FiLM'}.get(run['modulation'], run['modulation']) })"
