"""A backend that is missing is never dropped silently: tests parametrised over it are
skipped with the reason, or fail where it is required (CI)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ops_cases

ROOT = Path(__file__).resolve().parents[1]


def test_required_backends_from_the_environment(monkeypatch):
    monkeypatch.delenv("MUMO_FAST_REQUIRE_BACKENDS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert ops_cases.required_backends() == set()
    for value in ("0", "false", ""):
        monkeypatch.setenv("CI", value)
        assert ops_cases.required_backends() == set()
    monkeypatch.setenv("CI", "true")
    assert ops_cases.required_backends() == {"eager", "cpp", "triton"}
    monkeypatch.setenv("MUMO_FAST_REQUIRE_BACKENDS", "cpp, triton")
    assert ops_cases.required_backends() == {"cpp", "triton"}
    monkeypatch.setenv("MUMO_FAST_REQUIRE_BACKENDS", "")
    assert ops_cases.required_backends() == set()
    monkeypatch.setenv("MUMO_FAST_REQUIRE_BACKENDS", "cpp,cuda")
    with pytest.raises(ValueError, match="cuda"):
        ops_cases.required_backends()


def test_every_backend_is_parametrised_available_or_not():
    assert ops_cases.ALL_BACKENDS == ["reference", "eager", "cpp", "triton"]
    assert ops_cases.missing_reason("reference") is None
    assert ops_cases.missing_reason("eager") is None


@pytest.mark.parametrize(
    "env, outcome",
    [
        ({}, "1 skipped"),
        ({"CI": "1"}, "1 error"),
        ({"MUMO_FAST_REQUIRE_BACKENDS": "cpp"}, "1 error"),
    ],
)
def test_missing_cpp_is_skipped_or_fails(tmp_path, env, outcome):
    """With the extension made to fail loading, a cpp-parametrised test reports a skip
    with the reason; where cpp is required, an error (the run fails)."""
    (tmp_path / "no_cpp_plugin.py").write_text(
        textwrap.dedent(
            """
            from mumo_fast.ops import backends
            from mumo_fast.ops.backends import cpp

            cpp._state.update(ok=False, error="simulated: no compiler")
            backends._loaded.pop("cpp", None)
            """
        )
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "MUMO_FAST_REQUIRE_BACKENDS")}
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no_cpp_plugin", "-p", "no:cacheprovider",
            "tests/test_linear_sgd.py::test_non_contiguous_factors[cpp]",
        ],
        cwd=ROOT,
        env={**clean, **env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert outcome in out, out
    assert (run.returncode == 0) == (outcome == "1 skipped"), out
    assert "simulated: no compiler" in out, out
