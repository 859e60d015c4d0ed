"""Multimodal few-shot regression (paper Table 1).

Submodules: `tasks` (the function family, sampling, the fixed test set), `presets`,
`data` (TaskBatch sampler), `metrics`, `figures`, `run` (the CLI commands).
"""

from .tasks import MODES, RegressionTasks, fixed_test_set, mode_names, sample_tasks, true_function

__all__ = [
    "MODES",
    "RegressionTasks",
    "fixed_test_set",
    "mode_names",
    "sample_tasks",
    "true_function",
]
