"""The layering the README states: the layers (``mumo_fast.nn``) and base networks
(``mumo_fast.models``) import nothing from the meta-learner (``mumo_fast.meta``)."""

import ast
import pathlib

import pytest

import mumo_fast

PACKAGE = pathlib.Path(mumo_fast.__file__).parent


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of the mumo_fast modules a file imports (relative imports resolved)."""
    package = ["mumo_fast", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("mumo_fast")}


@pytest.mark.parametrize("subpackage", ["nn", "models"])
def test_layers_and_models_import_nothing_from_meta(subpackage):
    files = sorted((PACKAGE / subpackage).rglob("*.py"))
    assert files
    for path in files:
        bad = {n for n in _imported_modules(path) if n.split(".")[:2] == ["mumo_fast", "meta"]}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_the_check_sees_relative_imports():
    """The meta package's own relative imports resolve to mumo_fast.meta.*."""
    names = _imported_modules(PACKAGE / "meta" / "learner.py")
    assert "mumo_fast.meta.fast_weights" in names and "mumo_fast.models" in names
