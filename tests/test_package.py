"""The package's boundaries: the Triton kernels are a subpackage of mumo_fast, and nothing
else of the repository (tests, benchmarks, results) is importable through mumo_fast."""

import importlib
import importlib.util
from pathlib import Path

import pytest

import mumo_fast

PACKAGE = Path(mumo_fast.__file__).resolve().parent


def test_package_path_is_the_package_folder():
    assert [Path(p).resolve() for p in mumo_fast.__path__] == [PACKAGE]


def test_kernels_are_a_subpackage():
    spec = importlib.util.find_spec("mumo_fast.kernels")
    assert spec is not None and Path(spec.origin).resolve().parent == PACKAGE / "kernels"


@pytest.mark.parametrize("name", ["tests", "bench", "results", "scripts"])
def test_repository_folders_are_not_subpackages(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"mumo_fast.{name}")
