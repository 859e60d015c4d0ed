"""The multimodal few-shot regression task family (paper Table 1).

Every task is one function from one mode; x ~ U[-5, 5] and every observed y carries
Gaussian noise (sigma 0.3). Sampling runs in torch on the caller's device from a
``torch.Generator``, so a run's data stream is part of its checkpointed state.

Two variants of the family (``TASK_FAMILIES``): ``"random-frequency"`` (the default:
sinusoids ``A sin(w x + b)`` with a random frequency w in [0.5, 2]; ``"spec"``, its former
name, is still accepted) and ``"authors-code"`` (the authors' released regression code:
``A sin(x - phi)``, frequency 1, phase phi in [0, pi]; the other modes are the same). With
five support points the random frequency makes the sinusoid mode much harder to identify
and fit. docs/design.md describes the modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("sinusoid", "linear", "quadratic", "tanh", "abs")
MODE_SETS = {2: MODES[:2], 3: MODES[:3], 5: MODES}
X_RANGE = (-5.0, 5.0)
NOISE_STD = 0.3
# (low, high) of each mode's three parameters, in the order used by `true_function`.
PARAM_RANGES = {
    "sinusoid": ((0.1, 5.0), (0.5, 2.0), (0.0, 2 * math.pi)),  # A, w, b: A sin(w x + b)
    "linear": ((-3.0, 3.0), (0.0, 0.0), (-3.0, 3.0)),  # A, -, b: A x + b
    "quadratic": ((0.02, 0.15), (-3.0, 3.0), (-3.0, 3.0)),  # |A|, c, b: A (x - c)^2 + b
    "tanh": ((-3.0, 3.0), (-3.0, 3.0), (-3.0, 3.0)),  # A, c, b: A tanh(x - c) + b
    "abs": ((-3.0, 3.0), (-3.0, 3.0), (-3.0, 3.0)),  # A, c, b: A |x - c| + b
}


TASK_FAMILIES = {
    "random-frequency": PARAM_RANGES,
    # A sin(x - phi), phi in [0, pi], written as A sin(1 * x + b) with b in [-pi, 0]
    "authors-code": {**PARAM_RANGES, "sinusoid": ((0.1, 5.0), (1.0, 1.0), (-math.pi, 0.0))},
}


DEFAULT_TASK_FAMILY = "random-frequency"
# former names, accepted wherever a family is named (run.json files of older runs hold them)
TASK_FAMILY_ALIASES = {"spec": "random-frequency"}


def canonical_task_family(family: str) -> str:
    """The family's name, a former name replaced by the current one (others unchanged)."""
    return TASK_FAMILY_ALIASES.get(family, family)


def check_task_family(family: str) -> str:
    """The family's current name; a ValueError for an unknown family."""
    family = canonical_task_family(family)
    if family not in TASK_FAMILIES:
        raise ValueError(f"task_family must be one of {tuple(TASK_FAMILIES)}, got {family!r}")
    return family


def mode_names(num_modes: int) -> tuple[str, ...]:
    if num_modes not in MODE_SETS:
        raise ValueError(f"num_modes must be one of {sorted(MODE_SETS)}, got {num_modes}")
    return MODE_SETS[num_modes]


@dataclass
class RegressionTasks:
    """A batch of regression tasks: data plus the ground truth needed for plots.

    support_x/support_y [T, K, 1], query_x/query_y [T, L, 1], modes [T] (index into
    the run's mode names), params [T, 3], mode_ids [T] (index into `MODES`).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    modes: Tensor
    params: Tensor
    mode_ids: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> RegressionTasks:
        return RegressionTasks(*(getattr(self, f).to(device) for f in _FIELDS))

    def select(self, index: Tensor | slice) -> RegressionTasks:
        return RegressionTasks(*(getattr(self, f)[index] for f in _FIELDS))


_FIELDS = ("support_x", "support_y", "query_x", "query_y", "modes", "params", "mode_ids")


def true_function(mode_ids: Tensor, params: Tensor, x: Tensor) -> Tensor:
    """Noise-free y for x [T, N, 1] of tasks with `MODES` indices mode_ids [T], params [T, 3]."""
    a, p, b = (params[:, i].view(-1, 1, 1) for i in range(3))
    values = torch.stack(
        [
            a * torch.sin(p * x + b),
            a * x + b,
            a * (x - p) ** 2 + b,
            a * torch.tanh(x - p) + b,
            a * (x - p).abs() + b,
        ]
    )
    return values.gather(0, mode_ids.view(1, -1, 1, 1).expand(1, *x.shape)).squeeze(0)


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen, device=gen.device) * (high - low) + low


def sample_params(
    mode: str, count: int, gen: torch.Generator, family: str = DEFAULT_TASK_FAMILY
) -> Tensor:
    """[count, 3] parameters of `count` functions of one mode."""
    ranges = TASK_FAMILIES[check_task_family(family)][mode]
    cols = [_uniform((count,), lo, hi, gen) for lo, hi in ranges]
    if mode == "quadratic":  # A in [-0.15, -0.02] U [0.02, 0.15]
        sign = torch.randint(0, 2, (count,), generator=gen, device=gen.device) * 2 - 1
        cols[0] = cols[0] * sign
    return torch.stack(cols, dim=1)


def sample_tasks(
    num_modes: int,
    tasks_per_mode: int,
    gen: torch.Generator,
    k_support: int = 5,
    l_query: int = 10,
    noise_std: float = NOISE_STD,
    family: str = DEFAULT_TASK_FAMILY,
) -> RegressionTasks:
    """A balanced batch: `tasks_per_mode` tasks of each mode, grouped by mode, on gen's device."""
    names = mode_names(num_modes)
    device = gen.device
    params = torch.cat([sample_params(m, tasks_per_mode, gen, family) for m in names])
    modes = torch.arange(num_modes, device=device).repeat_interleave(tasks_per_mode)
    mode_ids = torch.tensor([MODES.index(m) for m in names], device=device)[modes]
    n = k_support + l_query
    x = _uniform((len(modes), n, 1), *X_RANGE, gen)
    y = true_function(mode_ids, params, x)
    y = y + noise_std * torch.randn(y.shape, generator=gen, device=device)
    return RegressionTasks(
        x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:],
        modes, params, mode_ids,
    )  # fmt: skip


TEST_SEED = 20190101


def fixed_test_set(
    num_modes: int,
    tasks_per_mode: int = 1000,
    k_support: int = 5,
    l_query: int = 10,
    family: str = DEFAULT_TASK_FAMILY,
) -> RegressionTasks:
    """The fixed test set: the same tasks for every run, method and device (drawn on CPU)."""
    gen = torch.Generator().manual_seed(TEST_SEED + num_modes)
    return sample_tasks(num_modes, tasks_per_mode, gen, k_support, l_query, family=family)
