"""The regression task family: ranges, noise, balance, determinism of the fixed test set."""

import math

import pytest
import torch

from mumo_fast.domains.regression.tasks import (
    MODES,
    PARAM_RANGES,
    fixed_test_set,
    mode_names,
    sample_tasks,
    true_function,
)


@pytest.mark.parametrize("num_modes", [2, 3, 5])
def test_balanced_shapes_and_labels(num_modes):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    tasks = sample_tasks(num_modes, 7, gen)
    t = 7 * num_modes
    assert tasks.support_x.shape == (t, 5, 1) and tasks.support_y.shape == (t, 5, 1)
    assert tasks.query_x.shape == (t, 10, 1) and tasks.query_y.shape == (t, 10, 1)
    assert tasks.modes.dtype == torch.long
    assert torch.bincount(tasks.modes, minlength=num_modes).tolist() == [7] * num_modes
    names = mode_names(num_modes)
    assert [MODES[i] for i in tasks.mode_ids.tolist()] == [names[m] for m in tasks.modes.tolist()]


def test_mode_sets():
    assert mode_names(2) == ("sinusoid", "linear")
    assert mode_names(3) == ("sinusoid", "linear", "quadratic")
    assert mode_names(5) == ("sinusoid", "linear", "quadratic", "tanh", "abs")
    with pytest.raises(ValueError, match="num_modes"):
        mode_names(4)


def test_parameter_and_input_ranges():
    gen = torch.Generator().manual_seed(1)
    tasks = sample_tasks(5, 2000, gen)
    xs = torch.cat([tasks.support_x, tasks.query_x], 1)
    assert xs.min() >= -5 and xs.max() <= 5 and xs.min() < -4.9 and xs.max() > 4.9
    for m, name in enumerate(mode_names(5)):
        p = tasks.params[tasks.modes == m]
        for col, (lo, hi) in enumerate(PARAM_RANGES[name]):
            v = p[:, col].abs() if name == "quadratic" and col == 0 else p[:, col]
            if lo == hi:  # unused parameter
                continue
            assert v.min() >= lo and v.max() <= hi, (name, col)
            assert v.min() < lo + 0.05 * (hi - lo) and v.max() > hi - 0.05 * (hi - lo), (name, col)
    a = tasks.params[tasks.modes == 2, 0]
    assert (a > 0).any() and (a < 0).any()  # quadratic: both signs


def test_authors_code_family_has_unit_frequency_sinusoids():
    gen = torch.Generator().manual_seed(2)
    tasks = sample_tasks(3, 500, gen, family="authors-code")
    sin = tasks.params[tasks.modes == 0]
    assert torch.all(sin[:, 1] == 1.0)  # frequency
    assert sin[:, 2].min() >= -math.pi and sin[:, 2].max() <= 0  # A sin(x - phi), phi in [0, pi]
    assert sin[:, 2].min() < -3.0 and sin[:, 2].max() > -0.15
    spec = sample_tasks(3, 500, torch.Generator().manual_seed(2))
    assert spec.params[spec.modes == 0, 1].std() > 0.3  # random frequency in [0.5, 2]
    # the other modes are drawn the same way from the same stream
    torch.testing.assert_close(tasks.params[tasks.modes == 1], spec.params[spec.modes == 1])
    with pytest.raises(ValueError, match="task_family must be one of"):
        sample_tasks(2, 3, gen, family="nope")


def test_true_function_formulas():
    gen = torch.Generator().manual_seed(2)
    tasks = sample_tasks(5, 3, gen)
    x = torch.rand(15, 4, 1) * 10 - 5
    y = true_function(tasks.mode_ids, tasks.params, x)
    formulas = [
        lambda a, p, b, x: a * math.sin(p * x + b),
        lambda a, p, b, x: a * x + b,
        lambda a, p, b, x: a * (x - p) ** 2 + b,
        lambda a, p, b, x: a * math.tanh(x - p) + b,
        lambda a, p, b, x: a * abs(x - p) + b,
    ]
    for t in range(15):
        a, p, b = tasks.params[t].tolist()
        f = formulas[int(tasks.mode_ids[t])]
        for n in range(4):
            assert y[t, n, 0].item() == pytest.approx(f(a, p, b, x[t, n, 0].item()), abs=1e-4)


def test_observation_noise_std():
    gen = torch.Generator().manual_seed(3)
    tasks = sample_tasks(3, 2000, gen)
    clean = true_function(tasks.mode_ids, tasks.params, tasks.query_x)
    resid = tasks.query_y - clean
    assert resid.mean().abs() < 0.01
    assert resid.std().item() == pytest.approx(0.3, abs=0.005)


def test_fixed_test_set_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(int(torch.randint(0, 1000, ()).item()))
    a = fixed_test_set(2, tasks_per_mode=50)
    torch.rand(100)
    b = fixed_test_set(2, tasks_per_mode=50)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert len(fixed_test_set(3)) == 3000
    c = sample_tasks(2, 50, torch.Generator().manual_seed(12345))
    assert not torch.equal(a.support_x, c.support_x)


def test_generator_stream_reproducible():
    seed = int(torch.randint(0, 2**31, ()).item())
    a = sample_tasks(2, 4, torch.Generator().manual_seed(seed))
    b = sample_tasks(2, 4, torch.Generator().manual_seed(seed))
    assert torch.equal(a.query_y, b.query_y) and torch.equal(a.params, b.params)


def test_spec_is_the_former_name_of_the_random_frequency_family():
    from mumo_fast.domains.regression.tasks import DEFAULT_TASK_FAMILY, check_task_family

    assert DEFAULT_TASK_FAMILY == "random-frequency"
    assert check_task_family("spec") == check_task_family("random-frequency") == "random-frequency"
    seed = int(torch.randint(0, 2**31, ()).item())
    old = sample_tasks(2, 9, torch.Generator().manual_seed(seed), family="spec")
    new = sample_tasks(2, 9, torch.Generator().manual_seed(seed), family="random-frequency")
    default = sample_tasks(2, 9, torch.Generator().manual_seed(seed))
    for field in ("support_x", "support_y", "query_x", "query_y", "params"):
        torch.testing.assert_close(getattr(old, field), getattr(new, field))
        torch.testing.assert_close(getattr(default, field), getattr(new, field))
