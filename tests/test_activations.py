"""One activation table (mumo_fast.ops.activations) for every backend: the compiled kernels
number the activations as the table does, and the derivatives written as functions of the
output match autograd's."""

import re
from pathlib import Path

import pytest
import torch

from mumo_fast.ops import activations
from mumo_fast.ops.activations import ACTIVATION_CODES, ACTIVATIONS

ROOT = Path(__file__).resolve().parents[1]


def test_codes_number_the_list():
    assert list(ACTIVATION_CODES) == list(ACTIVATIONS)
    assert sorted(ACTIVATION_CODES.values()) == list(range(len(ACTIVATIONS)))
    for name in ACTIVATIONS:
        assert activations.activation_code(name) == ACTIVATION_CODES[name]
    with pytest.raises(ValueError, match="activation must be one of"):
        activations.activation_code("gelu")


def test_cpp_enum_and_parser_follow_the_table():
    """csrc/common.h: ``enum class Act`` gives each activation the table's code, and
    ``parse_act`` maps each name of the table (and no other) to its enumerator."""
    header = (ROOT / "csrc" / "common.h").read_text()
    enum = re.search(r"enum class Act\s*:\s*int\s*\{([^}]*)\}", header)
    assert enum, "enum class Act not found in csrc/common.h"
    values = dict(
        (name, int(code)) for name, code in re.findall(r"(\w+)\s*=\s*(\d+)", enum.group(1))
    )
    parsed = dict(re.findall(r'if \(s == "(\w+)"\) return Act::(\w+);', header))
    assert list(parsed) == list(ACTIVATIONS)
    assert {name: values[parsed[name]] for name in parsed} == ACTIVATION_CODES
    assert "|".join(ACTIVATIONS) in header  # parse_act's error message lists the names


def test_triton_constants_follow_the_table():
    common = pytest.importorskip("mumo_fast.kernels._common")
    for name, code in ACTIVATION_CODES.items():
        assert getattr(common, f"ACT_{name.upper()}").value == code


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_derivatives_from_the_output(name):
    u = torch.randn(37, dtype=torch.float64, requires_grad=True)
    y = activations.activate(u, name)
    (d1,) = torch.autograd.grad(y.sum(), u, create_graph=True)
    got = activations.activation_grad_from_output(y.detach(), name)
    torch.testing.assert_close(torch.ones_like(d1) if got is None else got, d1.detach())
    # d/du act'(u) = (d act'/dy) * act'(u): the second derivative from the output
    d2 = torch.autograd.grad(d1.sum(), u, allow_unused=True)[0] if d1.requires_grad else None
    second = activations.activation_second_grad_from_output(y.detach(), name)
    want = torch.zeros_like(u) if d2 is None else d2
    got2 = torch.zeros_like(u) if second is None else second * d1.detach()
    torch.testing.assert_close(got2, want)
