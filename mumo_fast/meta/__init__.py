"""The meta-learning core: batched inner loop, fast weights (dense and low-rank),
MAML / Multi-MAML / MuMoMAML, task encoders and modulation heads."""

from .batch import TaskBatch
from .config import resolve_config
from .encoders import ImageEncoder, SequenceEncoder
from .fast_weights import (
    BatchNormAffine,
    DenseConv,
    DenseLinear,
    FastWeights,
    LowRankLinear,
    forward,
    init_fast_weights,
    lowrank_layers,
)
from .inner_loop import adapt, inner_step
from .learner import MetaLearner
from .modulation import ModulationHeads

__all__ = [
    "MetaLearner",
    "TaskBatch",
    "resolve_config",
    "SequenceEncoder",
    "ImageEncoder",
    "ModulationHeads",
    "FastWeights",
    "DenseLinear",
    "LowRankLinear",
    "DenseConv",
    "BatchNormAffine",
    "init_fast_weights",
    "lowrank_layers",
    "forward",
    "inner_step",
    "adapt",
]
