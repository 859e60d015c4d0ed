"""Generic meta-training: the loop, checkpoints, logging and evaluation statistics."""

from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    atomic_save,
    load_file,
    load_learner,
    resolve_model_path,
    seed_everything,
)
from .evaluation import mean_ci95, per_step_losses, summarize
from .logging import MetricsLogger, read_log
from .trainer import CLIP_GROUPS, Trainer, TrainResult, TrainSettings

__all__ = [
    "CHECKPOINT_NAME",
    "CLIP_GROUPS",
    "MODEL_NAME",
    "MetricsLogger",
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "atomic_save",
    "load_file",
    "load_learner",
    "mean_ci95",
    "per_step_losses",
    "read_log",
    "resolve_model_path",
    "seed_everything",
    "summarize",
]
