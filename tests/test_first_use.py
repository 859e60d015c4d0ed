"""First use: the one-line message while the C++ extension compiles (and no misleading
CUDA line), the subpackages reachable from ``import mumo_fast`` without making it heavy,
and a stale ahead-of-time extension never loaded in place of the current sources."""

import importlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from mumo_fast.ops.backends import cpp_build

ROOT = Path(__file__).resolve().parents[1]


def _python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


# ------------------------------------------------------------------ compiling message


def test_first_build_says_once_what_is_happening(tmp_path, monkeypatch, capsys):
    built = []

    def load(name, build_directory, **kwargs):  # stands in for cpp_extension.load
        built.append(build_directory)
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setenv("MUMO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_build, "_cpp_extension", lambda: types.SimpleNamespace(load=load))
    origin = cpp_build._jit_load()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and len(built) == 1, lines
    assert "compiling the C++ extension" in lines[0] and "once" in lines[0]
    assert built[0] in lines[0] and built[0] in origin and built[0].startswith(str(tmp_path))
    assert "pip install --no-build-isolation -e ." in lines[0]
    cpp_build._jit_load()  # cached: ninja has nothing to do, nothing to say
    assert capsys.readouterr().err == "" and len(built) == 2


def test_each_torch_installation_has_its_own_build_folder(tmp_path, monkeypatch):
    """(A folder shared by two environments with the same torch version would be rebuilt,
    without the message, whenever the other environment had used it.)"""
    import torch

    src = cpp_build.source_dir()
    here = cpp_build._cache_dir(src)
    assert cpp_build._cache_dir(src) == here
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "torch" / "__init__.py"))
    assert cpp_build._cache_dir(src) != here


def test_no_cuda_runtime_line_is_filtered(caplog):
    import mumo_fast.ops  # noqa: F401  (installs the filter)

    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_importing_cpp_extension_prints_no_cuda_line(tmp_path):
    """With a CUDA_HOME (a CUDA build of torch on a machine without a GPU logs the line
    as torch.utils.cpp_extension is imported)."""
    code = "from mumo_fast.ops.backends import cpp_build; cpp_build._cpp_extension()"
    res = _python(code, CUDA_HOME=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "No CUDA runtime" not in res.stderr and "CUDA_HOME" not in res.stderr


# ------------------------------------------------------------ subpackages as attributes


def test_subpackages_are_attributes_imported_on_first_use():
    code = """
import sys
import mumo_fast
assert "torch" not in sys.modules, "import mumo_fast imported torch"
assert not [m for m in sys.modules if m.startswith("mumo_fast.")], "imported a subpackage"
assert {"ops", "nn", "meta", "models", "train", "domains"} <= set(dir(mumo_fast))
import torch
y = mumo_fast.ops.film_linear(torch.ones(2, 3, 4), torch.ones(5, 4), activation="relu")
assert y.shape == (2, 3, 5) and sys.modules["mumo_fast.ops"] is mumo_fast.ops
for name in ("nn", "meta", "models", "train", "domains"):
    assert getattr(mumo_fast, name) is sys.modules["mumo_fast." + name]
try:
    mumo_fast.no_such_thing
except AttributeError as e:
    assert "no_such_thing" in str(e)
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    res = _python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


# --------------------------------------------------------- stale ahead-of-time extension


def _fake_prebuilt(tmp_path, monkeypatch, content):
    """mumo_fast._C found at a fake library holding ``content``; records imports and JIT
    builds instead of doing them."""
    lib = tmp_path / "_C.fake.so"
    lib.write_bytes(b"\x7fELF...." + content + b"\0...")
    calls = []
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "mumo_fast._C":
            return types.SimpleNamespace(origin=str(lib))
        return real_find_spec(name, *args)

    def import_module(name, *args):
        calls.append(("import", name))

    monkeypatch.delenv("MUMO_FAST_CSRC", raising=False)
    monkeypatch.delenv("MUMO_FAST_NO_CPP", raising=False)
    monkeypatch.setattr(cpp_build.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(cpp_build.importlib, "import_module", import_module)
    monkeypatch.setattr(cpp_build, "_jit_load", lambda: calls.append(("jit",)) or "jit")
    return calls


def test_prebuilt_extension_of_the_current_sources_is_loaded(tmp_path, monkeypatch, capsys):
    digest = cpp_build.sources_digest(cpp_build.source_dir())
    calls = _fake_prebuilt(tmp_path, monkeypatch, cpp_build.MARKER + digest.encode())
    assert cpp_build.load_extension() == "mumo_fast._C (built ahead of time)"
    assert calls == [("import", "mumo_fast._C")]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("recorded", ("other", "none"))
def test_stale_prebuilt_extension_is_rebuilt_not_loaded(tmp_path, monkeypatch, capsys, recorded):
    content = cpp_build.MARKER + b"0" * 64 if recorded == "other" else b"no marker"
    calls = _fake_prebuilt(tmp_path, monkeypatch, content)
    assert cpp_build.load_extension() == "jit"
    assert calls == [("jit",)]  # never imported
    err = capsys.readouterr().err
    assert "not loading the ahead-of-time mumo_fast._C" in err and str(tmp_path) in err
    assert "pip install --no-build-isolation -e ." in err
    assert ("other sources" if recorded == "other" else "records no digest") in err


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_setup_py_records_the_sources_digest_in_the_extension(tmp_path):
    """setup.py (copied with a one-file csrc/) builds an extension whose recorded digest is
    that of its sources, and stops matching once a source changes."""
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "tiny.cpp").write_text(
        "#include <Python.h>\n"
        "PyMODINIT_FUNC PyInit__C(void) {\n"
        '  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};\n'
        "  return PyModule_Create(&def);\n}\n"
    )
    backends = tmp_path / "mumo_fast" / "ops" / "backends"
    backends.mkdir(parents=True)
    shutil.copy(ROOT / "setup.py", tmp_path)
    shutil.copy(Path(cpp_build.__file__), backends)
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lib = tmp_path / "mumo_fast" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert cpp_build.built_digest(lib) == cpp_build.sources_digest(tmp_path / "csrc")
    with open(tmp_path / "csrc" / "tiny.cpp", "a") as f:
        f.write("// edited\n")
    assert cpp_build.built_digest(lib) != cpp_build.sources_digest(tmp_path / "csrc")
